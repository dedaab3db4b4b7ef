"""Selected-state commands: FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE, CLOSE, UNSELECT, CHECK."""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from postroom_imap.flow import attach, detach
from postroom_imap.policy import FetchRow, NoSuchMailbox, Refusal
from postroom_imap.qresync import vanished_earlier
from postroom_imap.render import (
    FlagsLine,
    canonical_flag,
    fetch_items,
    flags_line_renderer,
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
    Store,
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
    """One line per row the session knows; the sequence number is the UID's index, inlined."""
    uids, count, out = box.uids, len(box.uids), []
    for uid, flags, modseq in rows:
        i = bisect_left(uids, uid)
        if i < count and uids[i] == uid:
            out.append(line(i + 1, uid, flags, modseq))
    return out


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
        found = await store.search(box.mailbox_id, key, box.max_uid)
        numbers = []
        for uid, _ in found:
            number = uid if command.uid else box.seq_of(uid)
            if number is not None:
                numbers.append(number)
        line = b"* SEARCH" + b"".join(b" %d" % n for n in numbers)
        if found and _uses_modseq(args.key):
            self.condstore = True
            line += b" (MODSEQ %d)" % max(m for _, m in found)
        self.write(line + b"\r\n")
        return ("OK", "SEARCH completed")

    async def do_fetch(self, command: Command) -> Reply:
        store, box = self._box()
        args = command.args
        assert isinstance(args, Fetch)
        if any(i.name.startswith("BINARY") for i in args.items):
            return ("BAD", "BINARY is not supported")
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
                                             meta=want_meta, tree=want_tree,
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
        for row in rows:
            seq = box.seq_of(row.uid)
            if seq is None:
                continue
            if row.seen_set:
                box.own[row.uid] = row.modseq
            data = fetch_items(row, args.items, with_uid=uid, with_modseq=self.condstore)
            out.append(b"* %d FETCH %s\r\n" % (seq, data))
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
        result = await store.store(box.mailbox_id, uids, args.mode, flags, args.unchangedsince)
        changed = set(result.changed)
        out = []
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
                items = [b"FLAGS (" + " ".join(row.flags).encode("utf-8") + b")"]
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
