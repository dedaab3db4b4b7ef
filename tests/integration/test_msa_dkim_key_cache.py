"""The msa's cache of a domain's DKIM keys keeps docs/msa.md's promise: a key change applies
to the next message.

Real `postroom serve msa` processes (real PostgreSQL and Redis), the real
CLI, smtplib. A rotation made with `postroom dkim rotate` and `activate` is
announced over Redis after its commit, and the very next message is signed
by the new keys (d= and s= read from its fields, each signature verified
against the records the CLI printed). A change nobody announced (Redis
away when the CLI ran: simulated by writing the store directly) is seen
once POSTROOM_MSA_DKIM_KEY_CACHE_TTL (made small here) has passed.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from postroom.secretbox import write_key_file
from postroom.store import dkim as dkim_store
from postroom.store import domains
from postroom.store.db import Database
from tests.integration import test_msa_service as svc
from tests.integration.test_msa_service import (
    PASSWORD,
    Domain,
    Server,
    dkim_results,
    make_account,
    message,
    msa_env,
    send,
    spooled,
    submission,
)
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, base_env
from tests.support.redisdb import delete_prefix

# the module's msa process of test_msa_service.py (announcements heard at once)
server = svc.server

FALLBACK_TTL = 1.0


def cli(server: Server, *args: str) -> str:
    """`postroom ARGS` as an operator runs it beside the running msa (same Redis, prefix)."""
    env = base_env({"POSTROOM_DATABASE_URL": server.database_url,
                    "POSTROOM_REDIS_URL": server.redis_url,
                    "POSTROOM_REDIS_PREFIX": server.prefix,
                    "POSTROOM_SECRET_KEY_FILE": server.secret_key_file})
    done = subprocess.run([sys.executable, "-m", "postroom.ops.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "were not told" not in done.stderr, done.stderr
    return done.stdout


def records(out: str) -> dict[str, bytes]:
    """The TXT records `dkim generate` / `dkim rotate` printed: {name: value}."""
    found = {}
    for match in re.finditer(r'^(\S+) IN TXT (\(.*?\)|"[^"]*")', out, re.M | re.S):
        value = "".join(re.findall(r'"([^"]*)"', match.group(2)))
        found[match.group(1).rstrip(".").lower()] = value.encode("ascii")
    return found


def signed_by(server: Server, database: Database, domain: Domain) -> list[tuple[str, str]]:
    """Submit one message (from an account of its own: the hourly limit is small); the
    (d=, s=) of each of its signatures, each verified."""
    account = make_account(database, domain.name)
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        queue_id = send(client, account.address, ["friend@remote.example"],
                        message(account.address))
    _info, data = spooled(database, queue_id)
    assert all(dkim_results(domain, data)), "a signature does not verify"
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", data)
    fields = re.findall(rb"^DKIM-Signature:(.*)$", unfolded, re.M | re.I)
    tags = [dict(re.findall(r"\b([ds])=([^;\s]+)", f.decode("ascii"))) for f in fields]
    return sorted((t["d"], t["s"]) for t in tags)


def new_domain(server: Server, database: Database) -> Domain:
    """A domain of the test's own with active keys made by the CLI."""
    name = f"kc{secrets.token_hex(4)}.example"
    database.run_sync(domains.add_domain, name)
    txt = records(cli(server, "dkim", "generate", name))
    assert len(txt) == 2
    for record in txt:
        cli(server, "dkim", "activate", name, record.split(".")[0], "--force")
    return Domain(name, txt)


def retire_all(database: Database, name: str) -> None:
    # an msa started later on the session database without this secret key must not find
    # an active key it cannot decrypt
    for key in database.run_sync(dkim_store.list_keys, name):
        database.run_sync(dkim_store.set_key_active, name, key.selector, False)


def test_a_rotation_made_with_the_cli_signs_the_very_next_message(server: Server,
                                                                  database: Database):
    domain = new_domain(server, database)
    try:
        first = signed_by(server, database, domain)
        assert [d for d, _s in first] == [domain.name, domain.name]
        # the keys are cached now: the next message does not read them
        assert signed_by(server, database, domain) == first
        rotated = records(cli(server, "dkim", "rotate", domain.name))
        assert len(rotated) == 2
        domain.dkim_txt.update(rotated)
        # pending successors do not sign yet
        assert signed_by(server, database, domain) == first
        for record in rotated:
            cli(server, "dkim", "activate", domain.name, record.split(".")[0], "--force")
        new = sorted((domain.name, record.split(".")[0]) for record in rotated)
        assert new != first
        assert signed_by(server, database, domain) == new
        # and a retirement likewise
        cli(server, "dkim", "retire", domain.name, new[0][1])
        assert signed_by(server, database, domain) == [new[1]]
    finally:
        retire_all(database, domain.name)


@pytest.fixture(scope="module")
def unannounced(database_url: str, redis_url: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An msa whose cached keys live FALLBACK_TTL seconds."""
    port, tls_port = free_port(), free_port()
    prefix = f"prtest:{secrets.token_hex(6)}:"
    secret_key_file = str(tmp_path_factory.mktemp("kc-secret") / "secret.key")
    write_key_file(secret_key_file)
    env = msa_env(database_url, redis_url, prefix, tmp_path_factory.mktemp("kc-tls"), port,
                  tls_port, POSTROOM_SECRET_KEY_FILE=secret_key_file,
                  POSTROOM_MSA_DKIM_KEY_CACHE_TTL=f"{FALLBACK_TTL:g}s")
    process = ServiceProcess("msa", env)
    process.start()
    try:
        yield Server("127.0.0.1", port, tls_port, prefix, redis_url, database_url, process,
                     secret_key_file)
    finally:
        process.close()
        client = redis.Redis.from_url(redis_url)
        try:
            delete_prefix(client, prefix)
        finally:
            client.close()


def test_a_change_never_announced_is_seen_once_the_fallback_lifetime_ends(
        unannounced: Server, database: Database):
    domain = new_domain(unannounced, database)
    try:
        first = signed_by(unannounced, database, domain)
        assert len(first) == 2
        # retired in the store with no announcement (as when Redis was away for the CLI)
        database.run_sync(dkim_store.retire_key, domain.name, first[0][1])
        # the cached entry, however fresh, is older than this once the lifetime has passed
        time.sleep(FALLBACK_TTL + 0.5)
        assert signed_by(unannounced, database, domain) == [first[1]]
    finally:
        retire_all(database, domain.name)
