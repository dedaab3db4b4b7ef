"""The operator CLI against a real database: happy paths and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import dkim
import pytest

from tests.support.cli import run_as_process, run_in_process


def _runner(run: Callable[..., subprocess.CompletedProcess[str]],
            database_url: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    def cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = run(*args, stdin=stdin, env={"POSTROOM_DATABASE_URL": database_url, **(env or {})})
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    return cli


@pytest.fixture
def cli(clean_db):
    """`postroom ...` through the CLI's entry point in this process (a process start costs a
    second or more, and most tests here run many commands); its CompletedProcess."""
    return _runner(run_in_process, clean_db)


@pytest.fixture
def cli_process(clean_db):
    """`postroom ...` as a real process: for tests whose subject is the process (stdin pipe)."""
    return _runner(run_as_process, clean_db)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("postroom: error: ")
    return lines[0]


def test_help_explains_every_command():
    out = subprocess.run([sys.executable, "-m", "postroom.ops.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("serve", "up", "db", "domain", "user", "alias", "dkim", "dns", "queue"):
        assert command in out


def test_domain_user_and_alias_round_trip(cli):
    cli("domain", "add", "Example.ORG")
    cli("user", "add", "alice@example.org", stdin="correct horse\n")
    cli("alias", "add", "sales@example.org", "alice@example.org")
    domains = json.loads(cli("domain", "list", "--json").stdout)
    # postmaster@ and abuse@ came with the first user (docs/mda.md, "Role addresses")
    assert [(d["name"], d["users"], d["aliases"]) for d in domains] == [("example.org", 1, 3)]
    users = json.loads(cli("user", "list", "--json").stdout)
    assert [u["address"] for u in users] == ["alice@example.org"]
    assert "postmaster@example.org" in cli("alias", "list").stdout
    cli("alias", "remove", "sales@example.org")
    cli("user", "remove", "alice@example.org")
    cli("domain", "remove", "example.org")
    assert json.loads(cli("domain", "list", "--json").stdout) == []


def test_the_password_comes_from_stdin_and_is_stored_hashed(cli_process, clean_db):
    from sqlalchemy import create_engine, text

    # real processes reading a real pipe: the round trip through `python -m postroom.ops.cli`
    cli_process("domain", "add", "example.org")
    cli_process("user", "add", "bob@example.org", stdin="s3cret-pass-for-bob\n")
    cli_process("user", "passwd", "bob@example.org", stdin="n3w-pass-for-bob\n")
    engine = create_engine(clean_db)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM users")).scalar_one()
    engine.dispose()
    assert "n3w-pass-for-bob" not in stored and stored.startswith("$scrypt$")


def test_dkim_generate_prints_records_that_verify_a_signature(cli, clean_db):
    from sqlalchemy import create_engine, text

    cli("domain", "add", "example.org")
    out = cli("dkim", "generate", "example.org").stdout
    assert "k=rsa" in out and "k=ed25519" in out
    listed = cli("dkim", "list", "example.org", "--json").stdout
    assert "PRIVATE KEY" not in listed
    engine = create_engine(clean_db)
    with engine.connect() as conn:
        selector, pem = conn.execute(text(
            "SELECT selector, private_key_pem FROM dkim_keys WHERE algorithm = 'rsa-sha256'"
        )).one()
    engine.dispose()
    # the printed TXT record, joined from its strings, verifies what the stored key signs
    printed = out.split(f"{selector}._domainkey")[1].split(")")[0]
    record = "".join(printed.split('"')[1::2])
    message = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"
    signature = dkim.sign(message, selector.encode(), b"example.org", pem.encode(),
                          include_headers=[b"from", b"to", b"subject"])
    assert dkim.verify(signature + message, dnsfunc=lambda name, timeout=5: record.encode())


def test_dns_prints_every_record(cli):
    cli("domain", "add", "example.org")
    cli("dkim", "generate", "example.org", "--algorithm", "ed25519")
    out = cli("dns", "example.org", env={"POSTROOM_HOSTNAME": "mx.example.org"}).stdout
    for needle in ("IN MX 10 mx.example.org.", "v=spf1", "_domainkey.example.org.",
                   "_dmarc.example.org.", "_mta-sts.example.org.", "_smtp._tls.example.org.",
                   "_submissions._tcp.example.org. IN SRV 0 1 465 mx.example.org.",
                   "_imaps._tcp.example.org. IN SRV 0 1 993 mx.example.org.",
                   "autoconfig.example.org. IN CNAME mx.example.org.",
                   "autodiscover.example.org. IN CNAME mx.example.org."):
        assert needle in out


def test_queue_commands_show_retry_and_delete(cli, clean_db):
    from sqlalchemy.orm import Session

    from postroom.store import spool
    from postroom.store.db import Database

    db = Database(clean_db, pool_size=1)
    qid = db.run_sync(lambda s: spool.create_spool(
        s, kind="submission", mail_from="a@example.org",
        recipients=[("b@example.net", "outbound", None, None)], message=b"Subject: x\r\n\r\nx\r\n"))
    db.dispose()
    assert qid in cli("queue", "list").stdout
    shown = json.loads(cli("queue", "show", qid).stdout)
    assert shown["recipients"][0]["address"] == "b@example.net"
    assert "1 recipient" in cli("queue", "retry", qid).stdout
    cli("queue", "delete", qid)
    assert _one_line_error(cli("queue", "show", qid, ok=False))
    del Session


@pytest.mark.parametrize(("args", "needle"), [
    (("user", "add", "carol@nowhere.example"), "nowhere.example"),
    (("domain", "remove", "nowhere.example"), "nowhere.example"),
    (("user", "add", "not an address"), "address"),
])
def test_refused_operations_are_one_line(cli, args, needle):
    line = _one_line_error(cli(*args, stdin="a long enough password\n", ok=False))
    assert needle in line


def test_a_duplicate_is_one_line(cli):
    cli("domain", "add", "example.org")
    assert "example.org" in _one_line_error(cli("domain", "add", "example.org", ok=False))


def test_an_empty_password_is_refused(cli):
    cli("domain", "add", "example.org")
    assert "empty password" in _one_line_error(
        cli("user", "add", "dave@example.org", stdin="\n", ok=False))


def test_a_missing_database_url_names_the_variable():
    environ = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    result = subprocess.run([sys.executable, "-m", "postroom.ops.cli", "domain", "list"],
                            capture_output=True, text=True, env=environ, timeout=60)
    assert "POSTROOM_DATABASE_URL" in _one_line_error(result)
    assert result.returncode == 2


def test_an_unreachable_database_is_one_line():
    environ = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    environ["POSTROOM_DATABASE_URL"] = "postgresql+psycopg2://postgres@127.0.0.1:1/none"
    result = subprocess.run([sys.executable, "-m", "postroom.ops.cli", "domain", "list"],
                            capture_output=True, text=True, env=environ, timeout=60)
    assert "database" in _one_line_error(result)


def test_an_out_of_date_schema_is_refused_with_the_fix(cli):
    from tests.support.db import create_test_database, drop_test_database

    empty = create_test_database("postroom_cli_")
    try:
        line = _one_line_error(cli("domain", "list", env={"POSTROOM_DATABASE_URL": empty},
                                   ok=False))
        assert "postroom db upgrade" in line
        cli("db", "upgrade", env={"POSTROOM_DATABASE_URL": empty})
        assert "current" in cli("db", "check", env={"POSTROOM_DATABASE_URL": empty}).stdout
    finally:
        drop_test_database(empty)


def test_rules_set_converts_into_the_active_sieve_script_rules(cli, tmp_path):
    cli("domain", "add", "example.org")
    cli("user", "add", "erin@example.org", stdin="erin-long-password\n")
    rules = tmp_path / "rules.json"
    rules.write_text('[{"if": {"header": "subject", "contains": "[dev]"}, '
                     '"then": [{"fileinto": "Archive"}]}]')
    done = cli("rules", "set", "erin@example.org", str(rules))
    assert "active Sieve script 'rules'" in done.stdout
    assert "replaced by `postroom sieve`" in done.stderr
    shown = cli("rules", "show", "erin@example.org").stdout
    assert 'if header :contains "subject" "[dev]" {' in shown
    assert cli("sieve", "show", "erin@example.org").stdout == shown
    cli("rules", "clear", "erin@example.org")
    assert cli("sieve", "list", "erin@example.org", "--json").stdout.strip() == "[]"


def test_sieve_scripts_are_put_listed_activated_and_deleted(cli, tmp_path):
    cli("domain", "add", "example.org")
    cli("user", "add", "gil@example.org", stdin="gil-long-password\n")
    script = tmp_path / "main.sieve"
    script.write_text('require "fileinto";\nif exists "list-id" { fileinto "Lists"; }\n')
    cli("sieve", "put", "gil@example.org", "main", str(script), "--activate")
    cli("sieve", "put", "gil@example.org", "spare", "-", stdin="keep;\n")
    listed = json.loads(cli("sieve", "list", "gil@example.org", "--json").stdout)
    assert [(r["name"], r["active"]) for r in listed] == [("main", True), ("spare", False)]
    assert cli("sieve", "check", "gil@example.org").stdout.strip() == "valid"
    assert cli("sieve", "check", "--file", "-", stdin="keep;").stdout.strip() == "valid"
    line = _one_line_error(cli("sieve", "delete", "gil@example.org", "main", ok=False))
    assert "active" in line
    cli("sieve", "activate", "gil@example.org", "spare")
    cli("sieve", "delete", "gil@example.org", "main")
    cli("sieve", "deactivate", "gil@example.org")
    listed = json.loads(cli("sieve", "list", "gil@example.org", "--json").stdout)
    assert [(r["name"], r["active"]) for r in listed] == [("spare", False)]


def test_an_invalid_sieve_script_is_refused_with_its_line(cli):
    cli("domain", "add", "example.org")
    cli("user", "add", "hal@example.org", stdin="hal-long-password\n")
    line = _one_line_error(cli("sieve", "put", "hal@example.org", "bad", "-",
                               stdin='keep;\nfileinto "x";', ok=False))
    assert "line 2" in line and "fileinto" in line
    line = _one_line_error(cli("sieve", "put", "hal@example.org", "big", "-", stdin="keep;" * 20,
                               env={"POSTROOM_SIEVE_MAX_SCRIPT_BYTES": "50"}, ok=False))
    assert "more than 50" in line
    cli("sieve", "put", "hal@example.org", "one", "-", stdin="keep;",
        env={"POSTROOM_SIEVE_MAX_SCRIPTS": "1"})
    line = _one_line_error(cli("sieve", "put", "hal@example.org", "two", "-", stdin="keep;",
                               env={"POSTROOM_SIEVE_MAX_SCRIPTS": "1"}, ok=False))
    assert "POSTROOM_SIEVE_MAX_SCRIPTS=1" in line


def test_invalid_rules_say_where_in_one_line(cli):
    cli("domain", "add", "example.org")
    cli("user", "add", "fay@example.org", stdin="fay-long-password\n")
    line = _one_line_error(cli("rules", "set", "fay@example.org", "-",
                               stdin='[{"then": [{"fileinto": ""}]}]', ok=False))
    assert "fileinto" in line


# --- weak passwords, quotas, alias loops, queue filters, auth unlock (issue 24)


@pytest.mark.parametrize(("action", "password", "needle"), [
    ("add", "short-pw1", "at least 12 characters"),
    ("add", "QWERTY123456", "common passwords"),
    ("add", "grace@example.org", "own name"),
    ("passwd", "2short", "at least 12 characters"),
    ("passwd", "1q2w3e4r5t6y", "common passwords"),
])
def test_weak_passwords_are_refused_wherever_one_is_set(cli, action, password, needle):
    cli("domain", "add", "example.org")
    if action == "passwd":
        cli("user", "add", "grace@example.org", stdin="grace's first password\n")
    line = _one_line_error(cli("user", action, "grace@example.org", stdin=password + "\n",
                               ok=False))
    assert needle in line


def test_the_minimum_length_is_a_setting(cli):
    cli("domain", "add", "example.org")
    env = {"POSTROOM_PASSWORD_MIN_LENGTH": "20"}
    assert "at least 20" in _one_line_error(
        cli("user", "add", "hal@example.org", stdin="nineteen characters\n", env=env, ok=False))
    cli("user", "add", "hal@example.org", stdin="nineteen characters\n")


def test_quotas_take_sizes_with_units(cli):
    cli("domain", "add", "example.org")
    cli("user", "add", "ivy@example.org", "--quota", "1.5G", stdin="ivy's long password\n")
    listed = json.loads(cli("user", "list", "--json").stdout)
    assert listed[0]["quota_bytes"] == 1610612736
    assert "set to 524288000 bytes" in cli("user", "quota", "ivy@example.org", "500M").stdout
    assert json.loads(cli("user", "list", "--json").stdout)[0]["quota_bytes"] == 524288000
    cli("user", "quota", "ivy@example.org", "none")
    assert json.loads(cli("user", "list", "--json").stdout)[0]["quota_bytes"] is None
    bad = cli("user", "quota", "ivy@example.org", "2X", ok=False)
    assert bad.returncode == 2 and "500M, 2G" in bad.stderr and "Traceback" not in bad.stderr


def test_an_alias_loop_is_refused_in_one_line(cli):
    cli("domain", "add", "example.org")
    assert "loop" in _one_line_error(
        cli("alias", "add", "sales@example.org", "Sales@example.org", ok=False))
    cli("alias", "add", "a@example.org", "b@example.org")
    cli("alias", "add", "b@example.org", "c@example.org")
    line = _one_line_error(cli("alias", "add", "c@example.org", "a@example.org", ok=False))
    assert "c@example.org -> a@example.org -> b@example.org -> c@example.org" in line


def test_queue_list_filters_by_address_and_state(cli, clean_db):
    from datetime import UTC, datetime, timedelta

    from postroom.store import spool
    from postroom.store.db import Database

    db = Database(clean_db, pool_size=1)

    def queue(sender: str, rcpt: str) -> str:
        return db.run_sync(lambda s: spool.create_spool(
            s, kind="submission", mail_from=sender, recipients=[(rcpt, "outbound", None, None)],
            message=b"Subject: x\r\n\r\nx\r\n"))

    to_bob = queue("alice@example.org", "bob@example.net")
    to_carol = queue("dave@example.org", "carol@example.net")
    [rcpt] = db.run_sync(spool.get_spool, to_carol).recipients
    db.run_sync(spool.mark_deferred, rcpt.id, "451 later",
                datetime.now(UTC) + timedelta(minutes=5))
    db.dispose()

    def listed(*args: str) -> list[str]:
        return [m["queue_id"] for m in json.loads(cli("queue", "list", "--json", *args).stdout)]

    assert listed("--from", "ALICE@example.org") == [to_bob]
    assert listed("--to", "carol@example.net") == [to_carol]
    assert listed("--address", "bob@example.net") == [to_bob]
    assert listed("--address", "@example.org") == [to_bob, to_carol]
    assert listed("--state", "deferred") == [to_carol]
    assert listed("--state", "queued", "--address", "@example.org") == [to_bob]
    assert listed("--state", "deferred", "--from", "alice") == []
    assert cli("queue", "list", "--state", "stuck", ok=False).returncode == 2


def test_auth_unlock_forgets_failed_logins(cli, redis_url, redis_prefix, redis_client):
    from postroom.auth.ratelimit import LoginRateLimiter

    lim = LoginRateLimiter(redis_client, redis_prefix, 3, 600.0, address_limit=100)
    for ip in ("192.0.2.1", "198.51.100.7"):
        for _ in range(3):
            lim.record_failure(ip, "bob@example.org")
    for _ in range(3):
        lim.record_failure("192.0.2.1", "carol@example.org")
    env = {"POSTROOM_REDIS_URL": redis_url, "POSTROOM_REDIS_PREFIX": redis_prefix,
           "POSTROOM_AUTH_FAIL_LIMIT": "3"}
    shown = json.loads(cli("auth", "status", "bob@example.org", "--json", env=env).stdout)
    assert [(p["client"], p["failures"], p["locked"]) for p in shown["pairs"]] == [
        ("192.0.2.1", 3, True), ("198.51.100.7", 3, True)]
    table = cli("auth", "status", "bob@example.org", "--ip", "192.0.2.1", env=env).stdout
    assert "192.0.2.1" in table and "failures from 192.0.2.1 across accounts: 6 of 200" in table
    out = cli("auth", "unlock", "bob@example.org", "--ip", "192.0.2.1", env=env).stdout
    assert "bob@example.org from 192.0.2.1" in out
    assert lim.check("192.0.2.1", "bob@example.org")
    assert not lim.check("198.51.100.7", "bob@example.org")
    assert not lim.check("192.0.2.1", "carol@example.org")
    cli("auth", "unlock", "BOB@example.org", env=env)
    assert lim.check("198.51.100.7", "bob@example.org")
    cli("auth", "unlock", "--ip", "192.0.2.1", env=env)
    assert lim.check("192.0.2.1", "carol@example.org")
    assert "IP address" in _one_line_error(cli("auth", "unlock", "--ip", "nope", env=env,
                                               ok=False))
    assert "ADDRESS" in _one_line_error(cli("auth", "unlock", env=env, ok=False))
