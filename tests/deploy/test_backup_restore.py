"""The operator guide's backup and restore commands (pg_dump -Fc, pg_restore) lose nothing."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from postroom.ops.importer.load import import_folders
from postroom.ops.importer.source import SourceFolder, SourceMessage
from postroom.service import available_services
from postroom.store import domains, mailboxes, users
from postroom.store.db import Database
from postroom.store.migrate import check_schema, upgrade
from postroom.store.models import Mailbox, MailboxEntry, Message
from tests.support.db import create_test_database, drop_test_database

USER = "alice@example.test"
PASSWORD = "alice-secret-1"


def _tool(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        pytest.fail(f"{name} is not installed: apt-get install postgresql-client", pytrace=False)
    return binary


def _conninfo(url: str) -> list[str]:
    parsed = make_url(url)
    return ["-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432),
            "-U", parsed.username or "postgres"]


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    source, target = create_test_database("postroom_test_bk_"), create_test_database(
        "postroom_test_rs_")
    try:
        yield source, target
    finally:
        drop_test_database(source)
        drop_test_database(target)


def _snapshot(url: str) -> list[tuple]:
    def query(session):
        rows = session.execute(
            select(Mailbox.name, Mailbox.uidvalidity, Mailbox.uidnext, MailboxEntry.uid,
                   MailboxEntry.flags, MailboxEntry.internaldate, Message.sha256)
            .join(MailboxEntry, MailboxEntry.mailbox_id == Mailbox.id, isouter=True)
            .join(Message, Message.id == MailboxEntry.message_id, isouter=True)
            .order_by(Mailbox.name, MailboxEntry.uid))
        return [tuple(r) for r in rows]
    database = Database(url, pool_size=1)
    try:
        return database.run_sync(query)
    finally:
        database.dispose()


def _fill(url: str) -> None:
    from datetime import UTC, datetime

    database = Database(url, pool_size=1)
    try:
        database.run_sync(domains.add_domain, "example.test")
        database.run_sync(users.add_user, USER, PASSWORD)
        when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        folder = [SourceMessage(f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode(),
                                ("\\Seen",) if i % 2 else (), when) for i in range(5)]
        import_folders(database, USER, [SourceFolder("Projects/2024", 5, iter(folder)),
                                        SourceFolder("INBOX", 2, iter(folder[:2]))])
    finally:
        database.dispose()


def test_dump_restores_into_a_new_database_with_the_same_mailboxes(databases, tmp_path: Path):
    source, target = databases
    upgrade(source)
    _fill(source)
    dump = tmp_path / "postroom.dump"
    # the commands of docs/operations.md, "Backup and restore"
    subprocess.run([_tool("pg_dump"), *_conninfo(source), "--format=custom", "--no-owner",
                    f"--file={dump}", make_url(source).database], check=True, timeout=120)
    subprocess.run([_tool("pg_restore"), *_conninfo(target), "--no-owner", "--exit-on-error",
                    f"--dbname={make_url(target).database}", str(dump)],
                   check=True, timeout=120)
    check_schema(target)
    before, after = _snapshot(source), _snapshot(target)
    assert after == before
    assert len([row for row in after if row[3] is not None]) == 7


def test_restored_database_serves_the_same_mailboxes_over_imap(databases, tmp_path, redis_url,
                                                              redis_prefix, service_process):
    """Via the store always; over IMAP once the imap service is installed."""
    source, target = databases
    upgrade(source)
    _fill(source)
    dump = tmp_path / "postroom.dump"
    subprocess.run([_tool("pg_dump"), *_conninfo(source), "-Fc", f"--file={dump}",
                    make_url(source).database], check=True, timeout=120)
    subprocess.run([_tool("pg_restore"), *_conninfo(target), "--no-owner",
                    f"--dbname={make_url(target).database}", str(dump)], check=True, timeout=120)
    database = Database(target, pool_size=1)
    try:
        user = database.run_sync(users.get_user, USER)
        names = [m.name for m in database.run_sync(mailboxes.list_mailboxes, user.id)]
    finally:
        database.dispose()
    assert "Projects/2024" in names and "INBOX" in names
    if "imap" not in available_services():
        return
    import imaplib

    from postroom.net.tls import make_self_signed
    from tests.support.ports import free_port

    make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "localhost")
    port = free_port()
    service_process("imap", {"POSTROOM_DATABASE_URL": target, "POSTROOM_REDIS_URL": redis_url,
                             "POSTROOM_REDIS_PREFIX": redis_prefix,
                             "POSTROOM_TLS_CERT_FILE": str(tmp_path / "cert.pem"),
                             "POSTROOM_TLS_KEY_FILE": str(tmp_path / "key.pem"),
                             "POSTROOM_IMAP_LISTEN": f"tcp:{port}:interface=127.0.0.1",
                             "POSTROOM_IMAP_TLS_LISTEN": "",
                             "POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK": "true"})
    client = imaplib.IMAP4("127.0.0.1", port)
    try:
        client.login(USER, PASSWORD)
        _, listing = client.list()
        listed = {line.decode().rsplit(" ", 1)[-1].strip('"') for line in listing}
        assert set(names) <= listed
        status, count = client.select('"Projects/2024"', readonly=True)
        assert status == "OK" and count == [b"5"]
    finally:
        client.logout()
