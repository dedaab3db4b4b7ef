"""QRESYNC's memory of expunges (RFC 7162): which UIDs left a mailbox, at which modseq.

Every path that removes a message from a mailbox (IMAP EXPUNGE and MOVE,
POP3's DELE) calls :func:`remember` in the same transaction, under the
mailbox's row lock, with the HIGHESTMODSEQ the removal took. Entries older
than :data:`RETENTION` are dropped a batch at a time by later expunges of the
same mailbox, raising ``mailboxes.vanished_floor``; a client resyncing from
below the floor is told every UID it may know that is not in the mailbox
(RFC 7162 3.2.5.1 allows more than the exact list), never fewer.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

# how long an expunge is remembered exactly: a device offline longer gets the superset
RETENTION = timedelta(days=90)
# old entries looked at per expunge (the oldest by modseq, on the (mailbox_id, modseq) index)
PRUNE_BATCH = 1000

Ranges = list[tuple[int, int]]


# the record of expunged UIDs, as a statement or a data-modifying WITH item: ``{m}`` the
# mailbox id, ``{ms}`` the modseq, ``{uids}`` a query giving the UIDs in a column ``uid``
REMEMBER_SQL = (
    "INSERT INTO expunged_entries (mailbox_id, uid, modseq) SELECT {m}, uid, {ms} FROM {uids} "
    "ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = EXCLUDED.modseq, "
    "expunged_at = now()")
KEEP = f"{int(RETENTION.total_seconds())} seconds"
# whether anything is old enough to go: one row of the (mailbox_id, modseq) index. ``{m}``
# the mailbox id, ``{keep}`` a parameter bound to :data:`KEEP` (a column of a statement that
# remembers costs no round trip of its own)
OLDEST_SQL = (
    "(SELECT expunged_at < now() - CAST({keep} AS interval) FROM expunged_entries "
    "WHERE mailbox_id = {m} ORDER BY modseq LIMIT 1)")


def remember(s: Session, mailbox_id: int, uids: Sequence[int], modseq: int) -> None:
    """Record ``uids`` as expunged at ``modseq``; forget a batch of entries past RETENTION."""
    if not uids:
        return
    s.execute(text(REMEMBER_SQL.format(m=":m", ms=":ms",
                                       uids="unnest(CAST(:uids AS bigint[])) AS x(uid)")),
              {"m": mailbox_id, "ms": modseq, "uids": list(uids)})
    if s.execute(text("SELECT " + OLDEST_SQL.format(m=":m", keep=":keep")),
                 {"m": mailbox_id, "keep": KEEP}).scalar():
        prune(s, mailbox_id)


def prune(s: Session, mailbox_id: int) -> None:
    """Forget a batch of the oldest entries past RETENTION (when :data:`OLDEST_SQL` said so)."""
    s.execute(text(
        "WITH old AS (SELECT uid FROM expunged_entries WHERE mailbox_id = :m "
        "ORDER BY modseq LIMIT :batch), "
        "gone AS (DELETE FROM expunged_entries e USING old WHERE e.mailbox_id = :m "
        "AND e.uid = old.uid AND e.expunged_at < now() - CAST(:keep AS interval) "
        "RETURNING e.modseq) "
        "UPDATE mailboxes SET vanished_floor = GREATEST(vanished_floor, "
        "(SELECT max(modseq) FROM gone)) WHERE id = :m AND EXISTS (SELECT 1 FROM gone)"),
        {"m": mailbox_id, "batch": PRUNE_BATCH, "keep": KEEP})


def _merge(spans: Ranges) -> Ranges:
    merged: Ranges = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def _within(uids: Sequence[int], spans: Ranges | None) -> list[int]:
    if spans is None:
        return list(uids)
    merged = _merge(spans)
    starts = [a for a, _ in merged]
    out = []
    for u in uids:
        i = bisect.bisect_right(starts, u) - 1
        if i >= 0 and u <= merged[i][1]:
            out.append(u)
    return out


def _compress(uids: Sequence[int]) -> Ranges:
    out: Ranges = []
    for uid in uids:
        if out and uid == out[-1][1] + 1:
            out[-1] = (out[-1][0], uid)
        elif not out or uid > out[-1][1]:
            out.append((uid, uid))
    return out


def vanished(s: Session, mailbox_id: int, since: int, spans: Ranges | None) -> Ranges:
    """UIDs (as ranges) expunged after modseq ``since``, within ``spans`` when given.

    Exact while ``since`` is at or above the mailbox's floor; below it, every
    UID within ``spans`` (or 1 to UIDNEXT-1) that is not in the mailbox now.
    """
    box = s.execute(text("SELECT vanished_floor, uidnext FROM mailboxes WHERE id = :m"),
                    {"m": mailbox_id}).first()
    if box is None:
        return []
    floor, uidnext = int(box[0]), int(box[1])
    if since >= floor:
        rows = s.execute(text("SELECT uid FROM expunged_entries WHERE mailbox_id = :m "
                              "AND modseq > :ms ORDER BY uid"),
                         {"m": mailbox_id, "ms": since}).scalars()
        return _compress(_within([int(u) for u in rows], spans))
    # below the floor: the complement of what is present, within what the client may know
    limit = [(1, uidnext - 1)] if spans is None else spans
    present = [int(u) for u in s.execute(text(
        "SELECT uid FROM mailbox_entries WHERE mailbox_id = :m ORDER BY uid"),
        {"m": mailbox_id}).scalars()]
    out: Ranges = []
    i = 0
    for a, b in _merge(limit):
        b = min(b, uidnext - 1)
        lo = a
        while lo <= b:
            while i < len(present) and present[i] < lo:
                i += 1
            if i < len(present) and present[i] <= b:
                if present[i] > lo:
                    out.append((lo, present[i] - 1))
                lo = present[i] + 1
            else:
                out.append((lo, b))
                break
    return _merge(out)
