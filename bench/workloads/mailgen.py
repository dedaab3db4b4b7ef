"""Make the same mailbox data for both sides: a Maildir of N messages, copied or imported."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from common import POSTROOM, VAR, run
from peers.dovecot import MAIL_UID

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


def message(n: int) -> bytes:
    word = WORDS[n % len(WORDS)]
    body = (f"Message number {n} about {word}.\r\n" + ("lorem ipsum dolor sit amet " * 3 + "\r\n")
            * 12)
    return (f"From: Sender {n % 97} <sender{n % 97}@src.test>\r\n"
            f"To: <user@bench.test>\r\n"
            f"Subject: {word} report {n}\r\n"
            f"Date: Wed, 25 Nov 2026 10:{n % 60:02d}:{n % 59:02d} +0000\r\n"
            f"Message-ID: <{n}.bench@src.test>\r\n"
            f"X-Bench-Serial: serial-{n:07d}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            f"{body}").encode()


def make_maildir(name: str, count: int) -> Path:
    """var/bench/maildirs/<name>-<count>: built once, reused by later runs."""
    root = VAR / "maildirs" / f"{name}-{count}-v2"
    if (root / ".complete").exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for n in range(count):
        # seen messages in cur/ with the Maildir info suffix, like a real mailbox
        (root / "cur" / f"{1700000000 + n}.M{n}P1.bench:2,S").write_bytes(message(n))
    (root / ".complete").write_text("ok")
    return root


def seed_dovecot(maildir: Path, target: Path) -> None:
    """Copy the Maildir as a Dovecot user's INBOX, owned by the mail user."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(maildir, target, ignore=shutil.ignore_patterns(".complete"))
    for dirpath, _dirs, files in os.walk(target):
        os.chown(dirpath, MAIL_UID, MAIL_UID)
        for name in files:
            os.chown(os.path.join(dirpath, name), MAIL_UID, MAIL_UID)
    os.chown(target.parent, MAIL_UID, MAIL_UID)


def replicate_postroom(suite: Any, user: str, count: int) -> None:
    """Fill the user's INBOX up to ``count`` messages from the one imported message (serial 0).

    Each copy is its own message: the template's bytes with X-Bench-Serial
    (fixed width, so the cached body offset stays right) set to its number,
    its own SHA-256, and an entry with UID = number + 1, flagged \\Seen like
    the Maildir's. `postroom import` runs at tens of messages a second here,
    far too slow for 100,000 in the bench's budget; this is the same data.
    """
    from sqlalchemy import text

    with suite.engine().begin() as conn:
        box, template = conn.execute(text(
            "SELECT m.id, e.message_id FROM mailboxes m JOIN users u ON u.id = m.user_id "
            "JOIN mailbox_entries e ON e.mailbox_id = m.id "
            "WHERE u.address = :a AND m.name = 'INBOX' ORDER BY e.uid LIMIT 1"),
            {"a": user}).one()
        conn.execute(text(
            "CREATE TEMP TABLE bench_new ON COMMIT DROP AS SELECT g AS n, "
            "decode(replace(encode(t.blob, 'escape'), 'serial-0000000', "
            "'serial-' || lpad(g::text, 7, '0')), 'escape') AS blob, t.metadata "
            "FROM messages t, generate_series(1, :last) g WHERE t.id = :t"),
            {"t": template, "last": count - 1})
        conn.execute(text(
            "INSERT INTO messages (sha256, size, blob, metadata) "
            "SELECT encode(sha256(blob), 'hex'), octet_length(blob), blob, metadata "
            "FROM bench_new ON CONFLICT (sha256) DO NOTHING"))
        conn.execute(text(
            "INSERT INTO mailbox_entries (mailbox_id, uid, message_id, flags, modseq, "
            "internaldate) SELECT :box, b.n + 1, m.id, ARRAY['\\Seen'], b.n + 1, now() "
            "FROM bench_new b JOIN messages m ON m.sha256 = encode(sha256(b.blob), 'hex')"),
            {"box": box})
        conn.execute(text("UPDATE mailboxes SET uidnext = :n + 1, highestmodseq = :n + 1 "
                          "WHERE id = :box"), {"n": count, "box": box})


def seed_postroom(maildir: Path, user: str, env: dict[str, str], timeout: float) -> None:
    """`postroom import maildir` into the account (the operator's migration path)."""
    run([POSTROOM, "import", "maildir", str(maildir), "--user", user], env=env, timeout=timeout)
