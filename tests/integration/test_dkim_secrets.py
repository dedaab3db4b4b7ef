"""DKIM private keys at rest: encrypted under POSTROOM_SECRET_KEY_FILE, re-encrypted by the CLI,
opened by the msa (which refuses to start on a key it cannot decrypt, and defers mail signed
with one added later). A database of the module's own: its sealed keys must not reach the
session database other modules start msa processes on.
"""

from __future__ import annotations

import json
import os
import secrets
import smtplib
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from sqlalchemy import text

from postroom.auth.passwords import hash_password
from postroom.secretbox import DKIM_PRIVATE_KEY, Keyring, key_id, read_key_file, write_key_file
from postroom.store import dkim as dkim_store
from postroom.store import domains, users
from postroom.store.db import Database
from postroom.store.migrate import upgrade
from tests.integration.test_msa_service import PASSWORD, message, msa_env, unverified
from tests.support.db import create_test_database, drop_test_database
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, base_env


@pytest.fixture(scope="module")
def own_db() -> Iterator[str]:
    url = create_test_database("postroom_test_secrets_")
    try:
        upgrade(url)
        yield url
    finally:
        drop_test_database(url)


@pytest.fixture
def db(own_db: str) -> Iterator[Database]:
    database = Database(own_db, pool_size=1)
    database.start()

    def wipe(session: Any) -> None:
        session.execute(text("TRUNCATE dkim_keys, users, domains RESTART IDENTITY CASCADE"))

    database.run_sync(wipe)
    try:
        yield database
    finally:
        database.stop()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    """Two key files: ``current`` and ``old``."""
    made = {}
    for name in ("current", "old"):
        made[name] = str(tmp_path / f"{name}.key")
        write_key_file(made[name])
    return made


def stored_keys(db: Database) -> dict[str, str]:
    """selector -> the private key column as it is in the table (no store code in between)."""
    def read(session: Any) -> dict[str, str]:
        return dict(session.execute(text(
            "SELECT selector, private_key_pem FROM dkim_keys")).all())  # type: ignore[arg-type]
    return db.run_sync(read)


def cli(own_db: str, *args: str, ok: bool = True,
        **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "postroom.ops.cli", *args], capture_output=True,
                          text=True, timeout=120,
                          env=base_env({"POSTROOM_DATABASE_URL": own_db, **env}))
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("postroom: error: "), done.stderr
    return lines[0]


# --- the store and the CLI


def test_a_key_generated_with_a_secret_key_is_encrypted_in_its_row(db, keys):
    ring = Keyring(read_key_file(keys["current"]))
    db.run_sync(domains.add_domain, "example.org")
    info = db.run_sync(dkim_store.generate_key, "example.org", "ed25519-sha256", "e1",
                       keyring=ring)
    row = stored_keys(db)["e1"]
    assert row.startswith(f"enc:v1:{ring.current_id}:") and "PRIVATE KEY" not in row
    assert info.encrypted and info.key_id == ring.current_id
    pem = ring.open(row, DKIM_PRIVATE_KEY)
    assert "PRIVATE KEY" in pem
    # the decrypted key is the one whose public half was stored for DNS
    from postroom.mailauth.dkimsign import dns_txt_value
    assert dns_txt_value(pem, "ed25519-sha256").endswith(info.public_key_b64)


def test_cli_generate_encrypts_and_list_shows_the_key_id_never_the_key(own_db, db, keys):
    cli(own_db, "domain", "add", "example.org")
    out = cli(own_db, "dkim", "generate", "example.org",
              POSTROOM_SECRET_KEY_FILE=keys["current"]).stdout
    assert "k=rsa" in out and "k=ed25519" in out
    kid = key_id(read_key_file(keys["current"]))
    assert all(v.startswith(f"enc:v1:{kid}:") for v in stored_keys(db).values())
    listed = cli(own_db, "dkim", "list", "--json").stdout
    assert "PRIVATE KEY" not in listed and "enc:v1" not in listed
    assert {row["encrypted"] for row in json.loads(listed)} == {kid}


def test_cli_generate_without_a_secret_key_warns_and_stores_plaintext(own_db, db):
    cli(own_db, "domain", "add", "example.org")
    done = cli(own_db, "dkim", "generate", "example.org", "--algorithm", "ed25519")
    assert "POSTROOM_SECRET_KEY_FILE is not set" in done.stderr
    assert all("PRIVATE KEY" in v for v in stored_keys(db).values())
    assert json.loads(cli(own_db, "dkim", "list", "--json").stdout)[0]["encrypted"] == "no"


def test_encrypt_keys_seals_plaintext_rows_and_reseals_old_ones(own_db, db, keys):
    db.run_sync(domains.add_domain, "example.org")
    db.run_sync(dkim_store.generate_key, "example.org", "ed25519-sha256", "plain")
    db.run_sync(dkim_store.generate_key, "example.org", "rsa-sha256", "old",
                keyring=Keyring(read_key_file(keys["old"])))
    before = stored_keys(db)
    current = Keyring(read_key_file(keys["current"]))
    pems = {"plain": before["plain"],
            "old": Keyring(read_key_file(keys["old"])).open(before["old"], DKIM_PRIVATE_KEY)}
    env = {"POSTROOM_SECRET_KEY_FILE": keys["current"],
           "POSTROOM_SECRET_OLD_KEY_FILES": keys["old"]}

    dry = cli(own_db, "dkim", "encrypt-keys", "--dry-run", **env).stdout
    assert "1 key(s) would be encrypted, 1 re-encrypted" in dry
    assert stored_keys(db) == before

    out = cli(own_db, "dkim", "encrypt-keys", **env).stdout
    assert "example.org/plain: encrypted" in out and "example.org/old: re-encrypted" in out
    after = stored_keys(db)
    assert all(v.startswith(f"enc:v1:{current.current_id}:") for v in after.values())
    assert {s: current.open(v, DKIM_PRIVATE_KEY) for s, v in after.items()} == pems
    # a second run finds nothing to do
    again = cli(own_db, "dkim", "encrypt-keys", **env).stdout
    assert "0 key(s) were encrypted, 0 re-encrypted" in again and "2 already current" in again


def test_encrypt_keys_changes_nothing_when_one_key_cannot_be_opened(own_db, db, keys):
    db.run_sync(domains.add_domain, "example.org")
    db.run_sync(dkim_store.generate_key, "example.org", "ed25519-sha256", "aplain")
    db.run_sync(dkim_store.generate_key, "example.org", "ed25519-sha256", "foreign",
                keyring=Keyring(read_key_file(keys["old"])))
    before = stored_keys(db)
    line = one_line_error(cli(own_db, "dkim", "encrypt-keys", ok=False,
                              POSTROOM_SECRET_KEY_FILE=keys["current"]))
    assert "foreign of example.org" in line and key_id(read_key_file(keys["old"])) in line
    assert stored_keys(db) == before


def test_encrypt_keys_without_a_secret_key_is_a_one_line_error(own_db, db):
    done = cli(own_db, "dkim", "encrypt-keys", ok=False)
    assert "POSTROOM_SECRET_KEY_FILE" in one_line_error(done) and done.returncode == 2


def test_a_bad_key_file_is_a_one_line_error(own_db, db, tmp_path):
    (tmp_path / "bad").write_text("not a key\n")
    done = cli(own_db, "dkim", "list", "example.org", ok=False,
               POSTROOM_SECRET_KEY_FILE=str(tmp_path / "missing"))
    assert done.returncode == 0  # list needs no key: it never decrypts
    done = cli(own_db, "dkim", "generate", "example.org", ok=False,
               POSTROOM_SECRET_KEY_FILE=str(tmp_path / "bad"))
    assert "POSTROOM_SECRET_KEY_FILE" in one_line_error(done) and done.returncode == 2


def test_secret_key_generate_writes_a_private_file_once(own_db, tmp_path):
    path = tmp_path / "secret.key"
    done = cli(own_db, "secret-key", "generate", str(path))
    key = read_key_file(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert key_id(key) in done.stderr
    line = one_line_error(cli(own_db, "secret-key", "generate", str(path), ok=False))
    assert "exists" in line and read_key_file(str(path)) == key
    printed = cli(own_db, "secret-key", "generate", "-").stdout
    (tmp_path / "printed").write_text(printed)
    assert len(read_key_file(str(tmp_path / "printed"))) == 32


def test_up_makes_a_secret_key_once_and_the_demo_keys_are_encrypted_with_it(own_db, db,
                                                                            tmp_path):
    from postroom.config import load_settings
    from postroom.ops import supervisor

    settings = load_settings({})
    override = supervisor._ensure_secret_key(settings, tmp_path)
    path = override["POSTROOM_SECRET_KEY_FILE"]
    assert path == str(tmp_path / "secret.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = read_key_file(path)
    assert supervisor._ensure_secret_key(settings, tmp_path) == override  # kept, not remade
    assert read_key_file(path) == key
    assert supervisor._ensure_secret_key(settings.replace(secret_key_file="/k"), tmp_path) == {}
    supervisor._create_demo(own_db, path)
    rows = stored_keys(db)
    assert len(rows) == 2 and all(v.startswith(f"enc:v1:{key_id(key)}:") for v in rows.values())


# --- the msa


def start_msa(own_db: str, redis_url: str, certs: Path, *, start: bool = True,
              **env: str) -> tuple[ServiceProcess, int]:
    port = free_port()
    prefix = f"prtest:{secrets.token_hex(6)}:"
    process = ServiceProcess("msa", msa_env(own_db, redis_url, prefix, certs, port, free_port(),
                                            **env))
    if start:
        process.start()
    else:
        process.spawn()
    return process, port


def failure_reason(process: ServiceProcess) -> str:
    assert process.wait_exit(60) == 2, process.output
    assert "Traceback" not in process.output
    reasons = [e["reason"] for e in process.log_events()
               if e.get("event") == "service failed to start"]
    assert len(reasons) == 1, process.output
    return str(reasons[0])


def sealed_domain(db: Database, keyfile: str, name: str = "example.org") -> dict[str, bytes]:
    """A domain with one sealed ed25519 key and a user; the DNS TXT records of its keys."""
    db.run_sync(domains.add_domain, name)
    db.run_sync(users.add_user, f"alice@{name}", PASSWORD,
                hash_fn=lambda p: hash_password(p, ln=4))
    info = db.run_sync(dkim_store.generate_key, name, "ed25519-sha256", "e1",
                       keyring=Keyring(read_key_file(keyfile)))
    return {f"e1._domainkey.{name}": f"v=DKIM1; k=ed25519; p={info.public_key_b64}".encode()}


def submit(port: int, sender: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=unverified())
        client.login(sender, PASSWORD)
        client.mail(sender)
        client.rcpt("friend@remote.example")
        return client.data(message(sender))


def test_msa_refuses_to_start_on_an_encrypted_key_without_the_secret_key(
        own_db, db, keys, redis_url, tmp_path):
    sealed_domain(db, keys["current"])
    process, _port = start_msa(own_db, redis_url, tmp_path, start=False)
    try:
        reason = failure_reason(process)
    finally:
        process.close()
    assert "e1 of example.org" in reason and "POSTROOM_SECRET_KEY_FILE is not set" in reason


def test_msa_refuses_to_start_with_the_wrong_secret_key(own_db, db, keys, redis_url, tmp_path):
    sealed_domain(db, keys["old"])
    process, _port = start_msa(own_db, redis_url, tmp_path, start=False,
                               POSTROOM_SECRET_KEY_FILE=keys["current"])
    try:
        reason = failure_reason(process)
    finally:
        process.close()
    assert key_id(read_key_file(keys["old"])) in reason
    assert "POSTROOM_SECRET_OLD_KEY_FILES" in reason


def test_msa_refuses_to_start_with_an_unreadable_key_file(own_db, db, redis_url, tmp_path):
    process, _port = start_msa(own_db, redis_url, tmp_path, start=False,
                               POSTROOM_SECRET_KEY_FILE=str(tmp_path / "missing.key"))
    try:
        reason = failure_reason(process)
    finally:
        process.close()
    assert reason.startswith("POSTROOM_SECRET_KEY_FILE: cannot read")


def test_msa_signs_with_a_key_of_an_old_secret_key_during_rotation(
        own_db, db, keys, redis_url, tmp_path):
    records = sealed_domain(db, keys["old"])
    process, port = start_msa(own_db, redis_url, tmp_path,
                              POSTROOM_SECRET_KEY_FILE=keys["current"],
                              POSTROOM_SECRET_OLD_KEY_FILES=keys["old"])
    try:
        code, reply = submit(port, "alice@example.org")
        assert code == 250, reply
        queue_id = reply.decode().rsplit(" ", 1)[-1]
        from postroom.store import messages, spool
        info = db.run_sync(spool.get_spool, queue_id)
        data = db.run_sync(messages.get_message, info.message_id)
        assert dkim.verify(data, dnsfunc=lambda name, timeout=5: records.get(
            name.decode().rstrip(".")))
    finally:
        process.close()


def test_a_key_the_msa_cannot_decrypt_added_after_start_defers_with_451(
        own_db, db, keys, redis_url, tmp_path):
    process, port = start_msa(own_db, redis_url, tmp_path,
                              POSTROOM_SECRET_KEY_FILE=keys["current"])
    try:
        sealed_domain(db, keys["old"])  # sealed with a key this msa does not have
        code, reply = submit(port, "alice@example.org")
        assert code == 451 and b"Traceback" not in reply, reply
        events = [e for e in process.log_events() if e.get("event") == "dkim key unreadable"]
        assert events and key_id(read_key_file(keys["old"])) in events[0]["error"]
        status, metrics = process.get("/metrics")
        assert status == 200
        assert b'postroom_errors_total{kind="dkim_key"} 1.0' in metrics
    finally:
        process.close()


def test_srs_key_generate_writes_a_private_file_once_and_keeps_old_keys_on_rotation(
        own_db, tmp_path):
    from postroom.mailauth import srs

    first = tmp_path / "srs.keys"
    cli(own_db, "srs", "key", "generate", str(first))
    assert stat.S_IMODE(os.stat(first).st_mode) == 0o600
    [old] = srs.load_keys(str(first))
    line = one_line_error(cli(own_db, "srs", "key", "generate", str(first), ok=False))
    assert "exists" in line and srs.load_keys(str(first)) == (old,)
    rotated = tmp_path / "srs-new.keys"
    done = cli(own_db, "srs", "key", "generate", str(rotated), "--keep", str(first))
    new, kept = srs.load_keys(str(rotated))
    assert kept == old and new != old and "2 key(s)" in done.stderr
    printed = cli(own_db, "srs", "key", "generate", "-").stdout.strip()
    assert printed and printed.encode() not in (old, new)
