"""Failed-login delays and locks through real msa, imap and pop3 processes and stdlib clients.

The office case: many people behind one address. A client failing for one
account is delayed (0, 2, 4 s ... before each new attempt) and then locked out
of that account only; a colleague logging in from the same address meanwhile
gets in at once. When the limiter's Redis is away, logins get the protocol's
temporary-failure answer, never "too many failed logins".
"""

from __future__ import annotations

import imaplib
import poplib
import secrets
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port
from tests.support.suite import PASSWORD, Running, Suite

pytestmark = pytest.mark.slow

LIMIT = 4
# delays 0, 2, 4, 5 s before the 1st..4th attempt of a failing pair, then the lock
LIMITS = {"POSTROOM_AUTH_FAIL_LIMIT": str(LIMIT), "POSTROOM_AUTH_DELAY_MAX": "5s",
          "POSTROOM_AUTH_ADDRESS_FAIL_LIMIT": "50"}


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# --- one login with each stdlib client, from a chosen loopback source: (ok, server's answer)


def imap_login(service: Running, source: str, user: str, password: str) -> tuple[bool, str]:
    class FromSource(imaplib.IMAP4_SSL):
        def _create_socket(self, timeout: float | None) -> Any:
            sock = socket.create_connection((self.host, self.port), timeout,
                                            source_address=(source, 0))
            return self.ssl_context.wrap_socket(sock, server_hostname="localhost")

    client = FromSource("127.0.0.1", service.tls_port, ssl_context=unverified(), timeout=30)
    try:
        client.login(user, password)
        return True, "OK"
    except imaplib.IMAP4.error as exc:
        return False, str(exc)
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def pop3_login(service: Running, source: str, user: str, password: str) -> tuple[bool, str]:
    class FromSource(poplib.POP3_SSL):
        def _create_socket(self, timeout: float) -> Any:
            sock = socket.create_connection((self.host, self.port), timeout,
                                            source_address=(source, 0))
            return unverified().wrap_socket(sock, server_hostname="localhost")

    client = FromSource("127.0.0.1", service.tls_port, timeout=30)
    try:
        client.user(user)
        client.pass_(password)
        return True, "+OK"
    except poplib.error_proto as exc:
        return False, exc.args[0].decode()
    finally:
        try:
            client.quit()
        except (poplib.error_proto, OSError):
            pass


def smtp_login(service: Running, source: str, user: str, password: str) -> tuple[bool, str]:
    with smtplib.SMTP("127.0.0.1", service.port, timeout=30,
                      source_address=(source, 0)) as client:
        client.ehlo("client.test")
        client.starttls(context=unverified())
        client.ehlo("client.test")
        # one AUTH PLAIN (login() would go on to AUTH LOGIN after a failure: two attempts)
        client.user, client.password = user, password
        try:
            client.auth("PLAIN", client.auth_plain)
            return True, "235"
        except smtplib.SMTPAuthenticationError as exc:
            return False, f"{exc.smtp_code} {exc.smtp_error.decode()}"


Login = Callable[[Running, str, str, str], tuple[bool, str]]
PROTOCOLS: dict[str, Login] = {"imap": imap_login, "pop3": pop3_login, "msa": smtp_login}
LOCKED = {"imap": "[UNAVAILABLE] too many failed logins",
          "pop3": "-ERR [LOGIN-DELAY] too many failed logins",
          "msa": "454 4.7.0 Too many failed logins"}
REDIS_DOWN = {"imap": "[UNAVAILABLE] temporary failure",
              "pop3": "-ERR [SYS/TEMP] temporary failure",
              "msa": "454 4.7.0 Temporary authentication failure"}
# a loopback source per protocol: the limits are shared by every service
SOURCES = {"imap": "127.0.3.1", "pop3": "127.0.3.2", "msa": "127.0.3.3"}


@pytest.fixture(scope="module")
def office(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Suite, dict[str, Running]]]:
    with Suite(redis_url, Path(tmp_path_factory.mktemp("limits"))) as suite:
        started = {name: suite.start(name, wait=False, **LIMITS) for name in PROTOCOLS}
        for running in started.values():
            running.process.wait_healthy(timeout=60)
        yield suite, started


def colleagues(suite: Suite) -> tuple[str, str]:
    tag = secrets.token_hex(3)
    a, b = f"phone-{tag}@office.example", f"colleague-{tag}@office.example"
    suite.add_user(a)
    suite.add_user(b)
    return a, b


def timed(fn: Callable[..., tuple[bool, str]], *args: Any) -> tuple[bool, str, float]:
    start = time.monotonic()
    ok, text = fn(*args)
    return ok, text, time.monotonic() - start


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_user_b_logs_in_at_once_while_user_a_is_delayed(
        office: tuple[Suite, dict[str, Running]], protocol: str) -> None:
    suite, services = office
    service, login, source = services[protocol], PROTOCOLS[protocol], SOURCES[protocol]
    a, b = colleagues(suite)
    first = timed(login, service, source, a, "an old password")
    second = timed(login, service, source, a, "an old password")
    assert not first[0] and not second[0]
    # 0 s, then 2 s before the check (on top of each protocol's own pause after a failure)
    assert second[2] - first[2] >= 1.8
    with ThreadPoolExecutor(1) as pool:
        delayed = pool.submit(timed, login, service, source, a, "an old password")
        time.sleep(0.3)  # a's third attempt is now waiting its 4 s
        ok, text, took = timed(login, service, source, b, PASSWORD)
        assert ok, text
        # b is not delayed at all (the margin is for a loaded machine, not for a delay)
        assert took < 2.5 and not delayed.done()
        ok, _, took = delayed.result()
    assert not ok and took - first[2] >= 3.8


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_one_bad_client_locks_only_its_own_account_at_the_office(
        office: tuple[Suite, dict[str, Running]], protocol: str) -> None:
    suite, services = office
    service, login = services[protocol], PROTOCOLS[protocol]
    source = SOURCES[protocol].replace("127.0.3.", "127.0.4.")
    a, b = colleagues(suite)
    suite.redis.set(f"{suite.prefix}authfail:pair:{pair_hash(a)}:{source}", LIMIT)  # 4 fails
    ok, text = login(service, source, a, PASSWORD)  # even the right password
    assert not ok and LOCKED[protocol] in text, text
    assert login(service, source, b, PASSWORD)[0]  # the colleague at the same address
    # a from another address (home) is not locked either
    assert login(service, source.replace("127.0.4.", "127.0.5."), a, PASSWORD)[0]


def pair_hash(account: str) -> str:
    import hashlib

    from postroom.store.addresses import login_name

    canonical = login_name(account)
    assert canonical is not None
    return hashlib.sha256(canonical.encode()).hexdigest()


def test_unlock_lets_the_locked_pair_in_again(office: tuple[Suite, dict[str, Running]]) -> None:
    import os
    import subprocess
    import sys

    suite, services = office
    source = "127.0.6.1"
    a, _ = colleagues(suite)
    suite.redis.set(f"{suite.prefix}authfail:pair:{pair_hash(a)}:{source}", LIMIT)
    assert not imap_login(services["imap"], source, a, PASSWORD)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env.update(POSTROOM_REDIS_URL=suite.redis_url, POSTROOM_REDIS_PREFIX=suite.prefix)
    subprocess.run([sys.executable, "-m", "postroom.ops.cli", "auth", "unlock", a, "--ip",
                    source], env=env, check=True, capture_output=True, timeout=60)
    assert imap_login(services["imap"], source, a, PASSWORD) == (True, "OK")


@pytest.fixture(scope="module")
def redis_away(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Suite, dict[str, Running]]]:
    """The same services with a Redis URL on a closed loopback port (the shared Redis runs on)."""
    with Suite(redis_url, Path(tmp_path_factory.mktemp("redis-away"))) as suite:
        away = {"POSTROOM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
        started = {name: suite.start(name, wait=False, **away) for name in PROTOCOLS}
        # /healthz rightly says failing (Redis is a check): wait for the listeners instead
        for running in started.values():
            wait_listening(running.tls_port)
        yield suite, started


def wait_listening(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_redis_down_gives_a_temporary_failure_not_too_many_logins(
        redis_away: tuple[Suite, dict[str, Running]], protocol: str) -> None:
    suite, services = redis_away
    a, _ = colleagues(suite)
    ok, text = PROTOCOLS[protocol](services[protocol], "127.0.0.1", a, PASSWORD)
    assert not ok
    assert REDIS_DOWN[protocol] in text, text
    assert "too many" not in text.lower()
