"""The web service as deployed (its own process, real PostgreSQL and Redis) over real HTTP:
authentication, CSRF, cross-site refusals, roles, errors, headers and the OpenAPI document."""

from __future__ import annotations

import http.client
import re
import socket
from pathlib import Path
from typing import Any

from sqlalchemy import text

from postroom.store import webaccess
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess
from tests.support.redisdb import wait_until
from tests.support.web import PASSWORD, WebClient, WebServer

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


def test_the_api_refuses_a_call_without_credentials(web: WebServer) -> None:
    reply = web.client().api("GET", "/domains")
    assert reply.status == 401
    assert reply.json()["error"]["code"] == "unauthorized"
    assert reply.header("www-authenticate") == "Bearer"


def test_an_unknown_or_malformed_bearer_token_is_refused(web: WebServer) -> None:
    assert web.client(bearer="prt_nonsense").api("GET", "/domains").status == 401
    reply = web.client().api("GET", "/domains", headers={"Authorization": "Basic eDp5"})
    assert reply.status == 401
    assert set(reply.json()["error"]) == {"code", "message"}


def test_an_admin_token_lists_every_domain_with_pagination(web: WebServer) -> None:
    bot = web.client(bearer=web.admin_token)
    page = bot.api("GET", "/domains?limit=1").json()
    assert page["total"] == 2 and page["offset"] == 0 and page["limit"] == 1
    assert [d["name"] for d in page["items"]] == [web.managed]
    second = bot.api("GET", "/domains?offset=1&limit=1").json()
    assert [d["name"] for d in second["items"]] == [web.other]
    assert set(second["items"][0]) == {"name", "created_at", "users", "aliases"}


def test_a_domain_token_sees_only_its_domain(web: WebServer) -> None:
    page = web.client(bearer=web.managed_token).api("GET", "/domains").json()
    assert [d["name"] for d in page["items"]] == [web.managed]
    assert page["total"] == 1


def test_a_domain_manager_sees_only_the_domains_it_manages(web: WebServer) -> None:
    boss = web.client()
    assert boss.login(web.manager).status == 303
    page = boss.api("GET", "/domains").json()
    assert [d["name"] for d in page["items"]] == [web.managed]
    html = boss.get("/domains").text
    assert web.managed in html and web.other not in html


def test_only_admins_add_domains(web: WebServer) -> None:
    boss = web.client(bearer=web.managed_token)
    reply = boss.api("POST", "/domains", {"name": "not-allowed.test"})
    assert reply.status == 403
    assert reply.json()["error"]["code"] == "forbidden"
    admin = web.client(bearer=web.admin_token)
    created = admin.api("POST", "/domains", {"name": "Added-By-Token.test"})
    assert created.status == 201
    assert created.json()["name"] == "added-by-token.test"
    again = admin.api("POST", "/domains", {"name": "added-by-token.test"})
    assert again.status == 409 and again.json()["error"]["code"] == "conflict"


def test_a_cookie_login_sets_a_strict_http_only_session_cookie(web: WebServer) -> None:
    admin = web.client()
    reply = admin.login(web.admin)
    assert reply.status == 303 and reply.header("location") == "/"
    session = [c for c in reply.cookies() if c.startswith("postroom_session=")]
    assert len(session) == 1
    attributes = {a.strip() for a in session[0].split(";")[1:]}
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= attributes
    assert "Secure" not in attributes  # plain HTTP without POSTROOM_WEB_COOKIE_SECURE
    page = admin.api("GET", "/domains")
    assert page.status == 200 and page.json()["total"] >= 2


def test_a_cookie_session_must_send_the_csrf_token_to_change_state(web: WebServer) -> None:
    admin = web.client()
    admin.login(web.admin)
    refused = admin.api("POST", "/domains", {"name": "csrf-less.test"}, csrf=False)
    assert refused.status == 403 and refused.json()["error"]["code"] == "csrf"
    wrong = admin.api("POST", "/domains", {"name": "csrf-less.test"},
                      headers={"X-CSRF-Token": "wrong"})
    assert wrong.status == 403
    assert admin.api("POST", "/domains", {"name": "csrf-ok.test"}).status == 201


def test_a_bearer_call_needs_no_csrf_token(web: WebServer) -> None:
    reply = web.client(bearer=web.admin_token).api("POST", "/domains", {"name": "bearer.test"})
    assert reply.status == 201


def test_a_form_post_without_the_csrf_token_is_refused(web: WebServer) -> None:
    admin = web.client()
    admin.login(web.admin)
    reply = admin.post_form("/domains", {"name": "form-no-token.test"})
    assert reply.status == 403
    assert "form has expired" in reply.text


def test_a_cross_site_form_post_is_refused_even_with_the_token(web: WebServer) -> None:
    admin = web.client()
    admin.login(web.admin)
    token = admin.form_csrf("/domains")
    evil = admin.post_form("/domains", {"csrf_token": token, "name": "evil.test"},
                           headers={"Origin": "https://evil.example"})
    assert evil.status == 403 and "cross-site" in evil.text
    fetch = admin.post_form("/domains", {"csrf_token": token, "name": "evil.test"},
                            headers={"Sec-Fetch-Site": "cross-site"})
    assert fetch.status == 403
    same = admin.post_form("/domains", {"csrf_token": token, "name": "same-site.test"},
                           headers={"Origin": f"http://{web.host}:{web.port}",
                                    "Sec-Fetch-Site": "same-origin"})
    assert same.status == 303 and same.header("location") == "/domains"
    listing = admin.get("/domains?limit=500").text
    assert "same-site.test" in listing
    assert "Domain same-site.test added." in listing  # the notice, once
    assert "added." not in admin.get("/domains?limit=500").text


def test_a_login_form_from_another_site_is_refused(web: WebServer) -> None:
    client = web.client()
    token = client.form_csrf("/login")
    reply = client.post_form("/login", {"csrf_token": token, "address": web.admin,
                                        "password": PASSWORD},
                             headers={"Origin": "https://evil.example"})
    assert reply.status == 403
    assert "postroom_session" not in client.cookies


def test_a_wrong_password_shows_the_login_form_again(web: WebServer) -> None:
    client = web.client()
    reply = client.login(web.admin, "wrong password")
    assert reply.status == 401
    assert "Wrong address or password" in reply.text
    assert "postroom_session" not in client.cookies


def test_a_page_without_a_session_redirects_to_the_login(web: WebServer) -> None:
    reply = web.client().get("/domains?offset=0")
    assert reply.status == 303
    assert reply.header("location") == "/login?next=/domains%3Foffset%3D0"


def test_the_login_sends_only_to_local_paths(web: WebServer) -> None:
    client = web.client()
    token = client.form_csrf("/login")
    reply = client.post_form("/login", {"csrf_token": token, "address": web.admin,
                                        "password": PASSWORD, "next": "//evil.example/x"})
    assert reply.status == 303 and reply.header("location") == "/"


def test_an_account_without_console_access_sees_a_plain_page(web: WebServer) -> None:
    plain = web.client()
    assert plain.login(web.plain).status == 303
    reply = plain.get("/domains")
    assert reply.status == 403 and "No console access" in reply.text
    assert plain.api("GET", "/domains").json()["error"]["code"] == "no_console_access"


def test_logout_ends_the_session(web: WebServer) -> None:
    admin = web.client()
    admin.login(web.admin)
    old = admin.cookies["postroom_session"]
    token = admin.form_csrf("/")
    assert admin.post_form("/logout", {"csrf_token": token}).status == 303
    assert web.db.run_sync(webaccess.web_session, old, 3600) is None
    assert admin.get("/").status == 303


def test_invalid_requests_get_one_error_shape(web: WebServer) -> None:
    bot = web.client(bearer=web.admin_token)
    too_many = bot.api("GET", "/domains?limit=501")
    assert too_many.status == 422
    error = too_many.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"][0]["loc"] == ["query", "limit"]
    far = bot.api("GET", "/domains?offset=56589874330901202730133370175488")
    assert far.status == 422  # not a database error: PostgreSQL's OFFSET is a bigint
    unknown = bot.api("GET", "/domains?color=red")
    assert unknown.status == 422
    not_json = bot.request("POST", "/api/v1/domains", body=b"{",
                           headers={"Content-Type": "application/json"})
    assert not_json.status == 400 and not_json.json()["error"]["code"] == "bad_request"
    missing = bot.api("POST", "/domains", {})
    assert missing.status == 422 and missing.json()["error"]["details"][0]["loc"] == \
        ["body", "name"]
    bad_name = bot.api("POST", "/domains", {"name": "no spaces allowed"})
    assert bad_name.status == 422
    huge = bot.request("POST", "/api/v1/domains", body=b"x" * (1024 * 1024 + 1),
                       headers={"Content-Type": "application/json"})
    assert huge.status == 413 and huge.json()["error"]["code"] == "payload_too_large"
    nowhere = bot.api("GET", "/nowhere")
    assert nowhere.status == 404 and nowhere.json()["error"]["code"] == "not_found"
    method = bot.api("DELETE", "/domains")
    assert method.status == 405 and method.header("allow") == "GET, POST"


def test_every_response_carries_the_security_headers(web: WebServer) -> None:
    admin = web.client()
    admin.login(web.admin)
    replies = [admin.get("/"), admin.get("/domains"), admin.api("GET", "/domains"),
               web.client().get("/login"), web.client().api("GET", "/domains"),
               web.client().get("/nowhere"), web.client().get("/static/postroom.css"),
               web.client().get("/api/v1/openapi.json")]
    for reply in replies:
        assert reply.header("content-security-policy") == CSP
        assert reply.header("x-frame-options") == "DENY"
        assert reply.header("x-content-type-options") == "nosniff"
        assert reply.header("referrer-policy") == "same-origin"
    for reply in replies[:6]:
        assert reply.header("cache-control") == "no-store"


def test_pages_have_no_inline_script_or_style(web: WebServer) -> None:
    admin = web.client()
    admin.login(web.admin)
    for path in ("/", "/domains", "/login"):
        html = admin.get(path).text.lower()
        assert "<style" not in html and " style=" not in html
        assert "<script>" not in html and "<script " not in html.replace(
            '<script src="/static/', "")


def test_static_files_come_from_the_package_with_long_caching(web: WebServer) -> None:
    css = web.client().get("/static/postroom.css")
    assert css.status == 200
    assert css.header("content-type") == "text/css; charset=utf-8"
    assert "max-age=31536000" in (css.header("cache-control") or "")
    assert b"prefers-color-scheme: dark" in css.body
    assert web.client().get("/static/../pyproject.toml").status == 404


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_the_openapi_document_describes_the_api_without_authentication(web: WebServer) -> None:
    reply = web.client().get("/api/v1/openapi.json")
    assert reply.status == 200
    doc = reply.json()
    assert doc["openapi"].startswith("3.1")
    assert {"title", "version"} <= set(doc["info"])
    for ref in _refs(doc):
        assert ref.startswith("#/components/"), ref
        node: Any = doc
        for part in ref[2:].split("/"):
            node = node[part]  # every reference resolves
    listing = doc["paths"]["/api/v1/domains"]["get"]
    names = {p["name"] for p in listing["parameters"]}
    assert {"offset", "limit"} <= names
    for operation in (op for item in doc["paths"].values() for op in item.values()):
        assert operation["operationId"] and operation["responses"]
        for status in ("401", "403", "500"):
            assert operation["responses"][status] == {"$ref": f"#/components/responses/{status}"}
    error = doc["components"]["responses"]["404"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorBody"}
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    created = doc["paths"]["/api/v1/domains"]["post"]
    assert "201" in created["responses"] and created["requestBody"]["required"] is True


def test_each_request_is_one_log_line_without_secrets(web: WebServer) -> None:
    web.client(bearer=web.admin_token).api("GET", "/domains?limit=7")
    lines = [e for e in web.process.log_events()
             if e.get("event") == "request" and e.get("route") == "/api/v1/domains"]
    assert lines
    last = lines[-1]
    assert {"method", "route", "status", "ms", "principal"} <= set(last)
    assert web.admin_token not in web.process.output
    assert PASSWORD not in web.process.output


def test_the_documented_web_metrics_count_requests_by_route_template(web: WebServer) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"postroom_web_[a-z_]+", docs))
    assert documented == {"postroom_web_requests_total", "postroom_web_request_seconds",
                          "postroom_web_source_lookups_total"}
    web.client(bearer=web.admin_token).api("GET", "/domains")
    status, body = web.process.get("/metrics")
    text = body.decode()
    assert status == 200
    for name in documented:
        assert f"# TYPE {name.removesuffix('_total')} " in text or \
            f"# TYPE {name} " in text, name
    assert 'postroom_web_requests_total{method="GET",route="/api/v1/domains",status="200"}' \
        in text
    assert "postroom_web_request_seconds_bucket" in text
    web.client().request("BREW", "/api/v1/domains")
    text = web.process.get("/metrics")[1].decode()
    assert 'method="other",route="/api/v1/domains",status="405"' in text
    assert "BREW" not in text


def test_over_https_the_session_cookie_is_secure(web: WebServer) -> None:
    admin = web.client(tls=True)
    reply = admin.login(web.admin)
    assert reply.status == 303
    [session] = [c for c in reply.cookies() if c.startswith("postroom_session=")]
    assert "Secure" in {a.strip() for a in session.split(";")}
    page = admin.api("GET", "/domains")
    assert page.status == 200
    assert page.header("strict-transport-security") == "max-age=31536000"
    assert web.client().get("/login").header("strict-transport-security") is None


def test_with_redis_away_a_login_is_a_temporary_failure(web: WebServer) -> None:
    """The limiter cannot be asked: refuse (fail closed) with a message to try later."""
    env = dict(web.process.env)
    port = free_port()
    env.pop("POSTROOM_HTTP_LISTEN")
    env["POSTROOM_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    env["POSTROOM_WEB_LISTEN"] = f"tcp:{port}:interface=127.0.0.1"
    env["POSTROOM_WEB_TLS_LISTEN"] = ""
    process = ServiceProcess("web-noredis", env, argv=web.process.argv).spawn()
    try:
        client = WebClient(web.host, port)
        wait_until(lambda: _answers(client), timeout=60)
        reply = client.login(web.admin)
        assert reply.status == 503
        assert "temporarily unavailable" in reply.text
        assert "postroom_session" not in client.cookies
        assert process.healthz()[0] == 503
    finally:
        process.close()


def _answers(client: WebClient) -> bool:
    try:
        return client.get("/login").status == 200
    except OSError:
        return False


def test_a_login_form_still_works_when_a_session_cookie_comes_along(web: WebServer) -> None:
    client = web.client()
    token = client.form_csrf("/login")   # an open login tab
    assert client.login(web.plain).status == 303  # another tab logs in meanwhile
    client.cookies["postroom_login_csrf"] = token
    reply = client.post_form("/login", {"csrf_token": token, "address": web.admin,
                                        "password": PASSWORD})
    assert reply.status == 303


def test_the_overview_shows_domains_queues_and_health(web: WebServer) -> None:
    admin = web.client()
    admin.login(web.admin)
    html = admin.get("/").text
    assert "outbound" in html and "deliver" in html
    assert "database" in html and "redis" in html
    boss = web.client()
    boss.login(web.manager)
    assert '<a href="/domains">1</a>' in boss.get("/").text


def test_expired_sessions_are_purged_at_start(web: WebServer) -> None:
    def expired() -> int:
        return int(web.db.run_sync(lambda s: s.execute(text(
            "SELECT count(*) FROM web_sessions WHERE expires_at <= now()")).scalar_one()))

    wait_until(lambda: expired() == 0, timeout=10)  # the fixture made one


def test_one_domain_by_path_checks_who_manages_it(web: WebServer) -> None:
    boss = web.client(bearer=web.managed_token)
    mine = boss.api("GET", f"/domains/{web.managed.upper()}")
    assert mine.status == 200 and mine.json()["name"] == web.managed
    assert mine.json()["users"] == 2
    assert boss.api("GET", f"/domains/{web.other}").status == 403
    assert boss.api("GET", "/domains/nowhere.test").status == 403  # not: 404, it exists?
    admin = web.client(bearer=web.admin_token)
    assert admin.api("GET", "/domains/nowhere.test").json()["error"]["code"] == "not_found"
    assert admin.api("GET", "/domains/%2e%2e").status == 404


def test_removing_a_domain_is_for_admins_and_refused_while_it_has_users(
        web: WebServer) -> None:
    admin = web.client(bearer=web.admin_token)
    assert admin.api("POST", "/domains", {"name": "short-lived.test"}).status == 201
    manager = web.client(bearer=web.managed_token)
    assert manager.api("DELETE", f"/domains/{web.managed}").status == 403
    busy = admin.api("DELETE", f"/domains/{web.managed}")
    assert busy.status == 409 and "user" in busy.json()["error"]["message"]
    gone = admin.api("DELETE", "/domains/short-lived.test")
    assert gone.status == 204 and gone.body == b""
    assert admin.api("GET", "/domains/short-lived.test").status == 404


def test_a_multipart_form_is_never_parsed(web: WebServer) -> None:
    client = web.client()
    token = client.form_csrf("/login")
    body = (f'--zz\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n'
            f'--zz\r\nContent-Disposition: form-data; name="address"\r\n\r\n{web.admin}\r\n'
            f'--zz\r\nContent-Disposition: form-data; name="password"\r\n\r\n{PASSWORD}\r\n'
            "--zz--\r\n").encode()
    reply = client.request("POST", "/login", body=body,
                           headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert reply.status == 403 and "postroom_session" not in client.cookies


def test_statuses_carry_their_reason_phrase(web: WebServer) -> None:
    conn = http.client.HTTPConnection(web.host, web.port, timeout=10)
    conn.request("GET", "/api/v1/domains?limit=0",
                 headers={"Authorization": f"Bearer {web.admin_token}"})
    reply = conn.getresponse()
    assert (reply.status, reply.reason) == (422, "Unprocessable Entity")
    conn.close()


def test_connections_past_the_per_client_limit_are_closed(web: WebServer) -> None:
    held = []
    try:
        for _ in range(50):  # POSTROOM_MAX_CONNECTIONS_PER_IP
            held.append(socket.create_connection((web.host, web.port), timeout=5))
        wait_until(lambda: _refused(web), timeout=10)
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: _answers(web.client()), timeout=10)  # freed once the server saw them go


def _refused(web: WebServer) -> bool:
    with socket.create_connection((web.host, web.port), timeout=5) as extra:
        try:
            extra.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
            return extra.recv(100) == b""  # closed unanswered
        except ConnectionResetError:
            return True


def test_a_client_over_its_request_rate_gets_429_before_any_work(web: WebServer) -> None:
    """POSTROOM_WEB_RATE: a token bucket per client, here 3 requests and (practically) no
    refill; behind a trusted proxy the client is the X-Forwarded-For address. Static files
    are not counted, other clients are not touched, and the refused requests never reach
    authentication (a good bearer token is refused too)."""
    env = dict(web.process.env)
    port = free_port()
    env.pop("POSTROOM_HTTP_LISTEN")
    env["POSTROOM_WEB_LISTEN"] = f"tcp:{port}:interface=127.0.0.1"
    env["POSTROOM_WEB_TLS_LISTEN"] = ""
    env["POSTROOM_WEB_PROXY_TRUSTED"] = "127.0.0.1"
    env["POSTROOM_WEB_RATE"] = "0.001"  # one token back every 1,000 s
    env["POSTROOM_WEB_RATE_BURST"] = "3"
    process = ServiceProcess("web-rate", env, argv=web.process.argv).spawn()
    try:
        client = WebClient(web.host, port, bearer=web.admin_token)
        wait_until(lambda: _static_answers(client), timeout=60)
        one = {"X-Forwarded-For": "192.0.2.1"}
        for _ in range(3):
            assert client.api("GET", "/domains", headers=one).status == 200
        refused = client.api("GET", "/domains", headers=one)
        assert refused.status == 429
        assert refused.json()["error"]["code"] == "too_many_requests"
        assert int(refused.header("retry-after") or "0") >= 900
        page = client.get("/login", headers=one)
        assert page.status == 429 and "text/html" in (page.header("content-type") or "")
        assert client.get("/static/postroom.css", headers=one).status == 200
        # another client behind the same proxy has its own bucket
        assert client.api("GET", "/domains", headers={"X-Forwarded-For": "192.0.2.2"}).status \
            == 200
        metrics = process.get("/metrics")[1].decode()
        assert 'postroom_errors_total{kind="too_many_requests"} 2.0' in metrics
    finally:
        process.close()


def _static_answers(client: WebClient) -> bool:
    try:
        return client.get("/static/postroom.css").status == 200
    except OSError:
        return False
