"""`postroom relay`: the transport map from the operator's side, and `relay test`'s answers."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.cli import run_in_process


@pytest.fixture
def cli(clean_db):
    def run(*args: str, env: dict[str, str] | None = None,
            ok: bool = True) -> subprocess.CompletedProcess[str]:
        # in this process (tests/support/cli.py): a process start costs a second or more
        result = run_in_process(*args, env={"POSTROOM_DATABASE_URL": clean_db, **(env or {})})
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    return run


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_set_list_test_remove(cli, tmp_path):
    password = tmp_path / "pw"
    password.write_text("secret\n")
    cli("domain", "add", "home.test")
    cli("relay", "set", ".partner.test", "[smtp.partner.test]:465", "--tls", "tls",
        "--user", "me@home.test", "--password-file", str(password))
    cli("relay", "set", "b.partner.test", "relay.partner.test:587")
    rows = json.loads(cli("relay", "list", "--json").stdout)
    assert [(r["domain"], r["nexthop"], r["tls"], r["username"], r["password_ref"])
            for r in rows] == [
        (".partner.test", "[smtp.partner.test]:465", "tls", "me@home.test", str(password)),
        ("b.partner.test", "relay.partner.test:587", "starttls", None, None)]
    assert "secret" not in cli("relay", "list").stdout
    relayhost = {"POSTROOM_RELAY_HOST": "[smarthost.test]:587"}
    # exact entry, then the parent entry, then the relay host, then a local domain
    assert "transport:b.partner.test -> relay.partner.test:587 (MX lookup of " \
           "relay.partner.test)" in cli("relay", "test", "x@b.partner.test", env=relayhost).stdout
    assert "transport:.partner.test -> [smtp.partner.test]:465 (no MX lookup) tls=tls " \
           "user=me@home.test" in cli("relay", "test", "x@a.b.partner.test").stdout
    assert "relayhost -> [smarthost.test]:587" in cli("relay", "test", "x@partner.test",
                                                      env=relayhost).stdout
    assert "by MX of partner.test" in cli("relay", "test", "x@partner.test").stdout
    assert "local domain" in cli("relay", "test", "x@home.test").stdout
    cli("relay", "remove", ".partner.test")
    assert len(json.loads(cli("relay", "list", "--json").stdout)) == 1


def test_bad_entries_are_refused_in_one_line(cli):
    assert "missing ']'" in _one_line_error(cli("relay", "set", "x.test", "[smtp", ok=False))
    assert "only sent under TLS" in _one_line_error(cli(
        "relay", "set", "x.test", "[smtp.x.test]:25", "--tls", "none", "--user", "u",
        "--password-file", "/run/secrets/pw", ok=False))
    assert "go together" in _one_line_error(cli("relay", "set", "x.test", "[smtp.x.test]",
                                                "--user", "u", ok=False))
    assert "no relay transport" in _one_line_error(cli("relay", "remove", "x.test", ok=False))
    assert json.loads(cli("relay", "list", "--json").stdout) == []
