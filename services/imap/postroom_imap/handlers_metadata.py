"""METADATA (RFC 5464): GETMETADATA and SETMETADATA on the server ("") and on mailboxes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom_imap.policy import MetadataMaxSize, MetadataTooMany
from postroom_imap.render import mailbox_name
from postroom_imap.syntax import Command
from postroom_imap.syntax_types import GetMetadata, SetMetadata

if TYPE_CHECKING:
    from postroom_imap.host import CommandHost
    from postroom_imap.policy import UserStore
else:
    CommandHost = object  # a Protocol for mypy; at run time the host is IMAPServer itself

Reply = tuple[str, str]
# values up to this long, of plain printable ASCII, are sent quoted; others as literals
MAX_QUOTED = 1024


def metadata_value(value: bytes | None) -> bytes:
    """NIL, a quoted string, a literal, or (with NUL octets) a literal8 (RFC 5464 5.4)."""
    if value is None:
        return b"NIL"
    if len(value) <= MAX_QUOTED and all(0x20 <= b < 0x7F and b not in b'"\\' for b in value):
        return b'"' + value + b'"'
    if b"\x00" in value:
        return b"~{%d}\r\n" % len(value) + value
    return b"{%d}\r\n" % len(value) + value


def metadata_mailbox(name: str, utf8: bool = False) -> bytes:
    return b'""' if name == "" else mailbox_name(name, utf8)


class MetadataCommands(CommandHost):
    """Mixed into IMAPServer; uses only what :class:`~postroom_imap.host.CommandHost` lists."""

    def _metadata_store(self) -> UserStore:
        assert self.store is not None
        return self.store

    async def do_getmetadata(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, GetMetadata)
        found = await self._metadata_store().get_metadata(args.mailbox, args.entries,
                                                          args.depth)
        shown: list[bytes] = []
        longest = 0
        for name, value in found:
            if args.maxsize is not None and value is not None and len(value) > args.maxsize:
                longest = max(longest, len(value))  # RFC 5464 4.2.1: left out, and said so
                continue
            if value is None and args.depth != "0":
                continue  # descendants were asked for: a missing entry is simply not there
            shown.append(name.encode("ascii") + b" " + metadata_value(value))
        if shown:
            self.write(b"* METADATA %s (%s)\r\n" % (metadata_mailbox(args.mailbox, self.rev2),
                                                   b" ".join(shown)))
        if longest:
            return ("OK", f"[METADATA LONGENTRIES {longest}] GETMETADATA completed")
        return ("OK", "GETMETADATA completed")

    async def do_setmetadata(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, SetMetadata)
        try:
            await self._metadata_store().set_metadata(args.mailbox, args.entries)
        except (MetadataMaxSize, MetadataTooMany) as exc:
            self.meter.error("metadata_limit")  # the errors_total counter, by kind
            self.log.info("metadata refused", mailbox=args.mailbox, reason=exc.response())
            raise
        self.log.info("metadata set", mailbox=args.mailbox, entries=len(args.entries))
        return ("OK", "SETMETADATA completed")
