"""App passwords and two-factor login through real imap, pop3 and msa processes and stdlib
clients: an app password works for its protocols only, a revoked one stops working in a running
process as soon as the revocation is announced (its cached login dropped), and with two-factor
login on the main password is refused with a text that says an app password is needed."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postroom.auth import totp as totp_codes
from postroom.auth.passwords import hash_password
from postroom.queue import authevents
from postroom.store import apppasswords, totp
from postroom.store.addresses import login_name
from tests.integration.test_login_limits import imap_login, pop3_login, smtp_login
from tests.support.redisdb import wait_until
from tests.support.suite import PASSWORD, Running, Suite

pytestmark = pytest.mark.slow

# no delays or locks in the way: these tests fail on purpose, the limits are tested elsewhere
LIMITS = {"POSTROOM_AUTH_FAIL_LIMIT": "1000", "POSTROOM_AUTH_ADDRESS_FAIL_LIMIT": "10000",
          "POSTROOM_AUTH_DELAY_MAX": "0"}
Login = Callable[[Running, str, str, str], tuple[bool, str]]
LOGINS: dict[str, Login] = {"imap": imap_login, "pop3": pop3_login, "msa": smtp_login}
PROTOCOL = {"imap": "imap", "pop3": "pop3", "msa": "submission"}
SOURCE = "127.0.0.1"
# the services that cache verified logins (pop3 checks the store at every login)
CACHING = ("imap", "msa")


@pytest.fixture(scope="module")
def services(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Suite, dict[str, Running]]]:
    with Suite(redis_url, Path(tmp_path_factory.mktemp("apppw"))) as suite:
        started = {name: suite.start(name, wait=False, **LIMITS) for name in LOGINS}
        for running in started.values():
            running.process.wait_healthy(timeout=60)
        for name in CACHING:  # the invalidation listener is subscribed (it empties the cache)
            wait_until(lambda n=name: subscribed(started[n]), timeout=30, interval=0.1)
        yield suite, started


def subscribed(service: Running) -> bool:
    status, body = service.process.get("/metrics")
    return status == 200 and re.search(
        rb'auth_cache_invalidations_total\{[^}]*reason="resubscribed"[^}]*\} [1-9]',
        body) is not None


def account(suite: Suite) -> str:
    address = f"dev-{secrets.token_hex(3)}@apppw.example"
    suite.add_user(address)
    return address


def app_password(suite: Suite, address: str, name: str,
                 protocols: list[str] | None = None) -> str:
    return str(suite.db.run_sync(apppasswords.create, address, name, protocols,
                                 hash_fn=lambda p: hash_password(p, ln=4)))


def test_an_app_password_logs_in_only_for_its_protocol(
        services: tuple[Suite, dict[str, Running]]) -> None:
    suite, running = services
    address = account(suite)
    imap_only = app_password(suite, address, "mail app", ["imap"])
    assert imap_login(running["imap"], SOURCE, address, imap_only) == (True, "OK")
    assert not pop3_login(running["pop3"], SOURCE, address, imap_only)[0]
    refused = smtp_login(running["msa"], SOURCE, address, imap_only)
    assert not refused[0] and refused[1].startswith("535 5.7.8"), refused
    every = app_password(suite, address, "laptop")
    for name, login in LOGINS.items():
        assert login(running[name], SOURCE, address, every)[0], name
    [laptop] = [i for i in suite.db.run_sync(apppasswords.list_app_passwords, address)
                if i.name == "laptop"]
    assert laptop.last_used_at is not None and laptop.last_used_ip == SOURCE


@pytest.mark.parametrize("name", CACHING)
def test_a_revoked_app_password_stops_working_once_announced(
        services: tuple[Suite, dict[str, Running]], name: str) -> None:
    suite, running = services
    service, login = running[name], LOGINS[name]
    address = account(suite)
    secret = app_password(suite, address, "tablet", [PROTOCOL[name]])
    assert login(service, SOURCE, address, secret)[0]
    assert suite.db.run_sync(apppasswords.revoke, address, "tablet")
    # not yet announced: the process still has the login cached (the TTL is the fallback)
    assert login(service, SOURCE, address, secret)[0]
    revoked_at = time.monotonic()
    authevents.publish(suite.redis, suite.prefix, address)
    time.sleep(0.3)
    ok, text = login(service, SOURCE, address, secret)
    assert not ok, text
    assert time.monotonic() - revoked_at < 5  # seconds, not the cache's minute


def test_pop3_refuses_a_revoked_app_password_at_once(
        services: tuple[Suite, dict[str, Running]]) -> None:
    suite, running = services
    address = account(suite)
    secret = app_password(suite, address, "old phone", ["pop3"])
    assert pop3_login(running["pop3"], SOURCE, address, secret)[0]
    suite.db.run_sync(apppasswords.revoke, address, "old phone")
    assert not pop3_login(running["pop3"], SOURCE, address, secret)[0]


def turn_on_two_factor(suite: Suite, address: str) -> None:
    secret, _ = suite.db.run_sync(totp.begin_totp, address)
    code = totp_codes.code_at_step(secret, totp_codes.step_at(time.time()))
    suite.db.run_sync(totp.enable_totp, address, code)
    authevents.publish(suite.redis, suite.prefix, address)


REFUSED = {"imap": "[AUTHENTICATIONFAILED] app password required: two-factor login is on",
           "pop3": "-ERR [AUTH] app password required: two-factor login is on",
           "msa": "535 5.7.8 Application password required: two-factor login is on"}


def test_with_two_factor_on_only_app_passwords_log_in_and_the_refusal_says_why(
        services: tuple[Suite, dict[str, Running]]) -> None:
    suite, running = services
    address = account(suite)
    secret = app_password(suite, address, "desktop")
    for name, login in LOGINS.items():  # the main password works, and is cached
        assert login(running[name], SOURCE, address, PASSWORD)[0], name
    turn_on_two_factor(suite, address)
    time.sleep(0.3)
    for name, login in LOGINS.items():
        ok, text = login(running[name], SOURCE, address, PASSWORD)
        assert not ok and REFUSED[name] in text, (name, text)
    # each refusal counted as a failed login of that account from that client
    canonical = login_name(address)
    assert canonical is not None
    pair = hashlib.sha256(canonical.encode()).hexdigest()
    assert int(suite.redis.get(f"{suite.prefix}authfail:pair:{pair}:{SOURCE}") or 0) == 3
    for name, login in LOGINS.items():
        assert login(running[name], SOURCE, address, secret)[0], name
