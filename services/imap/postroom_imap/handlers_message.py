"""Selected-state commands: FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE, CLOSE, UNSELECT, CHECK."""

from __future__ import annotations

import functools
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from postroom_imap.flow import attach, detach
from postroom_imap.ordering import (
    SortItem,
    render_threads,
    sort_items,
    thread_orderedsubject,
    thread_references,
)
from postroom_imap.policy import FetchRow, NoSuchMailbox, Refusal, TooManyKeywords
from postroom_imap.qresync import vanished_earlier
from postroom_imap.render import (
    FetchPlan,
    FlagsLine,
    canonical_flag,
    flags_line_renderer,
    header_only,
    needs_blob,
    needs_meta,
    needs_tree,
)
from postroom_imap.selected import Selected, uid_set_text
from postroom_imap.syntax import Command
from postroom_imap.syntax_types import (
    Copy,
    Expunge,
    Fetch,
    Search,
    SearchAnd,
    SearchKey,
    SearchModseq,
    SearchNot,
    SearchOr,
    SequenceSet,
    Sort,
    Store,
    Thread,
)

if TYPE_CHECKING:
    from postroom_imap.host import CommandHost
    from postroom_imap.policy import UserStore
else:
    CommandHost = object  # a Protocol for mypy; at run time the host is IMAPServer itself

Reply = tuple[str, str]
# messages per store round trip: small when bodies come along, to bound memory per session
BODY_BATCH = 50
META_BATCH = 2000
# UID/FLAGS/MODSEQ only: an index range scan and ~40 bytes a line
FLAGS_BATCH = 10000


def _flag_lines(box: Selected, rows: list[tuple[int, str, int]], line: FlagsLine) -> list[bytes]:
    """One line per row the session knows, numbered by the UID's index in the session's view.

    The usual case (a FETCH 1:* on a mailbox nothing removed meanwhile) is a
    run of the view's own UIDs: checked in one comparison of the two UID
    lists, then numbered in one pass (:meth:`FlagsLine.many`). Otherwise, or
    when a row may be this session's \\Recent, each row is looked up alone.
    """
    if not rows:
        return []
    uids, count = box.uids, len(box.uids)
    first = bisect_left(uids, rows[0][0])
    last = first + len(rows)
    recent = box.is_recent if box.recent else None
    if (last <= count and (recent is None or rows[-1][0] < box.recent[0][0])
            and uids[first:last].tolist() == [row[0] for row in rows]):
        return line.many(first + 1, rows)
    out = []
    for uid, flags, modseq in rows:
        i = bisect_left(uids, uid)
        if i < count and uids[i] == uid:
            if recent is not None and recent(uid):
                flags = f"{flags} \\Recent" if flags else "\\Recent"
            out.append(line(i + 1, uid, flags, modseq))
    return out


# SORT/THREAD on more messages than this run in the cpu pool, not on the reactor
INLINE_ORDERING = 2000


def _sort_line(items: list[SortItem], numbers: dict[int, int], criteria: tuple[str, ...]) -> bytes:
    ordered = sort_items(items, criteria)
    return b"* SORT" + b"".join(b" %d" % numbers[i.uid] for i in ordered) + b"\r\n"


def _thread_line(items: list[SortItem], numbers: dict[int, int], algorithm: str) -> bytes:
    roots = thread_references(items) if algorithm == "REFERENCES" else thread_orderedsubject(items)
    data = render_threads(roots, numbers.get)
    return b"* THREAD" + (b" " + data if data else b"") + b"\r\n"


class ReadOnly(Refusal):
    code = "READ-ONLY"
    text = "mailbox is selected read-only"


def _uses_modseq(key: SearchKey) -> bool:
    if isinstance(key, SearchModseq):
        return True
    if isinstance(key, SearchAnd):
        return any(_uses_modseq(k) for k in key.keys)
    if isinstance(key, SearchOr):
        return _uses_modseq(key.left) or _uses_modseq(key.right)
    if isinstance(key, SearchNot):
        return _uses_modseq(key.key)
    return False


class MessageCommands(CommandHost):
    """Mixed into IMAPServer; uses only what :class:`~postroom_imap.host.CommandHost` lists."""

    def _box(self) -> tuple[UserStore, Selected]:
        assert self.store is not None and self.selected is not None
        return self.store, self.selected

    def _targets(self, command: Command, sequence: SequenceSet) -> list[int]:
        _, box = self._box()
        return box.by_uid(sequence) if command.uid else box.by_sequence(sequence)

    async def do_check(self, command: Command) -> Reply:
        return ("OK", "CHECK completed")

    async def do_close(self, command: Command) -> Reply:
        store, box = self._box()
        if not box.readonly:
            await store.expunge(box.mailbox_id, None)
        self.drop_selected()
        return ("OK", "CLOSE completed")

    async def do_unselect(self, command: Command) -> Reply:
        self.drop_selected()
        return ("OK", "UNSELECT completed")

    async def do_expunge(self, command: Command) -> Reply:
        store, box = self._box()
        if box.readonly:
            raise ReadOnly()
        args = command.args
        assert isinstance(args, Expunge)
        limit = box.by_uid(args.sequence) if args.sequence is not None else None
        if limit is not None and not limit:
            return ("OK", "EXPUNGE completed")
        gone = await store.expunge(box.mailbox_id, limit)
        self.write(b"".join(box.forget(gone)))
        self.absorb_own_changes(box)
        return ("OK", "EXPUNGE completed")

    async def do_search(self, command: Command) -> Reply:
        store, box = self._box()
        args = command.args
        assert isinstance(args, Search)
        key = box.bind_search(args.key)
        returns = args.returns
        if returns is None and self.rev2:
            returns = ("ALL",)  # RFC 9051 6.4.4: SEARCH is answered with ESEARCH
        saving = returns is not None and "SAVE" in returns
        try:
            found = await store.search(box.mailbox_id, key, box.max_uid)
        except Exception:
            if saving:
                box.saved = []  # a failed SEARCH ... (SAVE) leaves $ empty (RFC 5182 2.1)
            raise
        modseq = max((m for _, m in found), default=0) if _uses_modseq(args.key) else None
        if modseq:
            self.condstore = True
        if returns is not None:
            self.write(self._esearch(command, box, found, returns, modseq))
            return ("OK", "SEARCH completed" + (", result saved" if saving else ""))
        numbers = []
        for uid, _ in found:
            number = uid if command.uid else box.seq_of(uid)
            if number is not None:
                numbers.append(number)
        line = b"* SEARCH" + b"".join(b" %d" % n for n in numbers)
        if found and modseq:
            line += b" (MODSEQ %d)" % modseq
        self.write(line + b"\r\n")
        return ("OK", "SEARCH completed")

    def _esearch(self, command: Command, box: Selected, found: list[tuple[int, int]],
                 returns: tuple[str, ...], modseq: int | None) -> bytes:
        """The ESEARCH response (RFC 4731) and the SAVE of ``$`` (RFC 5182)."""
        seen = [(u, m) for u, m in found if box.seq_of(u) is not None]
        uids = [u for u, _ in seen]
        numbers = uids if command.uid else [n for n in map(box.seq_of, uids) if n is not None]
        wanted = set(returns)
        if "SAVE" in wanted:
            if wanted & {"MIN", "MAX"} and not wanted & {"ALL", "COUNT"}:
                # SAVE with MIN and/or MAX alone keeps just those messages (RFC 5182 2.4)
                keep = {uids[0] if "MIN" in wanted else None,
                        uids[-1] if "MAX" in wanted else None} if uids else set()
                box.saved = sorted(u for u in keep if u is not None)
            else:
                box.saved = list(uids)
            if wanted == {"SAVE"}:
                return b""  # SAVE alone: no ESEARCH response
        parts = [b'* ESEARCH (TAG "%s")' % command.tag.encode("ascii")]
        if command.uid:
            parts.append(b"UID")
        if numbers and "MIN" in wanted:
            parts.append(b"MIN %d" % numbers[0])
        if numbers and "MAX" in wanted:
            parts.append(b"MAX %d" % numbers[-1])
        if numbers and "ALL" in wanted:
            parts.append(b"ALL " + uid_set_text(numbers).encode("ascii"))
        if "COUNT" in wanted:
            parts.append(b"COUNT %d" % len(numbers))
        if numbers and modseq:
            if not wanted & {"ALL", "COUNT"}:
                # MIN/MAX alone: the highest mod-sequence of those returned (RFC 7162 3.1.5)
                ends = {seen[0], seen[-1]} if wanted >= {"MIN", "MAX"} else (
                    {seen[0]} if "MIN" in wanted else {seen[-1]})
                modseq = max(m for _, m in ends)
            parts.append(b"MODSEQ %d" % modseq)
        return b" ".join(parts) + b"\r\n"

    async def _ordered(self, command: Command, key: SearchKey,
                       work: Callable[[list[SortItem], dict[int, int]], bytes]) -> bytes:
        """``work(items, numbers)`` on the matching messages' cached metadata; ``numbers``
        maps each UID to what the reply names it by (a sequence number, or the UID)."""
        store, box = self._box()
        found = await store.ordering(box.mailbox_id, box.bind_search(key), box.max_uid)
        numbers: dict[int, int] = {}
        items = []
        for item in found:
            seq = box.seq_of(item.uid)
            if seq is not None:
                numbers[item.uid] = item.uid if command.uid else seq
                items.append(item)
        if len(items) <= INLINE_ORDERING:
            return work(items, numbers)
        # a big mailbox: the other sessions of this process go on meanwhile
        data: bytes = await store.offload(functools.partial(work, items, numbers))
        return data

    async def do_sort(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, Sort)
        self.write(await self._ordered(command, args.key, functools.partial(
            _sort_line, criteria=args.criteria)))
        return ("OK", "SORT completed")

    async def do_thread(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, Thread)
        self.write(await self._ordered(command, args.key, functools.partial(
            _thread_line, algorithm=args.algorithm)))
        return ("OK", "THREAD completed")

    async def do_fetch(self, command: Command) -> Reply:
        store, box = self._box()
        args = command.args
        assert isinstance(args, Fetch)
        uids = self._targets(command, args.sequence)
        if args.changedsince is not None or any(i.name == "MODSEQ" for i in args.items):
            self.condstore = True
        if args.vanished:  # RFC 7162 3.2.6
            if not (command.uid and self.qresync_enabled and args.changedsince is not None):
                return ("BAD", "VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC")
            self.write(await vanished_earlier(store, box, args.changedsince,
                                                      args.sequence))
        want_blob = any(needs_blob(i) for i in args.items)
        # RFC822.HEADER/TEXT need the header's end, which the cached analysis has
        want_meta = any(needs_meta(i) or i.name in ("RFC822.HEADER", "RFC822.TEXT")
                        for i in args.items)
        # the whole analysis only for parts and structures; the message's own header and
        # text need only the offsets of its top part
        want_tree = any(needs_tree(i) for i in args.items)
        # header sections only (a message list's FETCH): the blob up to the header's end
        want_head = want_blob and not want_tree and all(header_only(i) for i in args.items)
        mark_seen = not box.readonly and any(i.sets_seen for i in args.items)
        line = None if mark_seen else flags_line_renderer(
            args.items, with_uid=command.uid, with_modseq=self.condstore)
        batch = BODY_BATCH if want_blob else FLAGS_BATCH if line is not None else META_BATCH
        transport: Any = getattr(self, "transport", None)
        gate = attach(transport) if len(uids) > batch else None
        try:
            for start in range(0, len(uids), batch):
                chunk = uids[start:start + batch]
                if line is not None:
                    flag_rows = await store.fetch_flags(box.mailbox_id, chunk,
                                                        changedsince=args.changedsince)
                    if self.selected is not box:
                        break
                    self.write(b"".join(_flag_lines(box, flag_rows, line)))
                else:
                    rows = await store.fetch(box.mailbox_id, chunk, blob=want_blob,
                                             meta=want_meta or want_head, tree=want_tree,
                                             head=want_head,
                                             mark_seen=mark_seen,
                                             changedsince=args.changedsince)
                    if self.selected is not box:
                        break
                    self.write(b"".join(self._fetch_lines(box, rows, args, command.uid)))
                if gate is not None:
                    # the peer reads slower than we query: hold the next batch back
                    await gate.drained()
                    if gate.stopped or self.selected is not box:
                        break
        finally:
            detach(transport, gate)
        return ("OK", "FETCH completed")

    def _fetch_lines(self, box: Selected, rows: list[FetchRow], args: Fetch,
                     uid: bool) -> list[bytes]:
        out = []
        render = FetchPlan(args.items, with_uid=uid, with_modseq=self.condstore).render
        for row in rows:
            seq = box.seq_of(row.uid)
            if seq is None:
                continue
            if row.seen_set:
                box.own[row.uid] = row.modseq
            if box.recent and box.is_recent(row.uid):
                out.append(b"* %d FETCH %s\r\n" % (seq, render(row, False,
                                                               (*row.flags, "\\Recent"))))
            else:
                out.append(b"* %d FETCH %s\r\n" % (seq, render(row)))
        return out

    async def do_store(self, command: Command) -> Reply:
        store, box = self._box()
        if box.readonly:
            raise ReadOnly()
        args = command.args
        assert isinstance(args, Store)
        if args.unchangedsince is not None:
            self.condstore = True
        uids = self._targets(command, args.sequence)
        flags = [canonical_flag(f) for f in args.flags if f.lower() != "\\recent"]
        if not uids:
            return ("OK", "STORE completed")
        try:
            result = await store.store(box.mailbox_id, uids, args.mode, flags,
                                       args.unchangedsince)
        except TooManyKeywords:
            self.log.info("keyword refused", reason="mailbox keyword list full",
                          mailbox_id=box.mailbox_id)
            self.meter.error("keyword_limit")
            raise
        changed = set(result.changed)
        # a keyword the mailbox never had: FLAGS first (the other sessions' syncs do the same)
        out = box.announce_keywords(result.keywords)
        for row in result.rows:
            if row.uid in changed:
                box.own[row.uid] = row.modseq
            seq = box.seq_of(row.uid)
            if seq is None:
                continue
            if args.silent:
                # .SILENT still reports new mod-sequences under CONDSTORE (RFC 7162 3.2)
                if not (self.condstore and row.uid in changed):
                    continue
                items = [b"MODSEQ (%d)" % row.modseq]
            else:
                shown = box.with_recent(row.uid, row.flags)
                items = [b"FLAGS (" + " ".join(shown).encode("utf-8") + b")"]
                if self.condstore:
                    items.append(b"MODSEQ (%d)" % row.modseq)
            if command.uid or self.qresync_enabled:  # RFC 7162 3.2.4 (errata 1807)
                items.insert(0, b"UID %d" % row.uid)
            out.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items)))
        self.write(b"".join(out))
        self.absorb_own_changes(box, fallback_dirty=bool(changed))
        if result.modified:
            numbers = result.modified if command.uid else [
                n for n in (box.seq_of(u) for u in result.modified) if n is not None]
            return ("OK", f"[MODIFIED {uid_set_text(sorted(numbers))}] conditional STORE failed")
        return ("OK", "STORE completed")

    async def _copy(self, command: Command, move: bool) -> Reply:
        store, box = self._box()
        args = command.args
        assert isinstance(args, Copy)
        if move and box.readonly:
            raise ReadOnly()
        uids = self._targets(command, args.sequence)
        if not uids:
            return ("OK", f"{command.name} completed")
        try:
            result = await store.copy(box.mailbox_id, uids, args.mailbox, move)
        except NoSuchMailbox:
            return ("NO", "[TRYCREATE] no such mailbox")
        code = ""
        if result.source:
            code = (f"[COPYUID {result.uidvalidity} {uid_set_text(result.source)} "
                    f"{uid_set_text(result.dest)}] ")
        if move:
            if code:
                self.write(b"* OK " + code.encode("ascii") + b"moved\r\n")
            self.write(b"".join(box.forget(result.source)))
            return ("OK", f"{command.name} completed")
        if args.mailbox == box.name:
            box.dirty = True
        return ("OK", f"{code}{command.name} completed")

    async def do_copy(self, command: Command) -> Reply:
        return await self._copy(command, move=False)

    async def do_move(self, command: Command) -> Reply:
        return await self._copy(command, move=True)
