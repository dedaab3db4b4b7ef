"""The accounts part of the REST API against the real service: users, managers, aliases,
DKIM keys and DNS records, and who may call each (admins, domain tokens, domain managers'
cookie sessions, plain accounts, no one)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import text

from postroom.store import dkim, users, webaccess
from tests.support.dns import DNSServer
from tests.support.web import HOSTNAME, PASSWORD, WebClient, WebServer

STRONG = "a long enough passphrase 7"

# every endpoint of this area, on the domain {d} (and a user {u} of it)
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/domains/{d}/users", None),
    ("POST", "/domains/{d}/users", {"localpart": "x", "password": STRONG}),
    ("GET", "/users/{u}", None),
    ("PATCH", "/users/{u}", {"active": True}),
    ("DELETE", "/users/{u}", None),
    ("GET", "/domains/{d}/aliases", None),
    ("POST", "/domains/{d}/aliases", {"source": "x", "destination": "y@example.net"}),
    ("DELETE", "/domains/{d}/aliases/x", None),
    ("GET", "/domains/{d}/dkim", None),
    ("POST", "/domains/{d}/dkim", {"algorithm": "ed25519"}),
    ("POST", "/domains/{d}/dkim/rotate", {}),
    ("POST", "/domains/{d}/dkim/s1/retire", None),
    ("POST", "/domains/{d}/dkim/s1/activate?force=true", None),
    ("GET", "/domains/{d}/dns", None),
    ("GET", "/domains/{d}/dns/check", None),
    ("GET", "/domains/{d}/managers", None),
    ("POST", "/domains/{d}/managers", {"address": "x@example.net"}),
    ("DELETE", "/domains/{d}/managers/x@example.net", None),
]


def _call(client: WebClient, method: str, path: str, payload: Any, domain: str,
          user: str) -> Any:
    return client.api(method, path.format(d=domain, u=user), payload)


def _manager(web: WebServer) -> WebClient:
    boss = web.client()
    assert boss.login(web.manager).status == 303
    return boss


@pytest.mark.parametrize(("method", "path", "payload"), ENDPOINTS)
def test_no_one_reaches_another_domain(web: WebServer, method: str, path: str,
                                       payload: Any) -> None:
    """A domain token and a manager's session get 403 on a domain they do not manage, the
    same for one that does not exist (no one learns of others' domains); a plain account
    403, no credentials 401. Nothing changed."""
    before = web.db.run_sync(users.list_users, web.other)
    for client in (web.client(bearer=web.managed_token), _manager(web)):
        for domain in (web.other, "nowhere.test"):
            reply = _call(client, method, path, payload, domain, f"plain@{domain}")
            assert reply.status == 403, (method, path, domain, reply.text)
            assert reply.json()["error"]["code"] == "forbidden"
    plain = web.client()
    assert plain.login(web.plain).status == 303
    reply = _call(plain, method, path, payload, web.managed, web.plain)
    assert reply.status == 403
    assert reply.json()["error"]["code"] in ("no_console_access", "forbidden")
    reply = _call(web.client(), method, path, payload, web.managed, web.plain)
    assert reply.status == 401
    assert web.db.run_sync(users.list_users, web.other) == before


def test_an_admin_gets_404_for_a_domain_that_does_not_exist(web: WebServer) -> None:
    admin = web.client(bearer=web.admin_token)
    for path in ("/domains/nowhere.test/users", "/domains/nowhere.test/dns",
                 "/users/someone@nowhere.test", "/domains/nowhere.test/dkim"):
        reply = admin.api("GET", path)
        assert reply.status == 404 and reply.json()["error"]["code"] == "not_found"


def test_a_manager_adds_lists_searches_and_pages_its_users(web: WebServer) -> None:
    boss = _manager(web)
    for name in ("carol", "dave", "erin"):
        reply = boss.api("POST", f"/domains/{web.managed}/users",
                         {"localpart": name, "password": STRONG, "quota": "2G"})
        assert reply.status == 201, reply.text
    body = reply.json()
    assert body["address"] == f"erin@{web.managed}" and body["quota_bytes"] == 2 << 30
    page = boss.api("GET", f"/domains/{web.managed}/users?search=r&limit=1").json()
    assert page["total"] == 2  # carol, erin
    assert [u["address"] for u in page["items"]] == [f"carol@{web.managed}"]
    assert page["items"][0]["used_bytes"] == 0
    second = boss.api("GET", f"/domains/{web.managed}/users?search=r&offset=1&limit=1").json()
    assert [u["address"] for u in second["items"]] == [f"erin@{web.managed}"]
    again = boss.api("POST", f"/domains/{web.managed}/users",
                     {"localpart": "carol", "password": STRONG})
    assert again.status == 409


def test_a_weak_password_is_refused_with_the_reason(web: WebServer) -> None:
    admin = web.client(bearer=web.admin_token)
    short = admin.api("POST", f"/domains/{web.managed}/users",
                      {"localpart": "weak", "password": "short"})
    assert short.status == 422 and "too short" in short.json()["error"]["message"]
    common = admin.api("POST", f"/domains/{web.managed}/users",
                       {"localpart": "weak", "password": "password1234"})
    assert common.status == 422 and "common" in common.json()["error"]["message"]
    assert web.db.run_sync(users.get_user, f"weak@{web.managed}") is None


def test_a_user_is_changed_field_by_field(web: WebServer) -> None:
    admin = web.client(bearer=web.admin_token)
    address = f"frank@{web.managed}"
    assert admin.api("POST", f"/domains/{web.managed}/users",
                     {"localpart": "frank", "password": STRONG}).status == 201
    assert admin.api("PATCH", f"/users/{address}", {"quota": "1.5G"}).json()[
        "quota_bytes"] == 1610612736
    assert admin.api("PATCH", f"/users/{address}", {"quota": 1000}).json()["quota_bytes"] == 1000
    assert admin.api("PATCH", f"/users/{address}", {"quota": None}).json()["quota_bytes"] is None
    bad = admin.api("PATCH", f"/users/{address}", {"quota": "lots"})
    assert bad.status == 422 and "not a size" in bad.json()["error"]["message"]
    assert admin.api("PATCH", f"/users/{address}", {"active": False}).json()["active"] is False
    assert admin.api("PATCH", f"/users/{address}", {"is_admin": True}).json()["is_admin"] is True
    assert admin.api("PATCH", f"/users/{address}", {"is_admin": False}).status == 200
    assert admin.api("PATCH", f"/users/{address}", {"password": "x"}).status == 422
    assert admin.api("PATCH", f"/users/{address}",
                     {"password": "another long passphrase 9", "active": True}).status == 200
    frank = web.client()
    assert frank.login(address, "another long passphrase 9").status == 303
    assert admin.api("PATCH", f"/users/{address}", {"colour": "red"}).status == 422
    assert admin.api("DELETE", f"/users/{address}").status == 204
    assert admin.api("GET", f"/users/{address}").status == 404
    audit = [e for e in web.process.log_events() if e.get("address") == address]
    assert [e["event"] for e in audit][:1] == ["user added"]
    assert audit[-1]["event"] == "user removed" and audit[-1]["principal"].startswith("admin-")
    assert any(e["event"] == "user changed" and e["fields"] == ["active", "password"]
               for e in audit)
    assert not any("another long passphrase" in str(e) for e in web.process.log_events())


def test_a_manager_cannot_make_admins_nor_change_more_powerful_accounts(
        web: WebServer) -> None:
    """Setting the password of an admin, or of a manager of other domains, would hand their
    power over: only admins may."""
    boss = _manager(web)
    assert boss.api("POST", f"/domains/{web.managed}/users",
                    {"localpart": "root", "password": STRONG, "is_admin": True}).status == 403
    admin = web.client(bearer=web.admin_token)
    for name in ("chief", "twohats"):
        assert admin.api("POST", f"/domains/{web.managed}/users",
                         {"localpart": name, "password": STRONG}).status == 201
    admin.api("PATCH", f"/users/chief@{web.managed}", {"is_admin": True})
    assert admin.api("POST", f"/domains/{web.other}/managers",
                     {"address": f"twohats@{web.managed}"}).status == 201
    for victim in (f"chief@{web.managed}", f"twohats@{web.managed}"):
        assert boss.api("GET", f"/users/{victim}").status == 200
        for method, payload in (("PATCH", {"password": "taken over, passphrase"}),
                                ("PATCH", {"active": False}), ("DELETE", None)):
            reply = boss.api(method, f"/users/{victim}", payload)
            assert reply.status == 403, (victim, method)
    assert boss.api("PATCH", f"/users/{web.plain}", {"is_admin": True}).status == 403
    assert boss.api("PATCH", f"/users/{web.plain}", {"quota": "1G"}).status == 200
    assert web.db.run_sync(users.get_user, f"chief@{web.managed}").active


def test_only_admins_list_add_and_remove_managers(web: WebServer) -> None:
    admin = web.client(bearer=web.admin_token)
    listed = admin.api("GET", f"/domains/{web.managed}/managers").json()
    assert {m["address"] for m in listed["items"]} >= {web.manager}
    assert admin.api("POST", f"/domains/{web.managed}/managers",
                     {"address": web.plain}).status == 201
    assert (web.plain, web.managed) in web.db.run_sync(webaccess.managers, web.managed)
    assert admin.api("DELETE", f"/domains/{web.managed}/managers/{web.plain}").status == 204
    assert admin.api("DELETE", f"/domains/{web.managed}/managers/{web.plain}").status == 404
    assert admin.api("POST", f"/domains/{web.managed}/managers",
                     {"address": "nobody@nowhere.test"}).status == 404
    boss = _manager(web)
    assert boss.api("GET", f"/domains/{web.managed}/managers").status == 403
    assert boss.api("POST", f"/domains/{web.managed}/managers",
                    {"address": web.plain}).status == 403


def test_aliases_are_added_listed_and_removed_and_loops_refused(web: WebServer) -> None:
    boss = _manager(web)
    base = f"/domains/{web.managed}/aliases"
    assert boss.api("POST", base, {"source": "sales", "destination": web.plain}).status == 201
    assert boss.api("POST", base, {"source": f"info@{web.managed}",
                                   "destination": f"sales@{web.managed}"}).status == 201
    loop = boss.api("POST", base, {"source": "sales", "destination": f"info@{web.managed}"})
    assert loop.status == 422
    assert "would make a loop" in loop.json()["error"]["message"]
    again = boss.api("POST", base, {"source": "sales", "destination": web.plain})
    assert again.status == 409
    elsewhere = boss.api("POST", base, {"source": f"x@{web.other}", "destination": web.plain})
    assert elsewhere.status == 422 and web.managed in elsewhere.json()["error"]["message"]
    page = boss.api("GET", f"{base}?search=sales").json()
    assert {(a["source"], a["destination"]) for a in page["items"]} == {
        (f"sales@{web.managed}", web.plain), (f"info@{web.managed}", f"sales@{web.managed}")}
    assert boss.api("DELETE", f"{base}/info?destination=sales@{web.managed}").status == 204
    assert boss.api("DELETE", f"{base}/info").status == 404


def test_dkim_keys_are_generated_activated_when_published_rotated_and_retired(
        web: WebServer, dns_server: DNSServer) -> None:
    boss = _manager(web)
    base = f"/domains/{web.managed}/dkim"
    made = boss.api("POST", base, {"algorithm": "ed25519", "selector": "s1"})
    assert made.status == 201, made.text
    [key] = made.json()
    assert key["state"] == "pending" and key["record_name"] == f"s1._domainkey.{web.managed}"
    assert "private" not in made.text.lower() and "BEGIN" not in made.text
    assert boss.api("POST", base, {"algorithm": "ed25519", "selector": "s1"}).status == 409
    assert boss.api("POST", base, {"selector": "bad selector"}).status == 422
    early = boss.api("POST", f"{base}/s1/activate")
    assert early.status == 409 and "no DKIM record" in early.json()["error"]["message"]
    dns_server.set_records(key["record_name"], "TXT", [key["record_value"]])
    done = boss.api("POST", f"{base}/s1/activate")
    assert done.status == 200 and done.json()["key"]["state"] == "active"
    rotated = boss.api("POST", f"{base}/rotate", {})
    assert rotated.status == 201
    [successor] = rotated.json()
    assert successor["replaces"] == "s1" and successor["state"] == "pending"
    assert boss.api("POST", f"{base}/rotate", {}).status == 409
    forced = boss.api("POST", f"{base}/{successor['selector']}/activate?force=true").json()
    assert forced["retired"] == ["s1"]
    assert boss.api("POST", f"{base}/{successor['selector']}/retire").json()["state"] == \
        "retired"
    listing = boss.api("GET", base).json()
    assert [k["state"] for k in listing["items"]] == ["retired", "retired"]
    assert all("private" not in k for k in listing["items"])
    assert boss.api("POST", f"{base}/nokey/retire").status == 404
    assert boss.api("POST", f"{base}/rotate", {}).status == 404


def test_the_dns_records_and_their_published_status(web: WebServer,
                                                    dns_server: DNSServer) -> None:
    admin = web.client(bearer=web.admin_token)
    domain = web.other
    [key] = admin.api("POST", f"/domains/{domain}/dkim", {"algorithm": "ed25519"}).json()
    # MTA-STS records are expected once the domain serves a policy (mode not none)
    off = admin.api("GET", f"/domains/{domain}/dns").json()
    assert [r["kind"] for r in off["records"]] == ["MX", "SPF", "DKIM", "DMARC", "TLS-RPT"]
    assert admin.api("PATCH", f"/domains/{domain}", {"mta_sts_mode": "testing"}).status == 200
    plain = admin.api("GET", f"/domains/{domain}/dns").json()
    assert plain["checked"] is False and plain["hostname"] == HOSTNAME
    kinds = [r["kind"] for r in plain["records"]]
    assert kinds == ["MX", "SPF", "DKIM", "DMARC", "MTA-STS", "MTA-STS-HOST", "TLS-RPT"]
    assert plain["records"][0]["zone_line"] == f"{domain}. IN MX 10 {HOSTNAME}."
    assert all(r["status"] is None for r in plain["records"])
    dns_server.set_records(domain, "MX", [(10, HOSTNAME)])
    dns_server.set_records(domain, "TXT", ["v=spf1 mx -all"])
    dns_server.set_records(f"_dmarc.{domain}", "TXT", ["v=DMARC1; p=none", "v=DMARC1; p=reject"])
    dns_server.set_records(key["record_name"], "TXT", ["v=DKIM1; k=ed25519; p=OTHERKEY"])
    dns_server.set_records(f"mta-sts.{domain}", "A", ["192.0.2.80"])  # a web server of theirs
    dns_server.set_records(f"_smtp._tls.{domain}", "TXT", [f"v=TLSRPTv1; rua=mailto:x@{domain}"])
    checked = admin.api("GET", f"/domains/{domain}/dns/check").json()
    status = {r["kind"]: r["status"] for r in checked["records"]}
    assert checked["checked"] is True
    assert status == {"MX": "published", "SPF": "published", "DKIM": "wrong", "DMARC": "wrong",
                      "MTA-STS": "missing", "MTA-STS-HOST": "published", "TLS-RPT": "published"}
    dkim_row = next(r for r in checked["records"] if r["kind"] == "DKIM")
    assert dkim_row["found"] == ["v=DKIM1; k=ed25519; p=OTHERKEY"]
    assert dkim_row["value"] == key["record_value"]
    # the check changes nothing: the pending key stays pending
    assert web.db.run_sync(dkim.list_keys, domain)[0].state == "pending"


def test_the_dns_check_is_bounded_in_time(web: WebServer, dns_server: DNSServer) -> None:
    dns_server.timeout(web.managed)
    started = time.monotonic()
    reply = web.client(bearer=web.admin_token).api("GET", f"/domains/{web.managed}/dns/check")
    assert reply.status == 200 and time.monotonic() - started < 25
    assert {r["kind"]: r["status"] for r in reply.json()["records"]}["MX"] == "unknown"


def test_a_page_of_ten_thousand_users_is_fast(web: WebServer) -> None:
    admin = web.client(bearer=web.admin_token)
    domain = "bulk.test"
    assert admin.api("POST", "/domains", {"name": domain}).status == 201
    web.db.run_sync(lambda s: s.execute(text(
        "INSERT INTO users (domain_id, localpart, address, password_hash) "
        "SELECT d.id, 'u' || n, 'u' || n || '@bulk.test', 'x' "
        "FROM domains d, generate_series(1, 10000) n WHERE d.name = 'bulk.test'")))
    console = web.client()
    console.login(web.admin, PASSWORD)
    started = time.monotonic()
    page = admin.api("GET", f"/domains/{domain}/users?offset=1000&limit=100&search=u9").json()
    html = console.get(f"/users?domain={domain}&offset=5000")
    elapsed = time.monotonic() - started
    assert page["total"] == 1111 and len(page["items"]) == 100
    assert html.status == 200 and "of 10000" in html.text
    assert elapsed < 3, elapsed


def test_a_domain_token_works_on_its_own_domain_only_as_a_manager(web: WebServer) -> None:
    bot = web.client(bearer=web.managed_token)
    for path in ("users", "aliases", "dkim", "dns"):
        assert bot.api("GET", f"/domains/{web.managed}/{path}").status == 200, path
    assert bot.api("GET", f"/users/{web.plain}").status == 200
    assert bot.api("POST", f"/domains/{web.managed}/users",
                   {"localpart": "ivan", "password": STRONG}).status == 201
    assert bot.api("PATCH", f"/users/ivan@{web.managed}", {"is_admin": True}).status == 403
    assert bot.api("GET", f"/domains/{web.managed}/managers").status == 403
    assert not web.db.run_sync(users.get_user, f"ivan@{web.managed}").is_admin


def test_every_dkim_key_change_is_announced_to_the_msa_after_its_commit(
        web: WebServer, redis_url: str) -> None:
    """The msa caches a domain's keys (postroom.mailauth.keycache): each change made through
    the API is announced as ``@domain`` on the credentials channel, once committed."""
    import redis

    from postroom.queue import authevents

    boss = _manager(web)
    base = f"/domains/{web.managed}/dkim"
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(authevents.channel(web.prefix))
    try:
        assert pubsub.get_message(timeout=10)["type"] == "subscribe"  # type: ignore[index]

        def announced() -> bytes:
            while True:
                message = pubsub.get_message(timeout=10)
                assert message is not None, "no announcement"
                if message["type"] == "message":
                    return message["data"]  # type: ignore[no-any-return]

        made = boss.api("POST", base, {"algorithm": "ed25519", "selector": "a1"})
        assert made.status == 201, made.text
        assert announced() == f"@{web.managed}".encode()
        assert boss.api("POST", f"{base}/a1/activate?force=true").status == 200
        assert announced() == f"@{web.managed}".encode()
        rotated = boss.api("POST", f"{base}/rotate", {})
        assert rotated.status == 201, rotated.text
        assert announced() == f"@{web.managed}".encode()
        assert boss.api("POST", f"{base}/a1/retire").status == 200
        assert announced() == f"@{web.managed}".encode()
        # a refused change commits nothing and announces nothing
        assert boss.api("POST", f"{base}/nokey/retire").status == 404
        assert pubsub.get_message(timeout=0.5) is None
        for key in boss.api("GET", base).json()["items"]:
            if key["state"] != "retired":
                boss.api("POST", f"{base}/{key['selector']}/retire")
    finally:
        pubsub.close()
        client.close()
