"""Time the console's heavy pages over real HTTP: the DMARC dashboard and the users page.

A fresh database (as bench/web_dashboard.py fills it: 100,000 DMARC verdicts over 30 days
from ~500 sources, 90 aggregate reports, 10,000 users inserted in bulk), then a real
``postroom serve web`` on loopback (Redis at 127.0.0.1:6379 under a prefix of its own, DNS
pointed at bench/dnsnull.py so every reverse lookup is a quick NXDOMAIN and nothing leaves
the machine). An admin logs in through the form; each page is fetched until the source
names are all cached (the first visit is printed apart: it waits for up to 32 lookups),
then five times: median (min-max) in ms, from the request to the last byte. The users page
is ``/users?domain=...`` when the service has it; without one, the store's
``users.list_users_page`` plus a minimal table render is timed instead, and the line says
so. Everything is dropped afterwards.

    .venv/bin/python bench/web_pages.py [--verdicts 100000] [--users 10000]
"""

from __future__ import annotations

import argparse
import http.client
import re
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import redis
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, python_env, stop_pid, wait_port
from web_dashboard import (
    DOMAIN,
    RUNS,
    create_database,
    drop_database,
    fill_reports,
    fill_users,
    fill_verdicts,
    progress,
)

from postroom.auth.passwords import hash_password
from postroom.store import domains, users, webaccess
from postroom.store.db import Database
from postroom.store.migrate import upgrade

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN = f"admin@{DOMAIN}"
PASSWORD = "bench password, long enough"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
USERS_TABLE = jinja2.Environment(autoescape=True).from_string(
    "<table>{% for u in users %}<tr><td>{{ u.address }}</td><td>{{ u.active }}</td>"
    "<td>{{ u.quota_bytes }}</td></tr>{% endfor %}</table>")


class Browser:
    """HTTP/1.1 to the console, keeping its cookies; a new connection per request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None,
                ) -> tuple[int, bytes, http.client.HTTPMessage]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        sent = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=body, headers=sent)
            reply = conn.getresponse()
            data = reply.read()
        finally:
            conn.close()
        for cookie in reply.headers.get_all("set-cookie") or []:
            name, _, rest = cookie.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return reply.status, data, reply.headers

    def login(self, address: str, password: str) -> None:
        _, page, _ = self.request("GET", "/login")
        found = CSRF_FIELD.search(page.decode())
        assert found, "no csrf_token on the login page"
        form = urlencode({"csrf_token": found.group(1), "address": address,
                          "password": password, "next": "/"}).encode()
        status, _, _ = self.request("POST", "/login", form, {
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": f"http://127.0.0.1:{self.port}"})
        if status != 303:
            raise RuntimeError(f"login answered {status}")

    def get(self, path: str) -> tuple[float, int, bytes]:
        started = time.perf_counter()
        status, body, _ = self.request("GET", path)
        return (time.perf_counter() - started) * 1000, status, body


def times_of(fn: Callable[[], float]) -> list[float]:
    return [fn() for _ in range(RUNS)]


def line(label: str, times: list[float], extra: str = "") -> None:
    print(f"{label:46s} {statistics.median(times):8.1f} ms "
          f"({min(times):.1f}-{max(times):.1f}){extra}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdicts", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args()
    import random
    rng = random.Random(20261207)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    url = create_database()
    db = Database(url, pool_size=2)
    prefix = f"prbench:{secrets.token_hex(6)}:"
    web: subprocess.Popen[Any] | None = None
    dns: subprocess.Popen[Any] | None = None
    try:
        upgrade(url)
        db.start()
        db.run_sync(domains.add_domain, DOMAIN)
        t0 = time.monotonic()
        fill_verdicts(db, args.verdicts, end, rng)
        fill_reports(db, end, rng)
        progress(f"{args.verdicts:,} verdicts and 90 reports in {time.monotonic() - t0:.1f} s")
        t0 = time.monotonic()
        fill_users(db, args.users)
        db.run_sync(users.add_user, ADMIN, PASSWORD, hash_fn=lambda p: hash_password(p, ln=4))
        db.run_sync(webaccess.set_admin, ADMIN, True)
        progress(f"{args.users:,} users in {time.monotonic() - t0:.1f} s")
        db.run_sync(lambda s: s.execute(text("ANALYZE")))

        dns_port, port, http_port = free_port(), free_port(), free_port()
        dns = subprocess.Popen([sys.executable, str(Path(__file__).parent / "dnsnull.py"),
                                str(dns_port)], stdout=subprocess.PIPE, env=python_env())
        assert dns.stdout is not None
        dns.stdout.readline()
        env = {**python_env(), "POSTROOM_DATABASE_URL": url, "POSTROOM_REDIS_URL": REDIS_URL,
               "POSTROOM_REDIS_PREFIX": prefix, "POSTROOM_HOSTNAME": "bench.test",
               "POSTROOM_WEB_LISTEN": f"tcp:{port}:interface=127.0.0.1",
               "POSTROOM_HTTP_LISTEN": f"tcp:{http_port}:interface=127.0.0.1",
               "POSTROOM_DNS_SERVERS": f"127.0.0.1:{dns_port}", "POSTROOM_DNS_TIMEOUT": "1s",
               "POSTROOM_LOG_LEVEL": "warning",
               # one client timing pages back to back: the server's cost, not a client's
               # allowance (POSTROOM_WEB_RATE, docs/web.md)
               "POSTROOM_WEB_RATE": "0"}
        web = subprocess.Popen([sys.executable, "-m", "postroom.ops.cli", "serve", "web"],
                               env=env, stdout=subprocess.DEVNULL)
        wait_port(port, timeout=60)
        client = Browser(port)
        client.login(ADMIN, PASSWORD)

        dashboard = f"/dmarc/{DOMAIN}?range=30d"
        first, status, body = client.get(dashboard)
        if status != 200:
            raise RuntimeError(f"{dashboard} answered {status}")
        visits = 1
        while b"still being looked up" in body and visits < 20:
            _, _, body = client.get(dashboard)
            visits += 1
        print(f"\nOver HTTP (postroom serve web, {args.verdicts:,} verdicts over 30 days, "
              f"{args.users:,} users), median of {RUNS} (min-max):")
        print(f"{'DMARC dashboard, first visit (names unknown)':46s} {first:8.1f} ms "
              f"({len(body) // 1024} KiB; every name cached after {visits} visits)")
        line(f"DMARC dashboard page {dashboard}", times_of(lambda: client.get(dashboard)[0]))
        api = f"/api/v1/dmarc/{DOMAIN}?start={(end - timedelta(days=30)).isoformat()}"
        api = api.replace("+", "%2B")
        client.request("GET", api)
        line("DMARC dashboard API /api/v1/dmarc/{domain}",
             times_of(lambda: client.get(api)[0]))

        users_path = f"/users?domain={DOMAIN}"
        _, status, _ = client.get(users_path)
        if status == 200:
            line(f"users page {users_path}", times_of(lambda: client.get(users_path)[0]))
        else:
            def store_and_render() -> float:
                started = time.perf_counter()
                found, _total = db.run_sync(users.list_users_page, domains={DOMAIN},
                                            offset=5000, limit=50, search=None)
                USERS_TABLE.render(users=found)
                return (time.perf_counter() - started) * 1000
            store_and_render()
            line("users: list_users_page + table render", times_of(store_and_render),
                 f"  (no /users page in this branch: {status})")
    finally:
        stop_pid(web)
        stop_pid(dns)
        db.stop()
        drop_database(url)
        client_redis = redis.Redis.from_url(REDIS_URL)
        for key in client_redis.scan_iter(match=prefix + "*", count=1000):
            client_redis.delete(key)
        client_redis.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
