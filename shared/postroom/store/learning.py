"""Spam learning in the store: the durable requests (``learn_requests``) and the message read.

PostgreSQL is the truth, the ``learn`` stream only a signal (DESIGN, durability):
the imap service inserts one row per message in the transaction of the COPY
or MOVE into or out of Junk (:func:`record`, called by ``entries.copy``); the
dmarc service's learn worker deletes it once rspamd answered
(:func:`finish`), counts failed attempts (:func:`failed`), and re-signals
rows left pending longer than a grace period (:func:`due`). A stream entry
whose row is gone was done already and is skipped (:func:`pending`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

JUNK = "Junk"
TRASH = "Trash"


@dataclass(frozen=True)
class PendingRequest:
    user_id: int
    message_id: int
    klass: str
    attempts: int


def learn_class(source: str, dest: str) -> str | None:
    """What moving or copying from ``source`` to ``dest`` teaches: spam, ham or nothing."""
    def junk(name: str) -> bool:
        return name.lower() == JUNK.lower()

    if junk(dest) and not junk(source):
        return "spam"
    if junk(source) and not junk(dest) and dest.lower() != TRASH.lower():
        return "ham"
    return None


def record(s: Session, user_id: int, message_ids: Sequence[int], klass: str) -> None:
    """One INSERT for a COPY/MOVE's requests, in its transaction; a request already
    pending for the same message and class is kept as it is (the imap role may only INSERT)."""
    if message_ids:
        s.execute(text(
            "INSERT INTO learn_requests (user_id, message_id, klass) "
            "SELECT :u, m, :c FROM unnest(CAST(:ids AS bigint[])) AS m "
            "ON CONFLICT DO NOTHING"),
            {"u": user_id, "c": klass, "ids": sorted(set(message_ids))})


def pending(s: Session, user_id: int, message_id: int, klass: str) -> bool:
    """Whether the request still waits (False: learnt already, or given up on)."""
    return s.execute(text(
        "SELECT 1 FROM learn_requests WHERE user_id = :u AND message_id = :m AND klass = :c"),
        {"u": user_id, "m": message_id, "c": klass}).first() is not None


def finish(s: Session, user_id: int, message_id: int, klass: str) -> None:
    """Done (learnt, already learnt, message gone, or dropped): the row goes."""
    s.execute(text(
        "DELETE FROM learn_requests WHERE user_id = :u AND message_id = :m AND klass = :c"),
        {"u": user_id, "m": message_id, "c": klass})


def failed(s: Session, user_id: int, message_id: int, klass: str, now: datetime) -> None:
    """A failed submission: one more attempt, and signalled again now (by the retry entry)."""
    s.execute(text(
        "UPDATE learn_requests SET attempts = attempts + 1, signalled_at = :now "
        "WHERE user_id = :u AND message_id = :m AND klass = :c"),
        {"u": user_id, "m": message_id, "c": klass, "now": now})


def due(s: Session, now: datetime, stale_before: datetime, limit: int) -> list[PendingRequest]:
    """Requests last signalled before ``stale_before``, marked signalled ``now``.

    SKIP LOCKED: several workers split the rows. The caller signals them in
    the same transaction, so a failed XADD rolls the mark back.
    """
    rows = s.execute(text(
        "WITH d AS (SELECT user_id, message_id, klass FROM learn_requests "
        "WHERE signalled_at < :stale ORDER BY signalled_at LIMIT :n FOR UPDATE SKIP LOCKED) "
        "UPDATE learn_requests r SET signalled_at = :now FROM d "
        "WHERE r.user_id = d.user_id AND r.message_id = d.message_id AND r.klass = d.klass "
        "RETURNING r.user_id, r.message_id, r.klass, r.attempts"),
        {"stale": stale_before, "n": limit, "now": now}).all()
    return [PendingRequest(int(r[0]), int(r[1]), str(r[2]), int(r[3])) for r in rows]


def message_for_learning(s: Session, user_id: int, message_id: int) -> bytes | None:
    """The message's bytes while ``user_id`` still has it in some mailbox, else None.

    A message the user deleted meanwhile is not learnt; the ownership check
    keeps a forged stream entry from reading anyone else's mail.
    """
    row = s.execute(text(
        "SELECT m.blob FROM messages m WHERE m.id = :m AND EXISTS ("
        "SELECT 1 FROM mailbox_entries e JOIN mailboxes b ON b.id = e.mailbox_id "
        "WHERE e.message_id = m.id AND b.user_id = :u)"), {"m": message_id, "u": user_id}).first()
    return bytes(row[0]) if row is not None and row[0] is not None else None
