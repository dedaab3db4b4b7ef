"""Typed results of the IMAP command parser: sequence sets, search keys, fetch items, arguments."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# the search keys and sequence sets are the store's query language (postroom.store.search)
from postroom.store.search import (
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModseq,
    SearchNot,
    SearchOr,
    SearchSet,
    SearchSize,
    SearchText,
    SequenceSet,
)
from postroom_imap.spool import SpooledLiteral

__all__ = [
    "MAX_NUMBER",
    "MAX_NUMBER64",
    "Append",
    "AppendMessage",
    "Authenticate",
    "CatText",
    "CatUrl",
    "Compress",
    "Copy",
    "Create",
    "Enable",
    "Expunge",
    "Fetch",
    "FetchItem",
    "GetMetadata",
    "Id",
    "ListArgs",
    "Login",
    "MailboxArg",
    "NoArgs",
    "Qresync",
    "QuotaRoot",
    "Rename",
    "Search",
    "SearchAll",
    "SearchAnd",
    "SearchDate",
    "SearchFlag",
    "SearchHeader",
    "SearchKey",
    "SearchModseq",
    "SearchNot",
    "SearchOr",
    "SearchSet",
    "SearchSize",
    "SearchText",
    "Section",
    "Select",
    "SequenceSet",
    "SetMetadata",
    "SetQuota",
    "Sort",
    "Status",
    "Store",
    "Thread",
]

MAX_NUMBER = 4294967295  # nz-number / number are 32-bit (RFC 3501 section 9)
MAX_NUMBER64 = 2**63 - 1  # mod-sequence-value (RFC 7162)


# ---- fetch ----

@dataclass(frozen=True)
class Section:
    """``1.2.HEADER.FIELDS (A B)``: part path, text specifier, header field names."""

    path: tuple[int, ...] = ()
    text: str = ""  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()

    def wire(self) -> str:
        """The section as echoed in the FETCH response."""
        parts = [".".join(str(n) for n in self.path)] if self.path else []
        if self.text:
            parts.append(self.text)
        out = ".".join(parts)
        if self.fields:
            out += " (" + " ".join(self.fields) + ")"
        return out


@dataclass(frozen=True)
class FetchItem:
    """One fetch attribute; ``section`` is set for BODY[...]/BINARY[...] forms."""

    name: str  # ENVELOPE FLAGS INTERNALDATE RFC822 RFC822.HEADER RFC822.SIZE RFC822.TEXT
    #            BODY BODYSTRUCTURE UID MODSEQ BINARY BINARY.SIZE
    section: Section | None = None
    partial: tuple[int, int] | None = None  # (start, length)
    peek: bool = False

    def response_name(self) -> str:
        """The item name in the untagged FETCH response (no .PEEK, only the partial start)."""
        if self.section is None:
            return self.name
        out = f"{self.name}[{self.section.wire()}]"
        if self.partial is not None:
            out += f"<{self.partial[0]}>"
        return out

    @property
    def sets_seen(self) -> bool:
        """Whether fetching this implicitly sets \\Seen (RFC 3501 6.4.5)."""
        if self.peek or self.name == "BINARY.SIZE":
            return False
        return self.section is not None or self.name in ("RFC822", "RFC822.TEXT")


# ---- command arguments ----

@dataclass(frozen=True)
class Login:
    user: str
    password: str


@dataclass(frozen=True)
class Authenticate:
    mechanism: str
    initial: str | None = None  # SASL-IR (RFC 4959), base64 or "="


@dataclass(frozen=True)
class Select:
    """SELECT / EXAMINE."""

    mailbox: str
    condstore: bool = False
    params: tuple[object, ...] = ()
    qresync: Qresync | None = None


@dataclass(frozen=True)
class GetMetadata:
    """GETMETADATA (RFC 5464 4.2); ``mailbox`` "" is the server; entry names lower-cased."""

    mailbox: str
    entries: tuple[str, ...]
    maxsize: int | None = None
    depth: str = "0"  # "0", "1" or "infinity"


@dataclass(frozen=True)
class SetMetadata:
    """SETMETADATA (RFC 5464 4.3): (entry, value or None to remove) pairs."""

    mailbox: str
    entries: tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True)
class Qresync:
    """SELECT's QRESYNC parameter (RFC 7162 3.2.5): what the client knew when it left."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    # (sequence numbers, their UIDs): accepted and checked, not needed (expunges are remembered)
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True)
class MailboxArg:
    """DELETE, SUBSCRIBE, UNSUBSCRIBE, GETQUOTAROOT."""

    mailbox: str


@dataclass(frozen=True)
class Create:
    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rename:
    old: str
    new: str


@dataclass(frozen=True)
class ListArgs:
    """LIST / LSUB, with RFC 5258 selection and return options when given."""

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Status:
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class AppendMessage:
    """One message of APPEND: in memory, or (large) on disk until the handler stores it."""

    flags: tuple[str, ...]
    internal_date: datetime | None
    data: bytes | SpooledLiteral
    binary: bool = False
    catenate: tuple[CatText | CatUrl, ...] = ()  # CATENATE (RFC 4469): data is then b""


@dataclass(frozen=True)
class CatText:
    """CATENATE's ``TEXT literal`` (RFC 4469)."""

    data: bytes | SpooledLiteral


@dataclass(frozen=True)
class CatUrl:
    """CATENATE's ``URL astring``: an IMAP URL (RFC 5092) of a message or part of this user's."""

    url: str


@dataclass(frozen=True)
class Append:
    mailbox: str
    messages: tuple[AppendMessage, ...]

    def close(self) -> None:
        """Free the messages' temporary files (the command ran, or never will)."""
        for message in self.messages:
            if isinstance(message.data, SpooledLiteral):
                message.data.close()
            for part in message.catenate:
                if isinstance(part, CatText) and isinstance(part.data, SpooledLiteral):
                    part.data.close()


@dataclass(frozen=True)
class Search:
    """SEARCH (and UID SEARCH): ``key`` is the AND of all given keys."""

    key: SearchKey
    charset: str | None = None
    returns: tuple[str, ...] | None = None  # ESEARCH RETURN options (RFC 4731)


@dataclass(frozen=True)
class Sort:
    """SORT (RFC 5256): criteria like ("REVERSE", "DATE")."""

    criteria: tuple[str, ...]
    charset: str
    key: SearchKey


@dataclass(frozen=True)
class Thread:
    """THREAD (RFC 5256): "ORDEREDSUBJECT" or "REFERENCES"."""

    algorithm: str
    charset: str
    key: SearchKey


@dataclass(frozen=True)
class Fetch:
    sequence: SequenceSet
    items: tuple[FetchItem, ...]
    changedsince: int | None = None
    vanished: bool = False
    macro: str | None = None


@dataclass(frozen=True)
class Store:
    sequence: SequenceSet
    mode: str  # "+", "-" or "" (replace)
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None


@dataclass(frozen=True)
class Copy:
    """COPY / MOVE."""

    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True)
class Expunge:
    """EXPUNGE, or UID EXPUNGE with a set (RFC 4315)."""

    sequence: SequenceSet | None = None


@dataclass(frozen=True)
class Compress:
    """COMPRESS (RFC 4978): the mechanism, upper-cased."""

    mechanism: str


@dataclass(frozen=True)
class Enable:
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Id:
    """ID (RFC 2971): None for NIL."""

    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True)
class QuotaRoot:
    """GETQUOTA root."""

    root: str


@dataclass(frozen=True)
class SetQuota:
    root: str
    limits: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class NoArgs:
    """Commands without arguments (CAPABILITY, NOOP, LOGOUT, IDLE, ...)."""

