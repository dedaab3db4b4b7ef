"""The selected mailbox as one session sees it: the sequence-number map and pending updates.

Sequence numbers are this session's view (RFC 3501 2.3.1.2): they change only
when the session is told, through EXISTS and EXPUNGE responses sent at the
points RFC 3501 7.4.1 allows. Expunges seen while a FETCH, STORE or SEARCH
runs are held back until the next point where they may be announced.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Sequence

from postroom_imap.policy import Changes, SelectState
from postroom_imap.render import SYSTEM_FLAGS, flag_list
from postroom_imap.syntax_lexer import SyntaxProblem
from postroom_imap.syntax_types import (
    SearchAll,
    SearchAnd,
    SearchFlag,
    SearchKey,
    SearchNot,
    SearchOr,
    SearchSet,
    SequenceSet,
)


class BadSequence(SyntaxProblem):
    """A sequence number beyond the mailbox (the reply is BAD)."""


def compress(uids: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted UIDs as inclusive ranges."""
    out: list[tuple[int, int]] = []
    for uid in uids:
        if out and uid == out[-1][1] + 1:
            out[-1] = (out[-1][0], uid)
        else:
            out.append((uid, uid))
    return out


def uid_set_text(uids: Sequence[int]) -> str:
    """``1:3,7`` for COPYUID, APPENDUID and MODIFIED."""
    return ",".join(f"{a}" if a == b else f"{a}:{b}" for a, b in compress(uids))


def vanished_line(spans: Sequence[tuple[int, int]], *, earlier: bool) -> bytes:
    """``* VANISHED [(EARLIER)] uid-set`` for UID ranges (RFC 7162 3.2.10)."""
    text = ",".join(f"{a}" if a == b else f"{a}:{b}" for a, b in spans)
    return b"* VANISHED %s%s\r\n" % (b"(EARLIER) " if earlier else b"", text.encode("ascii"))


class Selected:
    """One session's view of its selected mailbox."""

    def __init__(self, state: SelectState, readonly: bool) -> None:
        self.mailbox_id = state.mailbox_id
        self.name = state.name
        self.readonly = readonly
        self.uidvalidity = state.uidvalidity
        self.uidnext = state.uidnext
        self.highestmodseq = state.highestmodseq
        # 4 bytes a message ("L" is 8 on 64-bit Linux): 100,000 messages cost 400 kB a session
        uids = state.uids
        self.uids = uids if isinstance(uids, array) and uids.typecode == "I" else array("I", uids)
        self.own: dict[int, int] = {}  # uid -> modseq of changes this session made itself
        self.held_expunges: set[int] = set()
        self.dirty = False
        # the keywords FLAGS announced to this session
        self.keywords: set[str] = set(state.keywords)
        # this session's \Recent UIDs (RFC 3501 2.3.2) as inclusive ranges: those the
        # SELECT took (or, read-only, found untaken), then those new ones a sync took
        self.recent: list[tuple[int, int]] = []
        if state.recent_from is not None and self.uids and state.recent_from <= self.uids[-1]:
            self.recent = [(state.recent_from, self.uids[-1])]
        # SEARCHRES ``$`` (RFC 5182): the UIDs a SEARCH RETURN (SAVE) kept, in this selection
        # only; expunged ones drop out as this view forgets them
        self.saved: list[int] = []
        # QRESYNC enabled: expunges are told as ``* VANISHED uids`` (RFC 7162 3.2.10)
        self.vanished = False
        # an IMAP4rev2 session (RFC 9051) has no \\Recent: see :meth:`drop_recent`
        self.track_recent = True
        # UID ranges this session took \\Recent of by its own APPEND, until the view has them
        self.pending_recent: list[tuple[int, int]] = []

    def drop_recent(self) -> None:
        """No \\Recent in this view from now on (``ENABLE IMAP4rev2``, RFC 9051 Appendix E)."""
        self.recent = []
        self.pending_recent = []
        self.track_recent = False

    def took_recent(self, first: int, last: int) -> None:
        """This session's APPEND took \\Recent of UIDs ``first``..``last`` (RFC 3501 2.3.2).

        They join :attr:`recent` once the view has every one of them (the
        fast path of :meth:`own_change`, or the next sync): only then does the
        RECENT count include them, and an expunge meanwhile cannot lose them.
        """
        if self.track_recent and (first, last) not in self.pending_recent:
            self.pending_recent.append((first, last))

    def claim_pending_recent(self) -> bool:
        """Move the taken ranges the view now covers into :attr:`recent`; True if any moved."""
        if not self.pending_recent:
            return False
        top = self.max_uid
        ready = [span for span in self.pending_recent if span[1] <= top]
        if not ready:
            return False
        self.pending_recent = [span for span in self.pending_recent if span[1] > top]
        merged: list[tuple[int, int]] = []
        for a, b in sorted(self.recent + ready):
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.recent = merged
        return True

    def __len__(self) -> int:
        return len(self.uids)

    @property
    def max_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def is_recent(self, uid: int) -> bool:
        recent = self.recent
        if not recent:
            return False
        i = bisect.bisect_right(recent, (uid, 1 << 62)) - 1
        return i >= 0 and recent[i][0] <= uid <= recent[i][1]

    def recent_count(self) -> int:
        """How many messages of this view are \\Recent in this session (``* n RECENT``)."""
        return sum(bisect.bisect_right(self.uids, b) - bisect.bisect_left(self.uids, a)
                   for a, b in self.recent)

    def with_recent(self, uid: int, flags: tuple[str, ...]) -> tuple[str, ...]:
        """``flags`` with ``\\Recent`` added when ``uid`` is recent in this session."""
        return (*flags, "\\Recent") if self.is_recent(uid) else flags

    def flags_lines(self) -> list[bytes]:
        """``* FLAGS`` and ``* OK [PERMANENTFLAGS]`` with every keyword announced so far."""
        keywords = sorted(self.keywords)
        permanent = [] if self.readonly else [*SYSTEM_FLAGS, *keywords, "\\*"]
        return [b"* FLAGS %s\r\n" % flag_list([*SYSTEM_FLAGS, *keywords]),
                b"* OK [PERMANENTFLAGS %s] flags permitted\r\n" % flag_list(permanent)]

    def announce_keywords(self, keywords: Sequence[str] | None) -> list[bytes]:
        """The FLAGS lines when ``keywords`` holds one not announced yet (before any FETCH)."""
        if not keywords or self.keywords.issuperset(keywords):
            return []
        self.keywords.update(keywords)
        return self.flags_lines()

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def saved_uids(self) -> list[int]:
        """The ``$`` messages still in this view (an empty set is no error, RFC 5182 2.1)."""
        return [u for u in self.saved if self.seq_of(u) is not None]

    def by_sequence(self, sequence: SequenceSet) -> list[int]:
        """UIDs of the messages a sequence-number set names; BAD when it names none that exist."""
        if sequence.saved:
            return self.saved_uids()
        count = len(self.uids)
        spans = sequence.resolve(count)
        if count == 0 or (spans and spans[-1][1] > count):
            raise BadSequence("invalid message sequence number")
        out: list[int] = []
        for a, b in spans:
            out.extend(self.uids[a - 1:b])
        return out

    def by_uid(self, sequence: SequenceSet) -> list[int]:
        """Known UIDs within a UID set (``*`` is the largest UID; none is not an error)."""
        if sequence.saved:
            return self.saved_uids()
        if not self.uids:
            return []
        out: list[int] = []
        for a, b in sequence.resolve(self.max_uid):
            lo = bisect.bisect_left(self.uids, a)
            hi = bisect.bisect_right(self.uids, b)
            out.extend(self.uids[lo:hi])
        return out

    def bind_search(self, key: SearchKey) -> SearchKey:
        """The key with every message set replaced by concrete UID ranges.

        ``\\Recent`` (RECENT, OLD, NEW) is this session's, not the store's: it
        becomes the session's recent UID ranges.
        """
        if isinstance(key, SearchFlag) and key.flag.lower() == "\\recent":
            if not self.track_recent:
                # IMAP4rev2 has neither \\Recent nor these keys (RFC 9051 6.4.4, section 9
                # search-key), as it has no STATUS RECENT: the reply is BAD, nothing is searched
                raise SyntaxProblem("RECENT, NEW and OLD are not IMAP4rev2 search keys")
            recent = SearchSet(SequenceSet(tuple(self.recent)), uid=True) if self.recent \
                else SearchNot(SearchAll())
            return recent if key.present else SearchNot(recent)
        if isinstance(key, SearchSet):
            if key.sequence.saved:
                spans = compress(self.saved_uids())
            elif key.uid:
                spans = key.sequence.resolve(self.max_uid) if self.uids else []
            else:
                count = len(self.uids)
                uids: list[int] = []
                for a, b in key.sequence.resolve(count) if count else []:
                    uids.extend(self.uids[a - 1:b])
                spans = compress(uids)
            return SearchSet(SequenceSet(tuple(spans)), uid=True)
        if isinstance(key, SearchAnd):
            return SearchAnd(tuple(self.bind_search(k) for k in key.keys))
        if isinstance(key, SearchOr):
            return SearchOr(self.bind_search(key.left), self.bind_search(key.right))
        if isinstance(key, SearchNot):
            return SearchNot(self.bind_search(key.key))
        return key

    def own_change(self, before: int, after: int, new_uid: int | None = None) -> list[bytes] | None:
        """This session committed a change taking HIGHESTMODSEQ from ``before`` to ``after``.

        When ``before`` is the HIGHESTMODSEQ this view is at, no other change
        came in between (both were read under the mailbox's row lock), so the
        view moves to ``after`` without asking the store: the lines to send
        (EXISTS for an APPENDed ``new_uid``). None when something else may have
        happened: the caller then marks the view dirty and syncs as before.
        """
        if before != self.highestmodseq or self.held_expunges:
            return None
        self.highestmodseq = after
        self.own.clear()  # nothing up to ``after`` will come back from the store
        if new_uid is not None and new_uid > self.max_uid:
            self.uids.append(new_uid)
            self.uidnext = max(self.uidnext, new_uid + 1)
            return [b"* %d EXISTS\r\n" % len(self.uids)]
        return []

    def knows(self, modseq: int) -> bool:
        """True when every change up to ``modseq`` is already in this view."""
        return modseq <= self.highestmodseq and not self.held_expunges

    def forget(self, uids: Sequence[int]) -> list[bytes]:
        """Remove expunged UIDs; the ``* n EXPUNGE`` lines, highest number first.

        With QRESYNC enabled, one ``* VANISHED`` line naming the UIDs instead.
        """
        lines = []
        removed = []
        for uid in sorted(set(uids), reverse=True):
            seq = self.seq_of(uid)
            if seq is None:
                continue
            del self.uids[seq - 1]
            self.held_expunges.discard(uid)
            self.own.pop(uid, None)
            removed.append(uid)
            lines.append(b"* %d EXPUNGE\r\n" % seq)
        if removed:
            self._drop_saved_and_recent(removed)
        if self.vanished:
            return [vanished_line(compress(sorted(removed)), earlier=False)] if removed else []
        return lines

    def _drop_saved_and_recent(self, removed: Sequence[int]) -> None:
        """Expunged UIDs leave ``$`` and this session's \\Recent ranges.

        A recent range shrinks to the first and last UIDs still in the view and
        goes when none is left; a gap inside a range names no message (UIDs are
        never reused), so ranges never split and their number never grows.
        """
        gone = set(removed)
        if self.saved:
            self.saved = [u for u in self.saved if u not in gone]
        if self.recent:
            uids = self.uids
            kept: list[tuple[int, int]] = []
            for a, b in self.recent:
                lo = bisect.bisect_left(uids, a)
                hi = bisect.bisect_right(uids, b)
                if lo < hi:
                    kept.append((uids[lo], uids[hi - 1]))
            self.recent = kept

    def apply(self, changes: Changes, *, allow_expunge: bool, condstore: bool) -> list[bytes]:
        """Untagged responses announcing ``changes``; expunges wait unless ``allow_expunge``."""
        # a keyword new to this session is announced before any FETCH shows it
        lines: list[bytes] = self.announce_keywords(changes.keywords)
        gone = set(self.held_expunges)
        if changes.present is not None:
            keep = set(changes.present)
            gone.update(u for u in self.uids if u not in keep)
        if allow_expunge:
            lines += self.forget(sorted(gone))
        else:
            self.held_expunges = gone
        for update in changes.flags:
            if update.uid in gone or self.own.get(update.uid) == update.modseq:
                continue
            seq = self.seq_of(update.uid)
            if seq is None:
                continue
            data = b"UID %d FLAGS %s" % (update.uid,
                                         flag_list(self.with_recent(update.uid, update.flags)))
            if condstore:
                data += b" MODSEQ (%d)" % update.modseq
            lines.append(b"* %d FETCH (%s)\r\n" % (seq, data))
        new = [u for u in changes.new_uids if u > self.max_uid]
        if new:
            self.uids.extend(new)
            lines.append(b"* %d EXISTS\r\n" % len(self.uids))
            claimed = self.claim_pending_recent()  # this session's own APPEND took them
            if claimed and not changes.recent and self.track_recent:
                lines.append(b"* %d RECENT\r\n" % self.recent_count())
            if changes.recent and self.track_recent:
                spans = compress(changes.recent)
                last = self.recent[-1][1] if self.recent else None
                if last is not None and (last + 1 >= spans[0][0] or bisect.bisect_right(
                        self.uids, last) == bisect.bisect_left(self.uids, spans[0][0])):
                    # contiguous with what this session already took (or only expunged UIDs
                    # between): one range stays one
                    spans[0] = (self.recent.pop()[0], spans[0][1])
                self.recent += spans
                lines.append(b"* %d RECENT\r\n" % self.recent_count())
        self.uidnext = max(self.uidnext, changes.uidnext)
        if not self.held_expunges:
            self.highestmodseq = max(self.highestmodseq, changes.highestmodseq)
        self.own.clear()
        return lines
