"""`postroom token` and the console-access parts of `postroom user`, through the CLI's entry
point (in this process)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import pytest
from sqlalchemy import create_engine, text

from postroom.store import webaccess
from postroom.store.db import Database
from tests.support.cli import run_in_process

PASSWORD = "correct horse battery\n"


@pytest.fixture
def cli(clean_db):
    def run(*args: str, stdin: str | None = None,
            ok: bool = True) -> subprocess.CompletedProcess[str]:
        # in this process (tests/support/cli.py): a process start costs a second or more
        result = run_in_process(*args, stdin=stdin, env={"POSTROOM_DATABASE_URL": clean_db})
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    return run


@pytest.fixture
def store(clean_db):
    db = Database(clean_db, pool_size=1)
    try:
        yield db
    finally:
        db.dispose()


def _error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("postroom: error: ")
    return line


def _scalar(url: str, sql: str) -> object:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def test_token_create_prints_the_secret_once_and_it_works(cli, store, clean_db):
    cli("domain", "add", "example.org")
    out = cli("token", "create", "shop", "--domain", "Example.ORG").stdout
    [secret] = re.findall(r"^prt_[A-Za-z0-9_-]{43}$", out, re.M)
    assert "will not be shown again" in out
    principal = store.run_sync(webaccess.principal_for_token, secret)
    assert principal.domains == {"example.org"} and not principal.is_admin
    assert _scalar(clean_db, "SELECT token_sha256 FROM api_tokens") == \
        hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in cli("token", "list").stdout


def test_token_list_and_revoke(cli, store):
    secret = re.search(r"prt_\S+", cli("token", "create", "ci").stdout).group(0)
    table = cli("token", "list").stdout
    assert re.search(r"^ci\s+\(all\)\s+active", table, re.M)
    cli("token", "revoke", "ci")
    [row] = json.loads(cli("token", "list", "--json").stdout)
    assert row["name"] == "ci" and row["domain"] is None and row["revoked_at"]
    assert store.run_sync(webaccess.principal_for_token, secret) is None
    assert "no token ci to revoke" in _error(cli("token", "revoke", "ci", ok=False))


@pytest.mark.parametrize(("args", "needle"), [
    (("token", "create", "x", "--domain", "nowhere.org"), "unknown domain nowhere.org"),
    (("token", "create", "bad name"), "token name"),
])
def test_refused_token_creations_are_one_line(cli, args, needle):
    assert needle in _error(cli(*args, ok=False))


def test_a_duplicate_token_name_is_one_line(cli):
    cli("token", "create", "ci")
    assert "token ci already exists" in _error(cli("token", "create", "ci", ok=False))


def test_user_add_admin_and_user_admin_show_in_user_list(cli):
    cli("domain", "add", "example.org")
    assert "as a global admin" in cli("user", "add", "boss@example.org", "--admin",
                                      stdin=PASSWORD).stdout
    cli("user", "add", "alice@example.org", stdin=PASSWORD)
    listed = {u["address"]: u["is_admin"] for u in json.loads(cli("user", "list", "--json").stdout)}
    assert listed == {"boss@example.org": True, "alice@example.org": False}
    cli("user", "admin", "alice@example.org")
    cli("user", "admin", "boss@example.org", "--off")
    table = cli("user", "list").stdout.splitlines()
    assert "ADMIN" in table[0]
    assert re.search(r"^alice@example.org\s+True\s+yes", "\n".join(table), re.M)
    assert re.search(r"^boss@example.org\s+True\s+(None|\d)", "\n".join(table), re.M)
    assert "no user nobody@example.org" in _error(
        cli("user", "admin", "nobody@example.org", ok=False))


def test_user_manager_adds_lists_and_removes(cli):
    cli("domain", "add", "example.org")
    cli("domain", "add", "shop.org")
    cli("user", "add", "alice@example.org", stdin=PASSWORD)
    cli("user", "manager", "alice@example.org", "shop.org")
    cli("user", "manager", "alice@example.org", "example.org")
    assert json.loads(cli("user", "managers", "--json").stdout) == [
        {"address": "alice@example.org", "domain": "example.org"},
        {"address": "alice@example.org", "domain": "shop.org"}]
    assert "shop.org" in cli("user", "managers", "shop.org").stdout
    cli("user", "manager", "alice@example.org", "shop.org", "--remove")
    assert cli("user", "managers", "shop.org").stdout == ""
    assert "does not manage" in _error(
        cli("user", "manager", "alice@example.org", "shop.org", "--remove", ok=False))
    assert "unknown domain" in _error(
        cli("user", "manager", "alice@example.org", "nowhere.org", ok=False))


def _session_of(store, address):
    from postroom.store import users

    user = store.run_sync(users.get_user, address)
    secret, _ = store.run_sync(webaccess.create_web_session, user.id, 3600)
    return secret


def test_passwd_and_disable_end_the_users_web_sessions(cli, store):
    cli("domain", "add", "example.org")
    cli("user", "add", "alice@example.org", "--admin", stdin=PASSWORD)
    secret = _session_of(store, "alice@example.org")
    assert store.run_sync(webaccess.web_session, secret, 600) is not None
    assert "sessions ended" in cli("user", "passwd", "alice@example.org",
                                   stdin="another long password\n").stdout
    assert store.run_sync(webaccess.web_session, secret, 600) is None
    secret = _session_of(store, "alice@example.org")
    cli("user", "disable", "alice@example.org")
    cli("user", "enable", "alice@example.org")
    assert store.run_sync(webaccess.web_session, secret, 600) is None
    assert store.run_sync(webaccess.web_session, _session_of(store, "alice@example.org"),
                          600) is not None


def test_removing_a_user_ends_their_web_sessions(cli, store, clean_db):
    cli("domain", "add", "example.org")
    cli("user", "add", "alice@example.org", stdin=PASSWORD)
    _session_of(store, "alice@example.org")
    cli("user", "remove", "alice@example.org")
    assert _scalar(clean_db, "SELECT count(*) FROM web_sessions") == 0
