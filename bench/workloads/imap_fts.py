"""Workload 6: SEARCH BODY in a big mailbox (default 100,000 messages, `--scale-messages`).

The same messages on both sides: each body holds a word of its own
(``refkw`` + five letters from its number) and words every message has
("lorem"). Dovecot gets them as a Maildir (no FTS plugin: Debian's
dovecot-imapd as installed, which reads the message files). Postroom gets
one message through `postroom import maildir` and the rest as distinct
copies made by SQL (the importer is too slow for the budget), whose text is
then indexed by `postroom fts backfill` (timed and reported: the rate an
operator will see). Then, alternating, one client times ``UID SEARCH BODY``
for the rare word (one match) and for the common word (every message).
"""

from __future__ import annotations

import imaplib
import shutil
import time
from pathlib import Path
from typing import Any

from common import POSTROOM, VAR, Skip, progress
from common import run as run_command
from peers.dovecot import Dovecot
from postroom_suite import PASSWORD, PostroomSuite

from workloads import mailgen
from workloads.base import Context, Row

NAME = "imap_fts"
TITLE = "6. IMAP full-text: SEARCH BODY rare / common word in a big mailbox"
COMMON = "lorem"


def token(n: int) -> str:
    """Five letters unique to message ``n`` (below 26**5); the same rule as _TOKEN_SQL."""
    return "".join(chr(97 + (n // 26 ** k) % 26) for k in (4, 3, 2, 1, 0))


_TOKEN_SQL = " || ".join(f"chr(97 + (g / {26 ** k}) % 26)" for k in (4, 3, 2, 1, 0))


def message(n: int) -> bytes:
    body = (f"Ticket refkw{token(n)} about {mailgen.WORDS[0]}.\r\n"
            + ("lorem ipsum dolor sit amet " * 3 + "\r\n") * 12)
    return (f"From: Sender <sender@src.test>\r\nTo: <user@bench.test>\r\n"
            f"Subject: fts report\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <fts.bench@src.test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            f"{body}").encode()


def make_maildir(count: int) -> Path:
    root = VAR / "maildirs" / f"fts-{count}-v1"
    if (root / ".complete").exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for n in range(count):
        (root / "cur" / f"{1700000000 + n}.M{n}P1.fts:2,S").write_bytes(message(n))
    (root / ".complete").write_text("ok")
    return root


def replicate_postroom(suite: Any, user: str, count: int) -> None:
    """Messages 1..count-1 from the imported message 0, each with its own token (SQL)."""
    from sqlalchemy import text

    with suite.engine().begin() as conn:
        box, template = conn.execute(text(
            "SELECT m.id, e.message_id FROM mailboxes m JOIN users u ON u.id = m.user_id "
            "JOIN mailbox_entries e ON e.mailbox_id = m.id "
            "WHERE u.address = :a AND m.name = 'INBOX' ORDER BY e.uid LIMIT 1"),
            {"a": user}).one()
        conn.execute(text(
            "CREATE TEMP TABLE bench_new ON COMMIT DROP AS SELECT g AS n, "
            "decode(replace(encode(t.blob, 'escape'), 'refkwaaaaa', "
            f"'refkw' || {_TOKEN_SQL}), 'escape') AS blob, t.metadata "
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
        conn.execute(text("ANALYZE mailbox_entries"))


def _search(port: int, user: str, needles: dict[str, tuple[str, int]]) -> dict[str, float]:
    conn = imaplib.IMAP4("127.0.0.1", port, timeout=600)
    out: dict[str, float] = {}
    try:
        conn.login(user, PASSWORD)
        conn.select("INBOX")
        for name, (needle, expected) in needles.items():
            started = time.perf_counter()
            typ, data = conn.uid("SEARCH", "BODY", needle)
            out[name] = 1000 * (time.perf_counter() - started)
            found = len((data[0] or b"").split()) if typ == "OK" else -1
            if expected and found != expected:
                raise RuntimeError(f"SEARCH BODY {needle}: {found} found, {expected} expected")
        conn.logout()
    finally:
        try:
            conn.shutdown()
        except OSError:
            pass
    return out


def run(ctx: Context) -> list[Row]:
    ctx.need_services("imap")
    if Dovecot.available(lmtp=False):
        raise Skip(f"Dovecot unavailable: {Dovecot.available(lmtp=False)}")
    n = ctx.scale_messages
    rare = f"refkw{token(n // 2)}"
    needles = {"rare word": (rare, 1), "common word": (COMMON, n)}
    rows = {k: Row(NAME, f"SEARCH BODY {k} on {n} msgs", "ms", "Dovecot (no FTS plugin)",
                   higher_is_better=False) for k in needles}
    progress(f"  building a {n}-message Maildir (cached under var/bench/maildirs)")
    data = make_maildir(n)
    first = VAR / "maildirs" / "fts-first"
    if not (first / "cur").exists():
        for sub in ("cur", "new", "tmp"):
            (first / sub).mkdir(parents=True, exist_ok=True)
        (first / "cur" / "1700000000.M0P1.fts:2,S").write_bytes(message(0))
    dovecot = Dovecot(users=1, lmtp=False).start()
    backfill = Row(NAME, f"fts backfill of {n} msgs", "msg/s", "", higher_is_better=True)
    try:
        env = {"POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK": "true"}
        with PostroomSuite(["imap"], users=1, extra_env=env) as suite:
            user = suite.user(0)
            mailgen.seed_dovecot(data, dovecot.maildir(user))
            mailgen.seed_postroom(first, user, suite.env, timeout=120)
            progress(f"  seeding {n} messages into Postroom (1 imported, the rest by SQL)")
            replicate_postroom(suite, user, n)
            started = time.monotonic()
            run_command([POSTROOM, "fts", "backfill", "--batch", "500"],
                env=suite.env, timeout=3600)
            took = time.monotonic() - started
            backfill.postroom.append(n / took)
            progress(f"  postroom fts backfill: {n} messages in {took:.0f}s "
                     f"({n / took:.0f} msg/s); warming both sides with one untimed search")
            for port in (suite.ports["imap"], dovecot.imap_port):
                _search(port, user, {"warm": (rare, 0)})
            for i in range(ctx.runs):
                if not ctx.another_run(i):
                    progress(f"  budget: stopping after {i} run(s)")
                    break
                for side, port in (("postroom", suite.ports["imap"]),
                                   ("dovecot", dovecot.imap_port)):
                    got = _search(port, user, needles)
                    for k, ms in got.items():
                        row = rows[k]
                        (row.postroom if side == "postroom" else row.peer_runs).append(ms)
                    progress(f"  run {i + 1} {side}: " + ", ".join(
                        f"{k} {ms:.0f} ms" for k, ms in got.items()))
    finally:
        dovecot.stop()
    return [*rows.values(), backfill]
