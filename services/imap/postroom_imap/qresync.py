"""QRESYNC (RFC 7162): what a SELECT (QRESYNC ...) and a UID FETCH (... VANISHED) tell.

The store remembers each expunged UID with its modseq
(:mod:`postroom.store.vanished`); these helpers turn what it answers into
``* VANISHED (EARLIER)`` and ``* n FETCH (UID FLAGS MODSEQ)`` lines for one
session's view. UIDs still in the session's view are never reported as
vanished here: they are announced by ``* VANISHED`` at the next point where
expunges may be told, which moves the view's sequence numbers.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from postroom_imap.policy import UserStore
from postroom_imap.selected import Selected, compress, vanished_line
from postroom_imap.syntax_types import Qresync, SequenceSet

Ranges = list[tuple[int, int]]


def outside_view(spans: Sequence[tuple[int, int]], box: Selected) -> Ranges:
    """``spans`` without the UIDs ``box`` still shows."""
    out: Ranges = []
    uids = box.uids
    for a, b in spans:
        lo = a
        for i in range(bisect_left(uids, a), bisect_right(uids, b)):
            if uids[i] > lo:
                out.append((lo, uids[i] - 1))
            lo = uids[i] + 1
        if lo <= b:
            out.append((lo, b))
    return out


def _spans(box: Selected, known: SequenceSet | None) -> Ranges | None:
    if known is None:
        return None
    if known.saved:  # UID FETCH $ (... VANISHED): the SEARCHRES set, expunged ones gone
        return compress(box.saved_uids())
    top = max(box.uidnext - 1, box.max_uid)
    return list(known.resolve(top)) if top else []


async def vanished_earlier(store: UserStore, box: Selected, since: int,
                           known: SequenceSet | None) -> bytes:
    """The ``* VANISHED (EARLIER)`` line for expunges after ``since`` (b"" when none)."""
    spans = _spans(box, known)
    if spans == []:
        return b""
    gone = outside_view(await store.vanished(box.mailbox_id, since, spans), box)
    return vanished_line(gone, earlier=True) if gone else b""


async def resync(store: UserStore, box: Selected, params: Qresync) -> bytes:
    """What SELECT (QRESYNC ...) adds when the UIDVALIDITY matches (RFC 7162 3.2.5).

    The expunges and the flag changes since the client's modseq, limited to
    its known UIDs when it gave them.
    """
    out = [await vanished_earlier(store, box, params.modseq, params.known_uids)]
    if params.modseq < box.highestmodseq:
        uids = box.by_uid(params.known_uids) if params.known_uids is not None else list(box.uids)
        if uids:
            rows = await store.fetch_flags(box.mailbox_id, uids, changedsince=params.modseq)
            for uid, flags, modseq in rows:
                seq = box.seq_of(uid)
                if seq is not None:
                    if box.is_recent(uid):  # \Recent is this session's (RFC 3501 2.3.2)
                        flags = f"{flags} \\Recent".lstrip()
                    out.append(b"* %d FETCH (UID %d FLAGS (%s) MODSEQ (%d))\r\n"
                               % (seq, uid, flags.encode("utf-8"), modseq))
    return b"".join(out)
