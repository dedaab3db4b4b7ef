"""DKIM keys: pending until DNS serves their record, then active; rotate and retire.

Against a real authoritative DNS server on loopback (tests/support/dns.py) and
the operator's CLI as a subprocess; docs/msa.md, "DKIM key lifecycle".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from postroom.mailauth.dnsrecords import dkim_txt
from postroom.ops.dnscheck import dkim_public_key
from postroom.store import dkim

HOSTNAME = "mx.example.org"


@pytest.fixture
def cli(clean_db, dns_server):
    def run(*args: str, ok: bool | None = True) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
        environ.update({"POSTROOM_DATABASE_URL": clean_db, "POSTROOM_HOSTNAME": HOSTNAME,
                        "POSTROOM_DNS_TIMEOUT": "2s", **dns_server.env})
        done = subprocess.run([sys.executable, "-m", "postroom.ops.cli", *args],
                              capture_output=True, text=True, env=environ, timeout=120)
        if ok is not None:
            assert (done.returncode == 0) == ok, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        return done

    return run


def states(cli) -> dict[str, tuple[str, str]]:
    rows = json.loads(cli("dkim", "list", "example.org", "--json").stdout)
    return {r["selector"]: (r["state"], r["replaces"]) for r in rows}


def publish_base(dns_server) -> None:
    dns_server.load({
        "example.org": {"MX": [(10, HOSTNAME)], "TXT": ["v=spf1 mx -all"]},
        "_dmarc.example.org": {"TXT": ["v=DMARC1; p=none; rua=mailto:postmaster@example.org"]},
    })


def publish_key(dns_server, database, selector: str) -> None:
    [key] = [k for k in database.run_sync(dkim.list_keys, "example.org")
             if k.selector == selector]
    dns_server.set_records(f"{selector}._domainkey.example.org", "TXT",
                           [dkim_txt({"algorithm": key.algorithm,
                                      "public_key_b64": key.public_key_b64})])


def signing(database) -> list[str]:
    return [k.selector for k in database.run_sync(dkim.active_keys, "example.org")]


def test_dkim_public_key_parses_a_published_record():
    assert dkim_public_key("v=DKIM1; k=ed25519; p=AB CD\tEF") == "ABCDEF"
    assert dkim_public_key("k=rsa;p=XYZ") == "XYZ"
    assert dkim_public_key("v=spf1 -all") is None
    assert dkim_public_key("v=DKIM2; p=XYZ") is None
    assert dkim_public_key("v=DKIM1; p=" + "A" * 20000) is None


def test_generated_keys_are_pending_until_dns_check_sees_their_record(cli, dns_server,
                                                                     database):
    cli("domain", "add", "example.org")
    done = cli("dkim", "generate", "example.org", "--algorithm", "ed25519", "--selector", "s1")
    assert "pending (s1)" in done.stderr and "postroom dns example.org --check" in done.stderr
    assert states(cli) == {"s1": ("pending", "")}
    assert signing(database) == []
    # `postroom dns` prints the pending key's record: it must be published
    assert "s1._domainkey.example.org." in cli("dns", "example.org").stdout

    publish_base(dns_server)
    check = cli("dns", "example.org", "--check", ok=False)
    assert re.search(r"^ok\s+MX\s", check.stdout, re.M)
    assert re.search(r"^FAIL\s+DKIM s1\s.*no DKIM record: the key stays pending", check.stdout,
                     re.M)
    assert states(cli)["s1"][0] == "pending"

    publish_key(dns_server, database, "s1")
    check = cli("dns", "example.org", "--check")
    assert "DKIM key s1 of example.org is now active" in check.stdout
    assert states(cli) == {"s1": ("active", "")}
    assert signing(database) == ["s1"]


def test_a_different_published_key_does_not_activate(cli, dns_server, database):
    cli("domain", "add", "example.org")
    cli("dkim", "generate", "example.org", "--algorithm", "ed25519", "--selector", "s1")
    cli("dkim", "generate", "example.org", "--algorithm", "ed25519", "--selector", "s2")
    publish_base(dns_server)
    publish_key(dns_server, database, "s1")
    # s2's name serves s1's key (a copy-paste slip)
    [s1] = [k for k in database.run_sync(dkim.list_keys, "example.org") if k.selector == "s1"]
    dns_server.set_records("s2._domainkey.example.org", "TXT",
                           [f"v=DKIM1; k=ed25519; p={s1.public_key_b64}"])
    check = cli("dns", "example.org", "--check", ok=False)
    assert re.search(r"^FAIL\s+DKIM s2\s.*a different key is published", check.stdout, re.M)
    assert states(cli) == {"s1": ("active", ""), "s2": ("pending", "")}
    refused = cli("dkim", "activate", "example.org", "s2", ok=False)
    assert refused.stderr.startswith("postroom: error: s2._domainkey.example.org: a different")
    assert "--force" in refused.stderr
    cli("dkim", "retire", "example.org", "s2")
    assert states(cli)["s2"][0] == "retired"


def test_rotate_keeps_the_old_key_signing_until_the_new_one_is_published(cli, dns_server,
                                                                        database):
    cli("domain", "add", "example.org")
    cli("dkim", "generate", "example.org", "--algorithm", "ed25519", "--selector", "old")
    publish_base(dns_server)
    publish_key(dns_server, database, "old")
    cli("dns", "example.org", "--check")
    assert signing(database) == ["old"]

    rotated = cli("dkim", "rotate", "example.org")
    [new] = [s for s, (state, _r) in states(cli).items() if state == "pending"]
    assert f"{new}._domainkey.example.org." in rotated.stdout
    assert states(cli)[new] == ("pending", "old")
    assert signing(database) == ["old"]
    again = cli("dkim", "rotate", "example.org", ok=False)
    assert "already has a pending successor" in again.stderr

    # not yet published: activation without --force is refused, the old key still signs
    cli("dkim", "activate", "example.org", new, ok=False)
    assert signing(database) == ["old"]

    publish_key(dns_server, database, new)
    check = cli("dns", "example.org", "--check")
    assert f"DKIM key {new} of example.org is now active" in check.stdout
    assert f"DKIM key old of example.org retired (replaced by {new})" in check.stdout
    assert signing(database) == [new]
    assert states(cli)["old"][0] == "retired"
    # the old record is still there: the check says when to take it away, and passes
    later = cli("dns", "example.org", "--check")
    assert re.search(r"^ok\s+DKIM old\s.*retired; record still published", later.stdout, re.M)


def test_retire_and_forced_activation(cli, database):
    cli("domain", "add", "example.org")
    cli("dkim", "generate", "example.org", "--algorithm", "both")
    selectors = sorted(states(cli))
    # no DNS at all for example.org: only --force activates
    for selector in selectors:
        done = cli("dkim", "activate", "example.org", selector, "--force")
        assert "is active" in done.stdout
    assert sorted(signing(database)) == selectors
    cli("dkim", "retire", "example.org", selectors[0])
    assert signing(database) == selectors[1:]
    missing = cli("dkim", "retire", "example.org", "nope", ok=False)
    assert missing.stderr.strip() == "postroom: error: no DKIM selector nope for example.org"
    nothing = cli("dkim", "rotate", "other.example", ok=False)
    assert "unknown domain other.example" in nothing.stderr


def test_rotate_without_an_active_key_says_how_to_start(cli):
    cli("domain", "add", "example.org")
    done = cli("dkim", "rotate", "example.org", ok=False)
    assert "no active DKIM key to rotate" in done.stderr
    assert "postroom dkim generate example.org" in done.stderr


def test_a_failing_lookup_is_a_fail_and_activates_nothing(cli, dns_server, database):
    cli("domain", "add", "example.org")
    cli("dkim", "generate", "example.org", "--algorithm", "ed25519", "--selector", "s1")
    publish_base(dns_server)
    publish_key(dns_server, database, "s1")
    dns_server.servfail("s1._domainkey.example.org")
    check = cli("dns", "example.org", "--check", ok=False)
    assert re.search(r"^FAIL\s+DKIM s1\s.*lookup failed", check.stdout, re.M)
    assert states(cli)["s1"][0] == "pending"
    dns_server.heal("s1._domainkey.example.org")
    cli("dns", "example.org", "--check")
    assert states(cli)["s1"][0] == "active"
