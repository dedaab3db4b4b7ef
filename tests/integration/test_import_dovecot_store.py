"""`postroom import dovecot` against a real database: the UID rules of a cutover, account reruns.

The Maildirs here are written by hand in Dovecot's formats (the end-to-end
test, tests/e2e/test_import_dovecot.py, uses ones a real Dovecot wrote).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from postroom.ops.importer import dovecot
from postroom.store import domains, imports, mailboxes, maildrop, messages, users
from postroom.store.db import Database
from postroom.store.models import MailboxEntry, User

DOMAIN = "example.test"
ALICE = f"alice@{DOMAIN}"
UIDVALIDITY = 1796623833


def _msg(n: int) -> bytes:
    return f"From: bob@example.org\nSubject: m{n}\nMessage-ID: <m{n}@x>\n\nbody {n}\n".encode()


def write_maildir(root: Path, files: dict[str, tuple[int | None, bytes]], *,
                  nextuid: int, uidvalidity: int = UIDVALIDITY, keywords: str = "") -> None:
    """A Maildir with ``files`` (name -> (uid or None when not yet in the uidlist, data))."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = [f"3 V{uidvalidity} N{nextuid} Gabc"]
    for name, (uid, data) in files.items():
        sub = "cur" if ":2," in name else "new"
        (root / sub / name).write_bytes(data)
        if uid is not None:
            lines.append(f"{uid} :{name.split(':', 1)[0]}")
    (root / "dovecot-uidlist").write_text("\n".join(lines) + "\n")
    if keywords:
        (root / "dovecot-keywords").write_text(keywords)


@pytest.fixture
def store(clean_db: str) -> Iterator[Database]:
    database = Database(clean_db, pool_size=1)
    database.run_sync(domains.add_domain, DOMAIN)
    yield database
    database.dispose()


def entry(address: str = ALICE, stored: str = "{PLAIN-MD5}5f4dcc3b5aa765d61d8327deb882cf99"
          ) -> dovecot.PasswdEntry:
    return dovecot.PasswdEntry(address=address, password=stored, home="")


def run(store: Database, root: Path, address: str = ALICE) -> dovecot.DovecotImportResult:
    return dovecot.import_dovecot(store, [entry(address)], mail_location=str(root))


def inbox(store: Database, address: str = ALICE) -> tuple[mailboxes.MailboxInfo,
                                                           dict[int, tuple[list[str], str | None]]]:
    def work(session):  # type: ignore[no-untyped-def]
        user = users.get_user(session, address)
        box = mailboxes.get_mailbox(session, user.id, "INBOX")
        rows = session.execute(select(MailboxEntry.uid, MailboxEntry.flags,
                                      MailboxEntry.pop3_uidl)
                               .where(MailboxEntry.mailbox_id == box.id)).all()
        return box, {int(r[0]): (sorted(r[1]), r[2]) for r in rows}
    return store.run_sync(work)  # type: ignore[no-any-return]


def test_fresh_mailbox_takes_the_old_uidvalidity_uids_flags_keywords_and_uidls(
        store: Database, tmp_path: Path) -> None:
    write_maildir(tmp_path, {"1.M1.h:2,S": (3, _msg(1)), "2.M2.h:2,RSab": (7, _msg(2))},
                  nextuid=9, keywords="0 $Label1\n1 Work\n")
    result = run(store, tmp_path)
    assert (result.users_created, result.imported, result.uids_kept) == (1, 2, 2)
    box, entries = inbox(store)
    assert (box.uidvalidity, box.uidnext) == (UIDVALIDITY, 9)
    assert box.highestmodseq >= imports.MODSEQ_FLOOR  # changes here: newer than Dovecot's
    assert entries == {3: (["\\Seen"], "00000003" + format(UIDVALIDITY, "08x")),
                       7: (["$Label1", "Work", "\\Answered", "\\Seen"],
                           "00000007" + format(UIDVALIDITY, "08x"))}
    # what the pop3 service answers for UIDL
    user_id = store.run_sync(users.get_user, ALICE).id
    snapshot = store.run_sync(maildrop.load_snapshot, user_id)
    assert [snapshot.uidl(uid) for uid, _ in snapshot.entries] == [
        entries[3][1], entries[7][1]]


def test_a_mailbox_that_had_mail_here_keeps_its_uidvalidity_and_gives_new_uids(
        store: Database, tmp_path: Path) -> None:
    info = store.run_sync(users.add_user, ALICE, "a long enough password")
    message_id = store.run_sync(messages.store_message, b"Subject: here first\r\n\r\nx\r\n")
    store.run_sync(mailboxes.deliver_to_mailbox, user_id=info.id, mailbox_name="INBOX",
                   message_id=message_id, spool_recipient_id=None)
    write_maildir(tmp_path, {"1.M1.h:2,S": (5, _msg(1))}, nextuid=6)
    result = run(store, tmp_path)
    box, entries = inbox(store)
    assert box.uidvalidity != UIDVALIDITY and sorted(entries) == [1, 2]
    assert box.highestmodseq < imports.MODSEQ_FLOOR  # its own clients' modseqs stay valid
    assert result.uids_new == 1 and any("new UIDs" in p for p in result.problems)
    assert result.users_kept == 1  # a password set here is never replaced by an import


def test_cutover_rerun_takes_only_new_uids_and_never_reuses_one(
        store: Database, tmp_path: Path) -> None:
    write_maildir(tmp_path, {"1.M1.h:2,S": (1, _msg(1)), "2.M2.h:2,": (2, _msg(2))}, nextuid=3)
    run(store, tmp_path)
    user_id = store.run_sync(users.get_user, ALICE).id
    # after the MX moved, mail arrives here and takes UID 3; the user deletes UID 2
    message_id = store.run_sync(messages.store_message, b"Subject: new here\r\n\r\nx\r\n")
    store.run_sync(mailboxes.deliver_to_mailbox, user_id=user_id, mailbox_name="INBOX",
                   message_id=message_id, spool_recipient_id=None)
    store.run_sync(maildrop.expunge_uids, inbox(store)[0].id, [2])
    # meanwhile Dovecot got two more: UID 3 (taken here) and 4, and one not yet listed
    write_maildir(tmp_path, {"1.M1.h:2,S": (1, _msg(1)), "2.M2.h:2,": (2, _msg(2)),
                             "3.M3.h:2,": (3, _msg(3)), "4.M4.h:2,F": (4, _msg(4)),
                             "5.M5.h": (None, _msg(5))}, nextuid=5)
    result = run(store, tmp_path)
    assert (result.imported, result.skipped) == (3, 2)
    box, entries = inbox(store)
    assert sorted(entries) == [1, 3, 4, 5, 6]
    # Dovecot's 3 could not keep its UID (taken) but keeps its UIDL; 4 kept both
    assert entries[4][1] == "00000003" + format(UIDVALIDITY, "08x")
    assert entries[5] == (["\\Flagged"], "00000004" + format(UIDVALIDITY, "08x"))
    assert entries[6] == ([], None)  # not yet in the uidlist: a UID and UIDL of ours
    assert box.uidnext == 7
    # a third run: nothing, not even the unlisted one again
    write_maildir(tmp_path, {"1.M1.h:2,S": (1, _msg(1)), "2.M2.h:2,": (2, _msg(2)),
                             "3.M3.h:2,": (3, _msg(3)), "4.M4.h:2,F": (4, _msg(4)),
                             "5.M5.h": (5, _msg(5))}, nextuid=6)
    assert run(store, tmp_path).imported == 0


def test_account_reruns_refresh_an_imported_hash_but_never_replace_ours(
        store: Database, tmp_path: Path) -> None:
    first = store.run_sync(users.import_user, ALICE, "{PLAIN-MD5}" + "0" * 32)
    assert first.outcome == "created"
    md5_password = "{PLAIN-MD5}5f4dcc3b5aa765d61d8327deb882cf99"  # "password"
    assert store.run_sync(users.import_user, ALICE, md5_password).outcome == "hash_updated"
    assert store.run_sync(users.authenticate, ALICE, "password") is not None

    def row(session):  # type: ignore[no-untyped-def]
        found = session.execute(select(User).where(User.address == ALICE)).scalar_one()
        return found.password_hash, found.scram_secrets
    stored, scram = store.run_sync(row)
    assert stored.startswith("$scrypt$") and scram.startswith("SCRAM-SHA-256$")
    assert store.run_sync(users.import_user, ALICE, md5_password).outcome == "kept"
    assert store.run_sync(users.authenticate, ALICE, "password") is not None
    # a plaintext entry is hashed at once, never stored
    made = store.run_sync(users.import_user, f"plain@{DOMAIN}", "{PLAIN}opensesame")
    assert made.outcome == "created"
    assert store.run_sync(users.authenticate, f"plain@{DOMAIN}", "opensesame") is not None


def test_cli_refuses_unknown_domains_and_reports_bad_lines(clean_db: str, tmp_path: Path) -> None:
    passwd = tmp_path / "users"
    passwd.write_text("alice@nowhere.test:{PLAIN-MD5}5f4dcc3b5aa765d61d8327deb882cf99::::::\n"
                      "bob:{WHAT}x::::::\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env["POSTROOM_DATABASE_URL"] = clean_db
    done = subprocess.run([sys.executable, "-m", "postroom.ops.cli", "import", "dovecot",
                           str(passwd), "--users-only"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert done.returncode != 0
    assert "bob" in done.stderr and "nowhere.test" in done.stderr
    assert "Traceback" not in done.stderr
