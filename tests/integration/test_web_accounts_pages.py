"""The console's account pages over HTTP (the forms as a browser sends them): a domain's DNS
table, users, aliases and DKIM keys, and what a domain manager may see and do there."""

from __future__ import annotations

import re

from postroom.store import aliases, dkim, users
from tests.support.dns import DNSServer
from tests.support.web import HOSTNAME, Response, WebClient, WebServer

STRONG = "a long enough passphrase 7"


def _console(web: WebServer, address: str) -> WebClient:
    client = web.client()
    assert client.login(address).status == 303
    return client


def _post(client: WebClient, page: str, action: str, fields: dict[str, str]) -> Response:
    return client.post_form(action, {"csrf_token": client.form_csrf(page), **fields})


def test_the_domain_page_shows_each_records_status_and_what_to_publish(
        web: WebServer, dns_server: DNSServer) -> None:
    dns_server.set_records(web.managed, "MX", [(10, HOSTNAME)])
    dns_server.set_records(web.managed, "TXT", ["v=spf1 a -all", "v=spf1 mx -all"])
    html = _console(web, web.manager).get(f"/domains/{web.managed}").text
    rows = dict(re.findall(r'<strong>([A-Z-]+)</strong>.*?badge badge-(\w+)', html, re.S))
    assert rows["MX"] == "published" and rows["SPF"] == "wrong"
    assert rows["DMARC"] == "missing"
    assert f"_dmarc.{web.managed}. IN TXT" in html
    assert "found: v=spf1 a -all, v=spf1 mx -all" in html
    assert "Check now" in html
    assert "Managers" not in html  # admins only


def test_a_manager_gets_403_on_another_domains_pages(web: WebServer) -> None:
    boss = _console(web, web.manager)
    for path in (f"/domains/{web.other}", f"/users?domain={web.other}",
                 f"/aliases?domain={web.other}", f"/dkim?domain={web.other}",
                 f"/users/{web.admin}", "/domains/nowhere.test"):
        assert boss.get(path).status == 403, path
    listing = boss.get("/users").text
    assert web.plain in listing and web.admin not in listing
    token = boss.form_csrf("/users")
    reply = boss.post_form("/users", {"csrf_token": token, "domain": web.other,
                                      "localpart": "sneaky", "password": STRONG})
    assert reply.status == 403
    assert web.db.run_sync(users.get_user, f"sneaky@{web.other}") is None


def test_a_plain_account_has_no_access_to_the_pages(web: WebServer) -> None:
    plain = _console(web, web.plain)
    for path in ("/users", "/aliases", "/dkim", f"/domains/{web.managed}"):
        reply = plain.get(path)
        assert reply.status == 403 and "console access" in reply.text.lower(), path


def test_users_are_added_searched_and_changed_with_the_forms(web: WebServer) -> None:
    boss = _console(web, web.manager)
    weak = _post(boss, "/users", "/users", {"domain": web.managed, "localpart": "gina",
                                             "password": "short", "quota": ""})
    assert weak.status == 422 and "too short" in weak.text
    added = _post(boss, "/users", "/users", {"domain": web.managed, "localpart": "gina",
                                              "password": STRONG, "quota": "2G"})
    address = f"gina@{web.managed}"
    assert added.status == 303
    assert added.header("location") == f"/users/{address}"
    found = boss.get(f"/users?domain={web.managed}&search=gin").text
    assert address in found and "2.0 GiB" in found
    page = f"/users/{address}"
    assert _post(boss, page, page, {"action": "quota", "quota": "500M"}).status == 303
    assert web.db.run_sync(users.get_user, address).quota_bytes == 500 << 20
    assert _post(boss, page, page, {"action": "disable"}).status == 303
    assert not web.db.run_sync(users.get_user, address).active
    refused = _post(boss, page, page, {"action": "admin"})
    assert refused.status == 403
    assert "Make a global admin" not in boss.get(page).text
    assert _post(boss, page, page, {"action": "remove"}).status == 303
    assert web.db.run_sync(users.get_user, address) is None


def test_an_admins_account_page_offers_no_changes_to_a_manager(web: WebServer) -> None:
    web.db.run_sync(users.add_user, f"boss2@{web.managed}", STRONG, is_admin=True)
    boss = _console(web, web.manager)
    html = boss.get(f"/users/boss2@{web.managed}").text
    assert "Only an administrator may change this account" in html
    assert 'name="action"' not in html


def test_aliases_are_added_with_loops_explained_and_removed(web: WebServer) -> None:
    boss = _console(web, web.manager)
    ok = _post(boss, "/aliases", "/aliases", {"domain": web.managed, "source": "team",
                                               "destination": web.plain})
    assert ok.status == 303
    _post(boss, "/aliases", "/aliases", {"domain": web.managed, "source": "crew",
                                         "destination": f"team@{web.managed}"})
    loop = _post(boss, "/aliases", "/aliases", {"domain": web.managed, "source": "team",
                                                 "destination": f"crew@{web.managed}"})
    assert loop.status == 422 and "would make a loop" in loop.text
    listing = boss.get(f"/aliases?domain={web.managed}&search=team").text
    assert f"team@{web.managed}" in listing
    gone = _post(boss, "/aliases", "/aliases/remove", {"source": f"crew@{web.managed}",
                                                       "destination": f"team@{web.managed}"})
    assert gone.status == 303
    left = {a.source for a in web.db.run_sync(aliases.list_aliases, web.managed)}
    assert f"crew@{web.managed}" not in left and f"team@{web.managed}" in left


def test_dkim_keys_are_generated_activated_and_retired_with_the_buttons(
        web: WebServer, dns_server: DNSServer) -> None:
    boss = _console(web, web.manager)
    page = f"/dkim?domain={web.managed}"
    made = _post(boss, page, f"/dkim/{web.managed}/generate",
                 {"algorithm": "ed25519", "selector": "web1"})
    assert made.status == 303
    html = boss.get(page).text
    assert f"web1._domainkey.{web.managed}. IN TXT" in html and "badge-pending" in html
    assert "PRIVATE KEY" not in html
    refused = _post(boss, page, f"/dkim/{web.managed}/web1/activate", {})
    assert refused.status == 422 and "Publish the record first" in refused.text
    [key] = [k for k in web.db.run_sync(dkim.list_keys, web.managed) if k.selector == "web1"]
    dns_server.set_records(f"web1._domainkey.{web.managed}", "TXT",
                           [f"v=DKIM1; k=ed25519; p={key.public_key_b64}"])
    assert _post(boss, page, f"/dkim/{web.managed}/web1/activate", {}).status == 303
    assert _post(boss, page, f"/dkim/{web.managed}/web1/retire", {}).status == 303
    states = {k.selector: k.state for k in web.db.run_sync(dkim.list_keys, web.managed)}
    assert states["web1"] == "retired"
