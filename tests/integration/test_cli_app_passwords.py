"""`postroom app-password` and `postroom user totp`, through the CLI's entry point against
PostgreSQL and Redis: the secret is printed once, lists never show it, revoking tells the running
services."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
import time

import pytest

from postroom.auth import totp as totp_codes
from postroom.queue import authevents
from postroom.queue.streams import connect
from postroom.store import apppasswords, domains, totp, users
from postroom.store.db import Database
from tests.support.cli import run_in_process

ADDRESS = "carol@example.test"


@pytest.fixture
def store(clean_db):
    db = Database(clean_db, pool_size=1)
    try:
        db.run_sync(domains.add_domain, "example.test")
        db.run_sync(users.add_user, ADDRESS, "a main password here")
        yield db
    finally:
        db.dispose()


@pytest.fixture
def prefix():
    return f"prtest:{secrets.token_hex(6)}:"


@pytest.fixture
def cli(clean_db, redis_url, prefix):
    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        # in this process (tests/support/cli.py): a process start costs a second or more
        result = run_in_process(*args, env={"POSTROOM_DATABASE_URL": clean_db,
                                            "POSTROOM_REDIS_URL": redis_url,
                                            "POSTROOM_REDIS_PREFIX": prefix})
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    return run


def test_add_prints_the_secret_once_and_it_logs_in_for_its_protocol(cli, store):
    out = cli("app-password", "add", ADDRESS, "phone", "--protocol", "imap",
              "--protocol", "submission").stdout
    [secret] = re.findall(r"^[a-z]{4}-[a-z]{4}-[a-z]{4}-[a-z]{4}$", out, re.MULTILINE)
    assert "for imap, submission" in out
    ok = store.run_sync(apppasswords.authenticate, ADDRESS, secret, protocol="imap")
    assert ok.app_password == "phone"
    assert store.run_sync(apppasswords.authenticate, ADDRESS, secret,
                          protocol="pop3").user is None
    listed = cli("app-password", "list", ADDRESS).stdout
    assert "phone" in listed and "imap,submission" in listed and secret not in listed
    [row] = json.loads(cli("app-password", "list", ADDRESS, "--json").stdout)
    assert row["protocols"] == ["imap", "submission"] and row["revoked_at"] is None


def test_revoke_announces_the_change_to_the_running_services(cli, store, redis_url, prefix):
    cli("app-password", "add", ADDRESS, "laptop")
    heard: list[str] = []
    ready, stop = threading.Event(), threading.Event()
    client = connect(redis_url)
    listener = threading.Thread(target=authevents.listen, args=(client, prefix, stop,
                                                                heard.append),
                                kwargs={"on_subscribed": ready.set, "poll": 0.1}, daemon=True)
    listener.start()
    try:
        assert ready.wait(10)
        assert "revoked" in cli("app-password", "revoke", ADDRESS, "laptop").stdout
        deadline = time.monotonic() + 10
        while not heard and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        listener.join(5)
        client.close()
    assert heard == [ADDRESS]
    [row] = json.loads(cli("app-password", "list", ADDRESS, "--json").stdout)
    assert row["revoked_at"] is not None


def test_revoking_what_is_not_there_is_an_error(cli, store):
    result = cli("app-password", "revoke", ADDRESS, "nothing", ok=False)
    assert result.returncode == 1 and "no app password nothing" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_protocol_is_bad_usage(cli, store):
    assert cli("app-password", "add", ADDRESS, "x", "--protocol", "smtp",
               ok=False).returncode == 2


def test_user_totp_shows_the_state_and_turns_it_off(cli, store):
    assert "two-factor login of carol@example.test: off" in cli("user", "totp", ADDRESS).stdout
    secret, _ = store.run_sync(totp.begin_totp, ADDRESS)
    store.run_sync(totp.enable_totp, ADDRESS,
                   totp_codes.code_at_step(secret, totp_codes.step_at(time.time())))
    assert "on; 10 recovery code(s) left" in cli("user", "totp", ADDRESS).stdout
    assert json.loads(cli("user", "totp", ADDRESS, "--json").stdout)["enabled"] is True
    assert "turned off" in cli("user", "totp", ADDRESS, "--off").stdout
    assert store.run_sync(totp.totp_status, ADDRESS).enabled is False
