"""A running web service for tests, and a small HTTP client that keeps cookies.

The ``web`` fixture (one per module) starts ``postroom serve web`` as a real process
on a database of its own, with an admin, a domain manager and a plain account::

    def test_something(web: WebServer) -> None:
        admin = web.client()
        admin.login(web.admin, PASSWORD)             # the console's form, CSRF and all
        status, body = admin.api("GET", "/domains")  # /api/v1/domains with the X-CSRF-Token
        bot = web.client(bearer=web.admin_token)     # or an API token

``web.db`` runs store functions directly (set-up and checks).
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from postroom.auth.passwords import hash_password
from postroom.net.tls import make_self_signed
from postroom.store import domains, users, webaccess
from postroom.store.db import Database
from postroom.store.migrate import upgrade
from tests.support.db import create_test_database, drop_test_database
from tests.support.dns import DNSServer
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, listener_env, runtime_argv
from tests.support.redisdb import delete_prefix

PASSWORD = "correct horse battery"
#: POSTROOM_HOSTNAME of the service: the host its DNS records name
HOSTNAME = "mail.postroom.test"
_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def cookies(self) -> list[str]:
        return self.headers.get_all("set-cookie") or []


@dataclass
class WebClient:
    """HTTP/1.1 to the web service: cookies kept, redirects not followed."""

    host: str
    port: int
    bearer: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str | None = None
    tls: bool = False      # HTTPS (the suite's self-signed certificate, not verified)

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Response:
        conn: http.client.HTTPConnection
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=30,
                                               context=context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            sent = {"Host": f"{self.host}:{self.port}"}
            if self.cookies:
                sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            if self.bearer:
                sent["Authorization"] = f"Bearer {self.bearer}"
            sent.update(headers or {})
            conn.request(method, path, body=body, headers=sent)
            reply = conn.getresponse()
            data = reply.read()
            response = Response(reply.status, reply.headers, data)
        finally:
            conn.close()
        for cookie in response.cookies():
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in cookie:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return response

    def api(self, method: str, path: str, payload: Any = None, *, csrf: bool = True,
            headers: Mapping[str, str] | None = None) -> Response:
        """A call to /api/v1``path``; with a session, the X-CSRF-Token unless ``csrf=False``."""
        sent = dict(headers or {})
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            sent.setdefault("Content-Type", "application/json")
        if csrf and self.csrf and not self.bearer:
            sent.setdefault("X-CSRF-Token", self.csrf)
        return self.request(method, "/api/v1" + path, body=body, headers=sent)

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Response:
        return self.request("GET", path, headers=headers)

    def post_form(self, path: str, fields: Mapping[str, str], *,
                  headers: Mapping[str, str] | None = None) -> Response:
        from urllib.parse import urlencode

        sent = {"Content-Type": "application/x-www-form-urlencoded"}
        sent.update(headers or {})
        return self.request("POST", path, body=urlencode(fields).encode(), headers=sent)

    def form_csrf(self, page: str) -> str:
        """The csrf_token of the first form on ``page`` (a GET)."""
        found = _CSRF_FIELD.search(self.get(page).text)
        assert found, f"no csrf_token on {page}"
        return found.group(1)

    def login(self, address: str, password: str = PASSWORD) -> Response:
        """Log in through the console's form; keeps the session's CSRF token for API calls."""
        token = self.form_csrf("/login")
        reply = self.post_form("/login", {"csrf_token": token, "address": address,
                                          "password": password, "next": "/"})
        if reply.status == 303 and "postroom_session" in self.cookies:  # not a 2FA step
            self.csrf = self.form_csrf("/account")  # every account has one
        return reply


@dataclass
class WebServer:
    host: str
    port: int
    tls_port: int
    process: ServiceProcess
    db: Database
    prefix: str
    admin: str
    manager: str
    plain: str
    managed: str          # the manager's domain
    other: str            # a domain the manager does not manage
    admin_token: str
    managed_token: str

    def client(self, *, bearer: str | None = None, tls: bool = False) -> WebClient:
        """A client of the plain listener, or with ``tls`` of the HTTPS one."""
        return WebClient(self.host, self.tls_port if tls else self.port, bearer=bearer,
                         tls=tls)


def _setup(db: Database, tag: str) -> dict[str, str]:
    managed, other = f"managed-{tag}.test", f"other-{tag}.test"
    names = {"admin": f"admin@{other}", "manager": f"boss@{managed}",
             "plain": f"plain@{managed}", "managed": managed, "other": other}
    db.run_sync(domains.add_domain, managed)
    db.run_sync(domains.add_domain, other)
    for key in ("admin", "manager", "plain"):
        db.run_sync(users.add_user, names[key], PASSWORD,
                    hash_fn=lambda p: hash_password(p, ln=4))
    db.run_sync(webaccess.set_admin, names["admin"], True)
    db.run_sync(webaccess.add_manager, names["manager"], managed)
    names["admin_token"] = db.run_sync(webaccess.create_token, f"admin-{tag}", None)
    names["managed_token"] = db.run_sync(webaccess.create_token, f"managed-{tag}", managed)
    # an expired session, for the service's purge at start
    user_id = db.run_sync(users.get_user, names["plain"]).id
    db.run_sync(webaccess.create_web_session, user_id, 60)
    db.run_sync(lambda s: s.execute(text(
        "UPDATE web_sessions SET expires_at = now() - interval '1 hour'")))
    return names


@pytest.fixture(scope="module")
def web(redis_url: str, tmp_path_factory: pytest.TempPathFactory,
        dns_server_session: DNSServer) -> Iterator[WebServer]:
    """`postroom serve web` on its own database, with the accounts and tokens above; its
    DNS lookups (the DNS pages' checks) go to the loopback test server (``dns_server``)."""
    import redis

    certs: Path = tmp_path_factory.mktemp("web-tls")
    make_self_signed(certs / "cert.pem", certs / "key.pem", "localhost")
    database_url = create_test_database("postroom_web_")
    db = Database(database_url, pool_size=2)
    prefix = f"prtest:{secrets.token_hex(6)}:"
    process = None
    try:
        upgrade(database_url)
        names = _setup(db, secrets.token_hex(3))
        port, tls_port = free_port(), free_port()
        env = listener_env(database_url, redis_url, prefix, certs, web_listen=port,
                           web_tls_listen=tls_port)
        env["POSTROOM_AUTH_DELAY_MAX"] = "0"
        # the modules on this server send thousands of requests from one address (schemathesis):
        # the per-client rate would answer most of them 429 and hide the handlers; it has its
        # own server in test_web_service.py::test_a_client_over_its_request_rate_gets_429...
        env["POSTROOM_WEB_RATE"] = "0"
        env.update(dns_server_session.env)
        env["POSTROOM_HOSTNAME"] = HOSTNAME
        env["POSTROOM_DNS_TIMEOUT"] = "1"
        process = ServiceProcess("web", env, argv=runtime_argv("postroom_web.main:SERVICE"))
        process.start(timeout=60)
        yield WebServer("127.0.0.1", port, tls_port, process, db, prefix, **names)
    finally:
        if process is not None:
            process.close()
        db.dispose()
        drop_test_database(database_url)
        client = redis.Redis.from_url(redis_url)
        delete_prefix(client, prefix)
        client.close()


def web_on_suite(suite: Any, **extra_env: str) -> WebServer:
    """The accounts and tokens above on a :class:`tests.support.suite.Suite`'s database, and
    its `web` service started beside the suite's other services (real mail in the queue)."""
    names = _setup(suite.db, secrets.token_hex(3))
    running = suite.start("web", POSTROOM_AUTH_DELAY_MAX="0", **extra_env)
    return WebServer("127.0.0.1", running.port, running.tls_port, running.process, suite.db,
                     suite.prefix, **names)
