"""Mailbox-level commands: SELECT, CREATE, DELETE, RENAME, LIST, STATUS, APPEND, QUOTA, ENABLE."""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING

from postroom import glob
from postroom_imap.list_extended import extended_lines, parse_options, status_values
from postroom_imap.policy import MailboxRow, NewMessage, NoSuchMailbox, Refusal
from postroom_imap.qresync import resync
from postroom_imap.render import canonical_flag, mailbox_name
from postroom_imap.selected import Selected, uid_set_text
from postroom_imap.syntax import Command
from postroom_imap.syntax_types import (
    Append,
    Create,
    Enable,
    ListArgs,
    MailboxArg,
    QuotaRoot,
    Rename,
    Select,
    Status,
)

if TYPE_CHECKING:
    from postroom_imap.host import CommandHost
    from postroom_imap.policy import UserStore
else:
    CommandHost = object  # a Protocol for mypy; at run time the host is IMAPServer itself

DELIMITER = "/"
Reply = tuple[str, str]
_SPECIAL_USES = {u.lower(): u for u in ("\\All", "\\Archive", "\\Drafts", "\\Flagged",
                                        "\\Junk", "\\Sent", "\\Trash")}


class TryCreate(Refusal):
    code = "TRYCREATE"
    text = "no such mailbox"


# bounds on one LIST/LSUB pattern (after the reference is prepended) and on one command;
# the matching is linear (postroom.glob), these keep its constant small
MAX_LIST_PATTERN = 1024
MAX_LIST_WILDCARDS = 32  # counted after runs (``**``, ``%*``) collapse into one
MAX_LIST_PATTERNS = 64
# names x patterns (in characters) matched on the reactor; a larger LIST runs in a thread
# (about 20 ms of matching and rendering at worst: a few hundred mailboxes match inline)
INLINE_LIST_WORK = 20_000

Matcher = Callable[[str], bool]


def list_matcher(reference: str, pattern: str) -> Matcher:
    """LIST wildcards: ``*`` matches anything, ``%`` anything but the delimiter.

    Raises PatternTooComplex past MAX_LIST_PATTERN characters or MAX_LIST_WILDCARDS.
    """
    full = reference + pattern if not pattern.startswith(DELIMITER) else pattern
    if len(full) > MAX_LIST_PATTERN:
        raise glob.PatternTooComplex(f"pattern longer than {MAX_LIST_PATTERN} characters")
    # INBOX is case-insensitive, also as the first level of a pattern
    if full[:5].upper() == "INBOX":
        rest = glob.list_pattern(full[5:], DELIMITER, max_wildcards=MAX_LIST_WILDCARDS)
        return lambda name: name[:5].upper() == "INBOX" and rest.match(name[5:])
    return glob.list_pattern(full, DELIMITER, max_wildcards=MAX_LIST_WILDCARDS).match


def list_matchers(reference: str, patterns: tuple[str, ...]) -> list[Matcher]:
    """One matcher per distinct pattern, or PatternTooComplex (too many, too long, too wild)."""
    distinct = list(dict.fromkeys(patterns))
    if len(distinct) > MAX_LIST_PATTERNS:
        raise glob.PatternTooComplex(f"more than {MAX_LIST_PATTERNS} patterns")
    return [list_matcher(reference, p) for p in distinct]


def list_work(rows: list[MailboxRow], matchers: list[Matcher]) -> int:
    """How much matching a LIST costs, in characters (to choose reactor or thread)."""
    return len(matchers) * sum(len(r.name) + 1 for r in rows)


def _hidden_subscribed_parents(names: dict[str, MailboxRow],
                               matchers: list[Matcher]) -> set[str]:
    """Unsubscribed parents LSUB shows for subscribed children its patterns do not reach.

    RFC 3501 6.3.9: with ``foo/bar`` subscribed and ``foo`` not, ``LSUB "" %``
    returns ``foo`` flagged ``\\Noselect`` (here: "not subscribed, has a
    subscribed child"). A parent is shown only when some subscribed
    descendant is not itself listed, so ``*`` lists the subscribed names alone.
    """
    out: set[str] = set()
    for name, row in names.items():
        if not row.subscribed or any(m(name) for m in matchers):
            continue
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            parent = DELIMITER.join(parts[:i])
            above = names.get(parent)
            if (above is None or not above.subscribed) and any(m(parent) for m in matchers):
                out.add(parent)
    return out


def oldname_line(rows: list[MailboxRow], name: str, old: str) -> bytes:
    """``* LIST (attrs) "/" name ("OLDNAME" (old))`` for an IMAP4rev2 session (RFC 9051 6.3.9.7).

    Told to a rev2 session after its RENAME, and after a CREATE or RENAME whose
    name it sent denormalized (6.3.4, 6.3.6), so it can tie the name it sent to
    the mailbox. The attributes are the mailbox's, ``\\Subscribed`` included
    (CREATE subscribes, and a subscription follows its mailbox through RENAME,
    which RFC 9051 then asks to show); empty when the mailbox is gone already.
    """
    row = next((r for r in rows if r.name == name), None)
    attrs: list[str] = []
    if row is not None:
        prefix = name + DELIMITER
        attrs.append("\\HasChildren" if any(r.name.startswith(prefix) for r in rows)
                     else "\\HasNoChildren")
        if row.special_use:
            attrs.append(row.special_use)
        if row.subscribed:
            attrs.append("\\Subscribed")
    return b'* LIST (%s) "%s" %s ("OLDNAME" (%s))\r\n' % (
        " ".join(attrs).encode("ascii"), DELIMITER.encode("ascii"),
        mailbox_name(name, True), mailbox_name(old, True))


def list_lines(rows: list[MailboxRow], matchers: list[Matcher], *, lsub: bool,
               utf8: bool = False) -> list[bytes]:
    """The ``* LIST`` / ``* LSUB`` lines for a user's mailboxes (plain RFC 3501 LIST and LSUB).

    ``lsub`` is the LSUB command (its RFC 3501 6.3.9 rule for parents). A LIST
    with selection or return options (``LIST (SUBSCRIBED)``, ``(SPECIAL-USE)``)
    is RFC 5258's: :func:`postroom_imap.list_extended.extended_lines`.
    """
    names = {r.name: r for r in rows}
    parents: set[str] = set()
    for name in names:
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            parents.add(DELIMITER.join(parts[:i]))
    candidates = sorted(set(names) | parents, key=lambda n: (n != "INBOX", n))
    verb = b"LSUB" if lsub else b"LIST"
    hidden = _hidden_subscribed_parents(names, matchers) if lsub else set()
    lines = []
    for name in candidates:
        if not any(m(name) for m in matchers):
            continue
        row = names.get(name)
        stands_in = name in hidden
        if lsub and not stands_in and (row is None or not row.subscribed):
            continue
        attrs = []
        if row is None or stands_in:
            attrs.append("\\Noselect")
        attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
        if row is not None and row.special_use:
            attrs.append(row.special_use)
        lines.append(b"* %s (%s) \"%s\" %s\r\n" % (verb, " ".join(attrs).encode("ascii"),
                                                  DELIMITER.encode("ascii"),
                                                  mailbox_name(name, utf8)))
    return lines


class MailboxCommands(CommandHost):
    """Mixed into IMAPServer; uses only what :class:`~postroom_imap.host.CommandHost` lists."""

    qresync_enabled: bool  # CommandHost's; declared again so mypy types the assignment here
    rev2: bool  # likewise

    def _user(self) -> UserStore:
        assert self.store is not None
        return self.store

    async def _select(self, command: Command, readonly: bool) -> Reply:
        args = command.args
        assert isinstance(args, Select)
        if args.qresync is not None and not self.qresync_enabled:
            return ("BAD", "QRESYNC parameter needs ENABLE QRESYNC first")
        if self.selected is not None:
            self.drop_selected()
            self.write(b"* OK [CLOSED] previous mailbox closed\r\n")
        if args.condstore:
            self.condstore = True
        # a read-write SELECT takes the messages no session took as \\Recent; EXAMINE
        # only reports them (RFC 3501 6.3.1, 6.3.2)
        # IMAP4rev2 (RFC 9051 6.3.2, Appendix E): no \\Recent, no RECENT and no UNSEEN code,
        # and nothing taken from the rev1 sessions
        state = await self._user().select(args.mailbox,
                                          take_recent=not readonly and not self.rev2)
        selected = Selected(state, readonly)
        out = [*selected.flags_lines(), b"* %d EXISTS\r\n" % len(selected)]
        if self.rev2:
            selected.drop_recent()
            # RFC 9051 6.3.2: the mailbox's LIST response, with accurate attributes
            rows = await self._user().list_mailboxes()
            out += list_lines(rows, [state.name.__eq__], lsub=False, utf8=True)
        else:
            out.append(b"* %d RECENT\r\n" % selected.recent_count())
        if state.first_unseen_uid is not None and not self.rev2:
            seq = selected.seq_of(state.first_unseen_uid)
            if seq is not None:
                out.append(b"* OK [UNSEEN %d] first unseen message\r\n" % seq)
        out += [b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % state.uidvalidity,
                b"* OK [UIDNEXT %d] predicted next UID\r\n" % state.uidnext,
                b"* OK [HIGHESTMODSEQ %d] highest modseq\r\n" % state.highestmodseq]
        self.write(b"".join(out))
        self.select_mailbox(selected)
        selected.vanished = self.qresync_enabled
        if args.qresync is not None and args.qresync.uidvalidity == state.uidvalidity:
            self.write(await resync(self._user(), selected, args.qresync))
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        return ("OK", f"[{mode}] {command.name} completed")

    async def do_select(self, command: Command) -> Reply:
        return await self._select(command, readonly=False)

    async def do_examine(self, command: Command) -> Reply:
        return await self._select(command, readonly=True)

    def _net_unicode(self, name: str) -> str:
        """An IMAP4rev2 session's new mailbox name in NFC (RFC 9051 6.3.4: Net-Unicode, RFC 5198).

        Control characters never get this far (the parser answers BAD). A rev1
        session's names are kept as sent: RFC 3501 asks for no normalization.
        """
        return unicodedata.normalize("NFC", name) if self.rev2 else name

    async def _tell_oldname(self, name: str, old: str) -> None:
        """Send :func:`oldname_line` (an IMAP4rev2 session only)."""
        if self.rev2:
            self.write(oldname_line(await self._user().list_mailboxes(), name, old))

    async def do_create(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, Create)
        supplied = args.mailbox.rstrip(DELIMITER)
        name = self._net_unicode(supplied)
        if not name or DELIMITER * 2 in name or name.startswith(DELIMITER):
            return ("NO", "[CANNOT] invalid mailbox name")
        if name == "INBOX":
            return ("NO", "[ALREADYEXISTS] INBOX always exists")
        if len(args.special_use) > 1:
            return ("NO", "[USEATTR] one special use per mailbox")
        use = None
        if args.special_use:
            use = _SPECIAL_USES.get(args.special_use[0].lower())
            if use is None:
                return ("NO", "[USEATTR] unsupported special use")
        await self._user().create(name, use)
        if name != supplied:
            # normalized: the client learns the name it got (RFC 9051 6.3.4, 6.3.9.7)
            await self._tell_oldname(name, args.mailbox)
        return ("OK", "CREATE completed")

    async def do_delete(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, MailboxArg)
        if args.mailbox == "INBOX":
            return ("NO", "[CANNOT] INBOX cannot be deleted")
        if self.selected is not None and self.selected.name == args.mailbox:
            self.drop_selected()
            self.write(b"* OK [CLOSED] mailbox deleted\r\n")
        await self._user().delete(args.mailbox)
        return ("OK", "DELETE completed")

    async def do_rename(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, Rename)
        new = self._net_unicode(args.new.rstrip(DELIMITER))
        if not new or new == "INBOX":
            return ("NO", "[CANNOT] invalid new name")
        await self._user().rename(args.old, new)
        if args.old != "INBOX":
            # RFC 9051 6.3.6: the optional LIST with OLDNAME (the SHOULD when the new name was
            # normalized); none for INBOX, which "is assumed to be created" again
            await self._tell_oldname(new, args.old)
        return ("OK", "RENAME completed")

    async def do_subscribe(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, MailboxArg)
        await self._user().subscribe(args.mailbox, True)
        return ("OK", "SUBSCRIBE completed")

    async def do_unsubscribe(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, MailboxArg)
        try:
            await self._user().subscribe(args.mailbox, False)
        except NoSuchMailbox:
            pass  # unsubscribing a name that is gone is not an error worth reporting
        return ("OK", "UNSUBSCRIBE completed")

    async def _list(self, command: Command, lsub: bool) -> Reply:
        args = command.args
        assert isinstance(args, ListArgs)
        if not lsub and args.patterns == ("",):
            self.write(b'* LIST (\\Noselect) "/" ""\r\n')
            return ("OK", "LIST completed")
        try:
            matchers = list_matchers(args.reference, args.patterns)
        except glob.PatternTooComplex as exc:
            self.log.info("list pattern refused", command=command.name, reason=str(exc))
            self.meter.error("list_pattern_refused")
            return ("NO", f"[LIMIT] {command.name} refused: {exc}")
        if not lsub and (args.selection or args.returns):
            # RFC 5258: LIST (SUBSCRIBED) / (SPECIAL-USE) / RETURN (...) are listed there only
            return await self._list_extended(command, matchers)
        rows = await self._user().list_mailboxes()
        if list_work(rows, matchers) <= INLINE_LIST_WORK:
            lines = list_lines(rows, matchers, lsub=lsub, utf8=self.rev2)
        else:  # many mailboxes: the other sessions of this process go on meanwhile
            lines = await self._user().offload(functools.partial(
                list_lines, rows, matchers, lsub=lsub, utf8=self.rev2))
        self.write(b"".join(lines))
        return ("OK", f"{command.name} completed")

    async def _list_extended(self, command: Command, matchers: list[Matcher]) -> Reply:
        """LIST with RFC 5258 selection/return options, and RFC 5819 STATUS."""
        args = command.args
        assert isinstance(args, ListArgs)
        options = parse_options(args.selection, args.returns)
        if self.rev2 and options.status and "RECENT" in options.status:
            return ("BAD", "STATUS RECENT is not part of IMAP4rev2")
        rows = await self._user().list_mailboxes()
        if list_work(rows, matchers) <= INLINE_LIST_WORK:
            listed = extended_lines(rows, matchers, options, utf8=self.rev2)
        else:
            listed = await self._user().offload(functools.partial(
                extended_lines, rows, matchers, options, utf8=self.rev2))
        out: list[bytes] = []
        for entry in listed:
            out.append(entry.line)
            if options.status and entry.selectable:
                try:
                    status = await self._user().status(entry.name)
                except NoSuchMailbox:
                    continue  # deleted meanwhile: its LIST line stands, without STATUS
                out.append(b"* STATUS %s (%s)\r\n" % (mailbox_name(entry.name, self.rev2),
                                                       status_values(status, options.status)))
        self.write(b"".join(out))
        return ("OK", "LIST completed")

    async def do_list(self, command: Command) -> Reply:
        return await self._list(command, lsub=False)

    async def do_lsub(self, command: Command) -> Reply:
        return await self._list(command, lsub=True)

    async def do_status(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, Status)
        if self.rev2 and "RECENT" in args.items:
            return ("BAD", "STATUS RECENT is not part of IMAP4rev2")
        status = await self._user().status(args.mailbox)
        # the same values LIST-STATUS returns (APPENDLIMIT is asked for but not reported)
        self.write(b"* STATUS %s (%s)\r\n" % (mailbox_name(args.mailbox, self.rev2),
                                               status_values(status, args.items)))
        return ("OK", "STATUS completed")

    async def do_append(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, Append)
        messages: list[NewMessage] = [
            (m.catenate or m.data, [canonical_flag(f) for f in m.flags if f.lower() != "\\recent"],
             m.internal_date) for m in args.messages]
        try:
            # MULTIAPPEND (RFC 3502): one transaction, so all messages are stored or none
            box = self.selected
            uidvalidity, uids = await self._user().append(
                args.mailbox, messages, self.max_message_size,
                recent_for=box.mailbox_id if box is not None and box.track_recent
                and not box.readonly else None)
        except NoSuchMailbox:
            raise TryCreate("no such mailbox; create it first") from None
        if self.selected is not None:
            self.absorb_own_changes(self.selected,
                                    fallback_dirty=self.selected.name == args.mailbox)
            if self.selected.name == args.mailbox and not self.selected.keywords.issuperset(
                    f for m in args.messages for f in m.flags if not f.startswith("\\")):
                self.selected.dirty = True  # the sync announces the new keywords
        return ("OK", f"[APPENDUID {uidvalidity} {uid_set_text(uids)}] APPEND completed")

    async def do_namespace(self, command: Command) -> Reply:
        self.write(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        return ("OK", "NAMESPACE completed")

    async def do_enable(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, Enable)
        enabled = []
        if "CONDSTORE" in args.capabilities:
            self.condstore = True
            enabled.append("CONDSTORE")
        if "QRESYNC" in args.capabilities and not self.qresync_enabled:
            # QRESYNC implies CONDSTORE (RFC 7162 3.2.3); expunges are VANISHED from now on
            self.qresync_enabled = True
            self.condstore = True
            if self.selected is not None:
                self.selected.vanished = True
            enabled.append("QRESYNC")
        if "IMAP4REV2" in args.capabilities and not self.rev2:
            # RFC 9051: this session follows rev2's rules from now on
            self.rev2 = True
            if self.selected is not None:
                self.selected.drop_recent()
            enabled.append("IMAP4rev2")
            if self.reader is not None:
                self.reader.utf8_names = True  # the commands after this one (RFC 9051 5.1)
        self.write(b"* ENABLED%s\r\n" % "".join(" " + e for e in enabled).encode("ascii"))
        return ("OK", "ENABLE completed")

    async def _quota_line(self) -> bytes | None:
        quota = await self._user().quota()
        items = []
        if quota.limit_bytes is not None:
            items.append(f"STORAGE {quota.used_bytes // 1024} {quota.limit_bytes // 1024}")
        if quota.limit_messages is not None:
            items.append(f"MESSAGE {quota.used_messages} {quota.limit_messages}")
        if not items:
            return None
        return b'* QUOTA "" (%s)\r\n' % " ".join(items).encode("ascii")

    async def do_getquotaroot(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, MailboxArg)
        await self._user().status(args.mailbox)  # NO [NONEXISTENT] for unknown mailboxes
        line = await self._quota_line()
        if line is None:
            self.write(b"* QUOTAROOT %s\r\n" % mailbox_name(args.mailbox, self.rev2))
        else:
            self.write(b'* QUOTAROOT %s ""\r\n' % mailbox_name(args.mailbox, self.rev2) + line)
        return ("OK", "GETQUOTAROOT completed")

    async def do_getquota(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, QuotaRoot)
        line = await self._quota_line() if args.root == "" else None
        if line is None:
            return ("NO", "[NONEXISTENT] no such quota root")
        self.write(line)
        return ("OK", "GETQUOTA completed")

    async def do_setquota(self, command: Command) -> Reply:
        return ("NO", "[NOPERM] quotas are set by the administrator")
