"""A plain account's own pages in the real web service: its landing page, password change,
app passwords (shown once, listed, revoked), two-factor login with its second login step,
and the mail clients' autoconfig, autodiscover and Apple profile routes."""

from __future__ import annotations

import html
import plistlib
import re
import secrets
import time
import xml.etree.ElementTree as ET

from postroom.auth import totp as totp_codes
from postroom.auth.passwords import hash_password
from postroom.ops import autoconfig
from postroom.sieve import check_script
from postroom.sieve.simple import SCRIPT_NAME, parse
from postroom.store import apppasswords, sieve, totp, users
from tests.support.web import PASSWORD, WebClient, WebServer

SECRET = re.compile(r'id="app-password-secret">([a-z-]+)<')
TOTP_SECRET = re.compile(r'data-secret="([A-Z2-7]+)"')


def new_user(web: WebServer) -> str:
    address = f"self-{secrets.token_hex(3)}@{web.managed}"
    web.db.run_sync(users.add_user, address, PASSWORD, hash_fn=lambda p: hash_password(p, ln=4))
    return address


def logged_in(web: WebServer, address: str, password: str = PASSWORD) -> WebClient:
    client = web.client()
    assert client.login(address, password).status == 303
    return client


def post(client: WebClient, path: str, fields: dict[str, str], page: str | None = None):
    token = client.form_csrf(page or path)
    return client.post_form(path, {"csrf_token": token, **fields})


def test_a_plain_account_lands_on_its_account_page(web: WebServer) -> None:
    client = logged_in(web, web.plain)
    reply = client.get("/")
    assert reply.status == 303 and reply.header("location") == "/account"
    page = client.get("/account")
    assert page.status == 200 and web.plain in page.text and "App passwords" in page.text


def test_the_password_changes_only_with_the_old_one_and_other_sessions_end(
        web: WebServer) -> None:
    address = new_user(web)
    elsewhere = logged_in(web, address)
    client = logged_in(web, address)
    new = "a fresh passphrase 4 me"
    wrong = post(client, "/account/password", {"old_password": "not it", "new_password": new,
                                              "new_password_again": new})
    assert wrong.status == 422 and "not right" in wrong.text
    weak = post(client, "/account/password", {"old_password": PASSWORD,
                                             "new_password": "password",
                                             "new_password_again": "password"})
    assert weak.status == 422
    done = post(client, "/account/password", {"old_password": PASSWORD, "new_password": new,
                                             "new_password_again": new})
    assert done.status == 303
    assert client.get("/account").status == 200              # this browser got a new session
    assert elsewhere.get("/account").status == 303           # the other one is out
    assert web.client().login(address, PASSWORD).status == 401
    assert web.client().login(address, new).status == 303


def test_an_app_password_is_shown_once_listed_and_revoked(web: WebServer) -> None:
    address = new_user(web)
    client = logged_in(web, address)
    made = post(client, "/account/app-passwords", {"name": "phone", "protocol_imap": "on"})
    assert made.status == 200
    secret = SECRET.search(made.text).group(1)  # type: ignore[union-attr]
    [info] = web.db.run_sync(apppasswords.list_app_passwords, address)
    assert info.name == "phone" and info.protocols == ("imap",)
    assert web.db.run_sync(lambda s: apppasswords.authenticate(
        s, address, secret, protocol="imap", peer="127.0.0.1")).user is not None
    listing = client.get("/account/app-passwords").text
    assert "phone" in listing and secret not in listing and "127.0.0.1" in listing  # last use
    revoked = post(client, "/account/app-passwords/revoke", {"name": "phone"},
                   page="/account/app-passwords")
    assert revoked.status == 303
    assert web.db.run_sync(lambda s: apppasswords.authenticate(
        s, address, secret, protocol="imap", peer="127.0.0.1")).user is None


def test_two_factor_login_needs_the_code_and_the_half_login_can_do_nothing(
        web: WebServer) -> None:
    address = new_user(web)
    client = logged_in(web, address)
    begun = post(client, "/account/two-factor/begin", {}, page="/account/two-factor")
    assert begun.status == 200 and "<svg" in begun.text
    secret = TOTP_SECRET.search(begun.text).group(1)  # type: ignore[union-attr]
    now = totp_codes.code_at_step(secret, totp_codes.step_at(time.time()))
    enabled = post(client, "/account/two-factor/enable", {"code": now},
                   page="/account/two-factor")
    assert enabled.status == 200 and 'id="recovery-codes"' in enabled.text
    codes = re.findall(r"<li>([a-z0-9-]+)</li>", enabled.text)
    assert len(codes) == 10
    assert web.db.run_sync(totp.totp_status, address).enabled

    second = web.client()
    first_step = second.login(address)
    assert first_step.status == 303
    assert (first_step.header("location") or "").startswith("/login/code")
    assert "postroom_session" not in second.cookies
    assert second.get("/account").status == 303              # not logged in: to /login
    form = second.get("/login/code")
    assert form.status == 200 and html.escape(address) in form.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    wrong = second.post_form("/login/code", {"csrf_token": token, "code": "000000"})
    assert wrong.status == 401 and "Wrong code" in wrong.text
    right = second.post_form("/login/code", {"csrf_token": token, "code": codes[0]})
    assert right.status == 303 and "postroom_session" in second.cookies
    assert second.get("/account").status == 200

    off = post(second, "/account/two-factor/disable",
               {"password": PASSWORD, "code": codes[1]}, page="/account/two-factor")
    assert off.status == 303
    assert not web.db.run_sync(totp.totp_status, address).enabled


def test_thunderbird_autoconfig_is_served_at_both_paths(web: WebServer) -> None:
    client = web.client()
    for path in ("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=a%40b.org",
                 "/mail/config-v1.1.xml?emailaddress=a%40b.org"):
        reply = client.get(path)
        assert reply.status == 200
        assert (reply.header("content-type") or "").startswith("application/xml")
        root = ET.fromstring(reply.body)
        ports = {(n.get("type"), n.findtext("port"), n.findtext("socketType"))
                 for n in root.iter() if n.tag in ("incomingServer", "outgoingServer")}
        assert ("imap", "993", "SSL") in ports and ("smtp", "587", "STARTTLS") in ports
        assert root.find("emailProvider").get("id") == "b.org"  # type: ignore[union-attr]


def test_outlook_autodiscover_is_answered_without_a_login(web: WebServer) -> None:
    body = (b'<?xml version="1.0"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/'
            b'autodiscover/outlook/requestschema/2006"><Request><EMailAddress>ann@b.org'
            b'</EMailAddress></Request></Autodiscover>')
    reply = web.client().request("POST", "/autodiscover/autodiscover.xml", body=body,
                                 headers={"Content-Type": "text/xml"})
    assert reply.status == 200
    root = ET.fromstring(reply.body)
    ns = {"r": autoconfig.RESPONSE_SCHEMA}
    ports = {p.findtext("r:Type", namespaces=ns): p.findtext("r:Port", namespaces=ns)
             for p in root.iter(f"{{{autoconfig.RESPONSE_SCHEMA}}}Protocol")}
    assert ports == {"IMAP": "993", "SMTP": "465"}
    bad = web.client().request("POST", "/autodiscover/autodiscover.xml", body=b"<x",
                               headers={"Content-Type": "text/xml"})
    assert bad.status == 400


def test_the_apple_profile_is_for_the_logged_in_user_only(web: WebServer) -> None:
    assert web.client().get("/account/mail.mobileconfig").status == 303
    reply = logged_in(web, web.plain).get("/account/mail.mobileconfig")
    assert reply.status == 200
    assert reply.header("content-type") == autoconfig.MOBILECONFIG_TYPE
    [mail] = plistlib.loads(reply.body)["PayloadContent"]
    assert mail["EmailAddress"] == web.plain and mail["IncomingMailServerPortNumber"] == 993


def test_the_account_pages_have_no_inline_script_or_style(web: WebServer) -> None:
    client = logged_in(web, new_user(web))
    pages = [client.get(p).text for p in ("/account", "/account/password",
                                          "/account/app-passwords", "/account/two-factor",
                                          "/account/vacation", "/account/filters",
                                          "/account/sieve")]
    pages.append(post(client, "/account/two-factor/begin", {}, page="/account/two-factor").text)
    for text in pages:
        lower = text.lower()
        assert "<style" not in lower and " style=" not in lower and " onclick" not in lower
        assert "<script>" not in lower


def _scripts(web: WebServer, address: str) -> tuple[str | None, str | None]:
    uid = web.db.run_sync(users.get_user, address).id
    active = web.db.run_sync(sieve.active_script, uid)
    return (active[0], active[1]) if active else (None, None)


def test_the_vacation_and_filter_pages_write_one_active_script_that_reads_back(
        web: WebServer) -> None:
    address = new_user(web)
    client = logged_in(web, address)
    saved = post(client, "/account/vacation", {
        "enabled": "on", "start": "2026-12-20", "end": "2027-01-03", "subject": "Away",
        "text": "Back in January.", "days": "5", "addresses": "other@b.org"})
    assert saved.status == 303, saved.text
    name, text = _scripts(web, address)
    assert name == SCRIPT_NAME and text is not None and ":days 5" in text
    assert check_script(text, max_bytes=65536) == []
    page = client.get("/account/vacation").text
    assert "Back in January." in page and 'value="2027-01-03"' in page and "checked" in page
    rules = post(client, "/account/filters", {
        "rule_0_field": "subject", "rule_0_contains": "[list]", "rule_0_action": "fileinto",
        "rule_0_target": "Lists", "rule_1_field": "from", "rule_1_contains": "boss@",
        "rule_1_action": "redirect", "rule_1_target": "me@home.example"})
    assert rules.status == 303, rules.text
    _, text = _scripts(web, address)
    assert parse(text or "") is not None
    assert 'fileinto "Lists";' in (text or "") and ":days 5" in (text or "")  # vacation kept
    page = client.get("/account/filters").text
    assert 'value="[list]"' in page and 'value="me@home.example"' in page
    bad = post(client, "/account/filters", {
        "rule_0_field": "from", "rule_0_contains": "x", "rule_0_action": "redirect",
        "rule_0_target": "not an address"}, page="/account/filters")
    assert bad.status == 422 and "not an e-mail address" in html.unescape(bad.text)


def test_a_hand_edited_script_is_left_alone_by_the_simple_editors(web: WebServer) -> None:
    address = new_user(web)
    client = logged_in(web, address)
    raw = 'require "fileinto";\nif header :contains "subject" "x" { fileinto "X"; }\n'
    saved = post(client, "/account/sieve", {"name": "mine", "text": raw})
    assert saved.status == 303
    assert _scripts(web, address) == ("mine", raw)
    page = client.get("/account/vacation").text
    assert "written or changed by hand" in page and "/account/sieve" in page
    refused = post(client, "/account/vacation", {"enabled": "on", "text": "away", "days": "7"})
    assert refused.status == 422 and _scripts(web, address)[0] == "mine"
    replaced = post(client, "/account/vacation", {"enabled": "on", "text": "away", "days": "7",
                                                 "replace_foreign": "on"})
    assert replaced.status == 303 and _scripts(web, address)[0] == SCRIPT_NAME


def test_the_sieve_editor_shows_the_line_and_message_of_a_mistake(web: WebServer) -> None:
    client = logged_in(web, new_user(web))
    reply = post(client, "/account/sieve", {"name": "mine",
                                            "text": 'require "fileinto";\n\nfileinto 42;\n'})
    assert reply.status == 422
    assert re.search(r"<li>line 3: [^<]+</li>", reply.text), reply.text[-1500:]


def test_the_account_api_makes_lists_and_revokes_app_passwords_for_a_session_only(
        web: WebServer) -> None:
    address = new_user(web)
    client = logged_in(web, address)
    assert client.api("GET", "/account").json() == {
        "address": address, "two_factor": False, "recovery_codes_left": 0}
    made = client.api("POST", "/account/app-passwords", {"name": "cli", "protocols": ["pop3"]})
    assert made.status == 201 and made.json()["protocols"] == ["pop3"]
    secret = made.json()["secret"]
    assert web.db.run_sync(lambda s: apppasswords.authenticate(
        s, address, secret, protocol="pop3", peer="127.0.0.1")).user is not None
    listed = client.api("GET", "/account/app-passwords").json()["items"]
    assert [i["name"] for i in listed] == ["cli"] and "secret" not in listed[0]
    assert client.api("DELETE", "/account/app-passwords/cli").status == 204
    assert client.api("DELETE", "/account/app-passwords/cli").status == 404
    assert client.api("GET", "/account/app-passwords").json()["items"] == []
    checked = client.api("POST", "/account/sieve/check", {"script": "fileinto 1;\n"}).json()
    assert not checked["ok"] and checked["problems"][0]["line"] == 1
    assert web.client(bearer=web.admin_token).api("GET", "/account").status == 403


def test_five_wrong_codes_end_the_pending_login(web: WebServer) -> None:
    address = new_user(web)
    secret, _ = web.db.run_sync(totp.begin_totp, address)
    web.db.run_sync(totp.enable_totp, address,
                    totp_codes.code_at_step(secret, totp_codes.step_at(time.time())))
    client = web.client()
    assert client.login(address).status == 303
    token = client.form_csrf("/login/code")
    for _ in range(4):
        reply = client.post_form("/login/code", {"csrf_token": token, "code": "000000"})
        assert reply.status == 401
    last = client.post_form("/login/code", {"csrf_token": token, "code": "000000"})
    assert last.status == 303 and last.header("location") == "/login"
    assert "postroom_pending_login" not in client.cookies
    right = totp_codes.code_at_step(secret, totp_codes.step_at(time.time()) + 1)
    again = client.post_form("/login/code", {"csrf_token": token, "code": right})
    assert again.status == 303 and again.header("location") == "/login"
    assert "postroom_session" not in client.cookies


def test_the_account_api_sets_and_reads_the_vacation_and_rules_as_the_pages_do(
        web: WebServer) -> None:
    address = new_user(web)
    client = logged_in(web, address)
    wanted = {"vacation": {"enabled": True, "start": "2026-12-20", "end": None,
                           "subject": "Away", "text": "Back soon.", "days": 3,
                           "addresses": []},
              "rules": [{"field": "subject", "contains": "[x]", "action": "addflag",
                         "target": "", "stop": True}]}
    put = client.api("PUT", "/account/mail-handling", wanted)
    assert put.status == 200, put.text
    got = client.api("GET", "/account/mail-handling").json()
    assert got["vacation"] == wanted["vacation"] and got["rules"] == wanted["rules"]
    assert not got["foreign"]
    assert "Back soon." in client.get("/account/vacation").text  # the page reads it back
    post(client, "/account/sieve", {"name": "mine", "text": "keep;\n"})
    assert client.api("GET", "/account/mail-handling").json()["foreign"]
    assert client.api("PUT", "/account/mail-handling", wanted).status == 409
    replaced = client.api("PUT", "/account/mail-handling", {**wanted, "replace_foreign": True})
    assert replaced.status == 200 and _scripts(web, address)[0] == SCRIPT_NAME
    empty = {"vacation": {**wanted["vacation"], "text": ""}, "rules": []}
    assert client.api("PUT", "/account/mail-handling", empty).status == 422
