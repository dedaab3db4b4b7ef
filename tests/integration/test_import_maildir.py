"""`postroom import maildir|mbox` and `postroom export` against a real database (and IMAP)."""

from __future__ import annotations

import errno
import json
import os
import pty
import select
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from postroom.ops.importer import maildir as maildir_source
from postroom.ops.importer import mbox as mbox_source
from postroom.ops.importer.export import export_maildir
from postroom.ops.importer.load import import_folders
from postroom.service import available_services
from postroom.store import domains, mailboxes, users
from postroom.store.db import Database
from postroom.store.models import Mailbox, MailboxEntry, Message

USER = "alice@example.test"
PASSWORD = "alice-secret-1"
BASE = 1_700_000_000


def _msg(subject: str) -> bytes:
    return (f"From: bob@example.org\nTo: {USER}\nSubject: {subject}\n"
            f"Message-ID: <{subject.replace(' ', '.')}@example.org>\n\nbody of {subject}\n"
            ).encode()


def _put(folder: Path, sub: str, name: str, subject: str, mtime: int) -> None:
    for part in ("cur", "new", "tmp"):
        (folder / part).mkdir(parents=True, exist_ok=True)
    path = folder / sub / name
    path.write_bytes(_msg(subject))
    os.utime(path, (mtime, mtime))


# what the tree holds: mailbox -> {subject: (flags, internal date)}
EXPECTED = {
    "INBOX": {"seen": ({"\\Seen"}, BASE + 1), "answered": ({"\\Answered", "\\Seen"}, BASE + 2),
              "unread": (set(), BASE + 3)},
    "Sent": {"sent": ({"\\Seen"}, BASE + 4)},
    "Lists": {"lists top": ({"\\Flagged"}, BASE + 5)},
    "Lists/python": {"flagged": ({"\\Flagged", "\\Seen"}, BASE + 6),
                     "trashed": ({"\\Deleted", "\\Seen"}, BASE + 7)},
}


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    """A Dovecot-style Maildir++ tree with flags S, R, F, T and nested folders."""
    root = tmp_path / "Maildir"
    _put(root, "cur", f"{BASE + 1}.M1P1.mx,S=100:2,S", "seen", BASE + 1)
    _put(root, "cur", f"{BASE + 2}.M2P1.mx,S=100:2,RS", "answered", BASE + 2)
    _put(root, "new", f"{BASE + 3}.M3P1.mx", "unread", BASE + 3)
    _put(root / ".Sent", "cur", f"{BASE + 4}.M4P1.mx:2,S", "sent", BASE + 4)
    _put(root / ".Lists", "cur", f"{BASE + 5}.M5P1.mx:2,F", "lists top", BASE + 5)
    _put(root / ".Lists.python", "cur", f"{BASE + 6}.M6P1.mx:2,FS", "flagged", BASE + 6)
    _put(root / ".Lists.python", "cur", f"{BASE + 7}.M7P1.mx:2,ST", "trashed", BASE + 7)
    (root / "dovecot-uidlist").write_text("3 V1 N8\n")
    return root


@pytest.fixture
def store(clean_db):
    database = Database(clean_db, pool_size=1)
    database.run_sync(domains.add_domain, "example.test")
    database.run_sync(users.add_user, USER, PASSWORD)
    yield database
    database.dispose()


@pytest.fixture
def postroom(clean_db):
    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
        env["POSTROOM_DATABASE_URL"] = clean_db
        result = subprocess.run([sys.executable, "-m", "postroom.ops.cli", *args],
                                capture_output=True, text=True, env=env, timeout=120)
        if ok:
            assert result.returncode == 0, result.stderr
        return result
    return run


def _contents(database: Database, address: str = USER) -> dict[str, dict[str, tuple]]:
    """mailbox -> {subject: (flags, internal date as a Unix time)} from the store."""
    from sqlalchemy import select

    def query(session):
        user = users.get_user(session, address)
        rows = session.execute(
            select(Mailbox.name, MailboxEntry.flags, MailboxEntry.internaldate, Message.meta)
            .join(MailboxEntry, MailboxEntry.mailbox_id == Mailbox.id)
            .join(Message, Message.id == MailboxEntry.message_id)
            .where(Mailbox.user_id == user.id))
        found: dict[str, dict[str, tuple]] = {}
        for name, flags, internaldate, meta in rows:
            subject = meta["envelope"]["subject"]
            found.setdefault(name, {})[subject] = (set(flags), int(internaldate.timestamp()))
        return found
    return database.run_sync(query)


def _import(store, path, user=USER):
    return import_folders(store, user, maildir_source.scan(path))


def test_maildir_import_keeps_folders_flags_and_dates(maildir, store):
    _import(store, maildir)
    assert _contents(store) == EXPECTED
    user = store.run_sync(users.get_user, USER)
    names = {m.name for m in store.run_sync(mailboxes.list_mailboxes, user.id)}
    assert {"INBOX", "Sent", "Lists", "Lists/python"} <= names


def test_rerunning_an_import_adds_nothing(maildir, store):
    first, again = _import(store, maildir), _import(store, maildir)
    assert (first.imported, first.skipped) == (7, 0)
    assert (again.imported, again.skipped) == (0, 7)
    assert "skipped 7 already present" in again.summary()
    assert _contents(store) == EXPECTED


def test_identical_copies_in_one_folder_are_all_imported_once(maildir, store):
    _put(maildir, "cur", f"{BASE + 9}.M9P1.mx:2,S", "seen", BASE + 1)
    _import(store, maildir)
    _import(store, maildir)
    user = store.run_sync(users.get_user, USER)
    assert store.run_sync(mailboxes.get_mailbox, user.id, "INBOX").uidnext == 5


def test_no_progress_output_without_a_terminal(maildir, store, postroom):
    result = postroom("import", "maildir", str(maildir), "--user", USER)
    assert result.stderr == ""
    assert result.stdout.strip().splitlines()[-1].startswith("imported 7 message(s)")


def test_progress_bar_shows_on_a_terminal(maildir, store, clean_db):
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env["POSTROOM_DATABASE_URL"] = clean_db
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "postroom.ops.cli", "import", "maildir",
                             str(maildir), "--user", USER], stdin=follower, stdout=follower,
                            stderr=follower, env=env)
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert proc.wait(30) == 0, output
    assert b"[" + b"#" * 30 + b"] 7/7" in output
    assert b"imported 7 message(s)" in output


def test_import_of_unknown_user_is_a_one_line_error(maildir, store, postroom):
    result = postroom("import", "maildir", str(maildir), "--user", "nobody@example.test",
                      ok=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "postroom: error: no user nobody@example.test"


def test_mbox_import_reads_flags_dates_and_unquotes_from_lines(tmp_path, store):
    mbox = tmp_path / "old.mbox"
    mbox.write_bytes(
        b"From bob@example.org Thu Nov 14 22:13:20 2023\n"
        b"From: bob@example.org\nSubject: first\nStatus: RO\nX-Status: A\n\n"
        b">From the start\nend\n\n"
        b"From bob@example.org Thu Nov 14 22:13:21 2023\n"
        b"From: bob@example.org\nSubject: second\nStatus: O\n\nplain\n\n")
    import_folders(store, USER, mbox_source.scan(mbox, "Old/2023"))
    assert _contents(store)["Old/2023"] == {
        "first": ({"\\Seen", "\\Answered"}, int(datetime(2023, 11, 14, 22, 13, 20,
                                                         tzinfo=UTC).timestamp())),
        "second": (set(), int(datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC).timestamp())),
    }

    def blob(session):
        from sqlalchemy import select
        return session.execute(select(Message.blob).where(
            Message.meta["envelope"]["subject"].astext == "first")).scalar_one()
    assert b"\r\nFrom the start\r\n" in bytes(store.run_sync(blob))


def test_export_then_import_gives_back_the_same_mailboxes(maildir, store, postroom, tmp_path):
    _import(store, maildir)
    store.run_sync(users.add_user, "carol@example.test", "carol-secret-1")
    out = tmp_path / "exported"
    assert "exported 7 message(s)" in postroom("export", str(out), "--user", USER).stdout
    assert (out / ".Lists.python" / "cur").is_dir()
    _import(store, out, "carol@example.test")
    assert _contents(store, "carol@example.test") == EXPECTED


def test_export_twice_writes_each_message_once(maildir, store, tmp_path):
    _import(store, maildir)
    out = tmp_path / "exported"
    export_maildir(store, USER, out)
    export_maildir(store, USER, out)
    assert len(list((out / "cur").iterdir())) == 3


def test_imported_mail_shows_the_same_over_imap(maildir, store, clean_db, redis_url,
                                                redis_prefix, service_process, tmp_path):
    """Folders, flags and dates over IMAP (the store alone until imap is installed)."""
    _import(store, maildir)
    assert _contents(store) == EXPECTED
    if "imap" not in available_services():
        return  # the IMAP half activates by itself when the imap entry point exists
    import imaplib
    import time

    from postroom.net.tls import make_self_signed
    from tests.support.ports import free_port

    make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "localhost")
    port = free_port()
    service_process("imap", {"POSTROOM_DATABASE_URL": clean_db, "POSTROOM_REDIS_URL": redis_url,
                             "POSTROOM_REDIS_PREFIX": redis_prefix,
                             "POSTROOM_TLS_CERT_FILE": str(tmp_path / "cert.pem"),
                             "POSTROOM_TLS_KEY_FILE": str(tmp_path / "key.pem"),
                             "POSTROOM_IMAP_LISTEN": f"tcp:{port}:interface=127.0.0.1",
                             "POSTROOM_IMAP_TLS_LISTEN": "",
                             "POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK": "true"})
    client = imaplib.IMAP4("127.0.0.1", port)
    try:
        client.login(USER, PASSWORD)
        for name, messages in EXPECTED.items():
            status, _ = client.select(f'"{name}"', readonly=True)
            assert status == "OK", name
            _, data = client.fetch("1:*", "(FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS "
                                   "(SUBJECT)])")
            seen = {}
            for item in data:
                if isinstance(item, tuple):
                    subject = item[1].decode().split(":", 1)[1].strip()
                    flags = {f.decode() for f in imaplib.ParseFlags(item[0])} - {"\\Recent"}
                    when = int(time.mktime(imaplib.Internaldate2tuple(item[0])))
                    seen[subject] = (flags, when)
            assert seen == messages, name
    finally:
        client.logout()


# --- an untrusted tree and a private export (issue 16)


def test_import_never_reads_a_link_out_of_the_tree(maildir, store, postroom, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"Subject: stolen\n\nroot:$6$hash:19000::::::\n")
    (maildir / "cur" / f"{BASE + 8}.M8P1.mx:2,S").symlink_to(secret)
    (maildir / ".Stolen").symlink_to(maildir / ".Sent")  # a folder link, even inside
    result = postroom("import", "maildir", str(maildir), "--user", USER)
    assert _contents(store) == EXPECTED
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {(e["path"].rsplit("/", 2)[-1], e["reason"]) for e in events
            if e["event"] == "maildir entry skipped"} == {
        (f"{BASE + 8}.M8P1.mx:2,S", "symbolic link"), (".Stolen", "symbolic link")}


def modes(root: Path) -> set[tuple[str, int]]:
    """{(kind, permission bits)} of everything under ``root``, ``root`` included."""
    found = {("dir", root.stat().st_mode & 0o777)}
    for path in root.rglob("*"):
        found.add(("dir" if path.is_dir() else "file", path.stat().st_mode & 0o777))
    return found


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_export_makes_folders_0700_and_files_0600_whatever_the_umask(maildir, store, tmp_path,
                                                                      umask):
    _import(store, maildir)
    out = tmp_path / "new" / "exported"
    previous = os.umask(umask)
    try:
        export_maildir(store, USER, out)
    finally:
        os.umask(previous)
    assert modes(out) == {("dir", 0o700), ("file", 0o600)}
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700  # a parent it had to make


def test_a_rerun_makes_an_earlier_exports_files_private(maildir, store, tmp_path):
    _import(store, maildir)
    out = tmp_path / "exported"
    export_maildir(store, USER, out)
    for path in [out, *out.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    export_maildir(store, USER, out)
    assert modes(out) == {("dir", 0o755), ("dir", 0o700), ("file", 0o600)}
    assert out.stat().st_mode & 0o777 == 0o755  # the root is the operator's: left alone


def test_export_refuses_to_write_through_a_linked_folder(maildir, store, tmp_path):
    _import(store, maildir)
    out, elsewhere = tmp_path / "exported", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / ".Sent").symlink_to(elsewhere)
    with pytest.raises(OSError) as caught:
        export_maildir(store, USER, out)
    assert caught.value.errno == errno.ELOOP
    assert list(elsewhere.iterdir()) == []


def test_export_does_not_follow_a_link_planted_in_tmp(maildir, store, tmp_path):
    _import(store, maildir)
    out, target = tmp_path / "exported", tmp_path / "target"
    export_maildir(store, USER, out)
    names = sorted(p.name for p in (out / "cur").iterdir())
    for path in (out / "cur").iterdir():
        path.unlink()
    target.write_bytes(b"not yours\n")
    for name in names:
        (out / "tmp" / name.split(",", 1)[0]).symlink_to(target)
    export_maildir(store, USER, out)
    assert target.read_bytes() == b"not yours\n"
    assert sorted(p.name for p in (out / "cur").iterdir()) == names
    assert all(not p.is_symlink() for p in (out / "cur").iterdir())
