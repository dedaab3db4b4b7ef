"""Running Sieve scripts over a message: a pure function from scripts and message to actions.

:func:`evaluate` (one script) and :func:`run_scripts` (the operator's
before-script, the account's own, the after-script) walk the trees
:func:`postroom.sieve.check.compile_script` made and return the actions to
take: :class:`Keep`, :class:`FileInto`, :class:`Redirect`, :class:`Discard`,
:class:`Reject`, :class:`Vacation`, :class:`EditHeaders` (made to the bytes by
:func:`apply_edits`). Nothing is done here: delivery
(postroom_mda.delivery) stores, forwards and answers, and checks what needs
the database (loops, the vacation log). What needs to look something up
(``mailboxexists``, ``include``) asks the :class:`Context`'s callbacks.

Every run is bounded: steps (each command and test, and the text each
comparison reads), wall-clock time, redirects, includes and variables. A run
that passes a bound, or hits a run-time error RFC 5228 calls one (a conflict
between reject and keep, a second vacation, a missing include), raises
:class:`SieveRuntimeError`; delivery then files the message in INBOX and logs
why (RFC 5228 2.10.6: an error means implicit keep).
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import TypeVar

from postroom.mime.addresses import parse_addresses
from postroom.sieve.check import compile_script
from postroom.sieve.grammar import Node, Value
from postroom.sieve.match import CASEMAP, count_matches, match_one

_T = TypeVar("_T")

# bounds of one run (beyond Context's settings)
MAX_STEPS = 200_000
MAX_VARIABLES = 256
MAX_VARIABLE_CHARS = 4096
MAX_INCLUDE_DEPTH = 8
MAX_INCLUDES = 32
MAX_ACTIONS = 64
MAX_FLAGS = 32
# how much of the message the body test reads (RFC 5173 leaves it to us)
MAX_BODY_BYTES = 1024 * 1024
MAX_BODY_PARTS = 100

_SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted",
                                        "\\Draft")}
_KEYWORD = re.compile(r"[!#$&'+-\[^-z|}~]{1,64}")
_VARIABLE_REF = re.compile(r"\$\{([^{}]{0,200})\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}|[0-9]{1,3}")
_HEX = re.compile(r"hex:\s*((?:[0-9A-Fa-f]{1,2}\s*)+)", re.I)
_UNICODE = re.compile(r"unicode:\s*((?:[0-9A-Fa-f]{1,6}\s*)+)", re.I)


class SieveRuntimeError(Exception):
    """A run that cannot finish (RFC 5228 2.10.6): the message goes to INBOX; ``line`` and
    ``script`` say where."""

    def __init__(self, line: int, message: str, script: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.script = script

    def __str__(self) -> str:
        where = f"{self.script}: " if self.script else ""
        return f"{where}line {self.line}: {self.message}" if self.line else where + self.message


# --- what a run sees


@dataclass(frozen=True)
class MessageView:
    """The message as the tests see it: header fields in order (name as written, value
    unfolded and RFC 2047-decoded), its size, and how to read it whole (the body test)."""

    headers: tuple[tuple[str, str], ...]
    size: int
    raw: Callable[[], bytes] | None = None

    def values(self, name: str) -> list[str]:
        key = name.lower()
        return [value for field_name, value in self.headers if field_name.lower() == key]


@dataclass(frozen=True)
class EnvelopeView:
    """The SMTP envelope: the reverse-path ("" when null) and this recipient's address."""

    mail_from: str
    rcpt_to: str


@dataclass
class Context:
    """The account, the clock, the limits, and the lookups a run may ask for."""

    account: str
    now: datetime
    delimiter: str = "+"
    max_redirects: int = 4
    max_run_time: float = 1.0
    max_script_bytes: int = 64 * 1024
    max_steps: int = MAX_STEPS
    mailbox_exists: Callable[[str], bool] = lambda name: name.upper() == "INBOX"
    # include :personal / :global: the script's text, or None when there is none
    personal_script: Callable[[str], str | None] = lambda name: None
    global_script: Callable[[str], str | None] = lambda name: None


# --- what a run decides


@dataclass(frozen=True)
class Keep:
    flags: tuple[str, ...] = ()
    implicit: bool = False


@dataclass(frozen=True)
class FileInto:
    mailbox: str
    flags: tuple[str, ...] = ()
    create: bool = False


@dataclass(frozen=True)
class Redirect:
    address: str


@dataclass(frozen=True)
class Discard:
    pass


@dataclass(frozen=True)
class Reject:
    reason: str
    extended: bool = False  # ereject


@dataclass(frozen=True)
class Vacation:
    reason: str
    subject: str | None = None
    days: int = 7
    addresses: tuple[str, ...] = ()
    sender: str | None = None  # :from
    handle: str | None = None
    mime: bool = False


@dataclass(frozen=True)
class HeaderEdit:
    """One editheader change (RFC 5293), to be made to the message's bytes in the same order:
    ``add`` a field (first, or last), or ``delete`` the ``occurrences`` (0-based, among the
    fields of that name as they were then) of a field."""

    op: str  # "add" or "delete"
    name: str
    value: str = ""
    last: bool = False
    occurrences: tuple[int, ...] = ()


@dataclass(frozen=True)
class EditHeaders:
    """The message was edited (RFC 5293): what is stored and redirected is the edited one."""

    edits: tuple[HeaderEdit, ...]


Action = Keep | FileInto | Redirect | Discard | Reject | Vacation | EditHeaders


@dataclass(frozen=True)
class Script:
    """A compiled script and the name it is logged by (``before``, ``after``, or the
    account's script name)."""

    name: str
    nodes: tuple[Node, ...]

    @classmethod
    def compile(cls, name: str, text: str, *, max_bytes: int) -> Script:
        return cls(name, compile_script(text, max_bytes=max_bytes))


# --- the run


class _Stop(Exception):
    """``stop``: the whole run ends (RFC 6609 3.3: in an included script too)."""


class _Return(Exception):
    """``return``: the current included script ends."""


class _CallbackError(Exception):
    """A Context callback failed: its exception is re-raised as it was."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class _Frame:
    """One script being run: what it required and its own variables."""

    script: str
    required: set[str] = field(default_factory=set)
    variables: dict[str, str] = field(default_factory=dict)
    match: list[str] = field(default_factory=list)
    # names the script declared global (RFC 6609 3.4): shared with every script of the run
    global_names: set[str] = field(default_factory=set)


class _Run:
    def __init__(self, message: MessageView, envelope: EnvelopeView, ctx: Context) -> None:
        self.message = message
        self.envelope = envelope
        self.ctx = ctx
        self.deadline = time.monotonic() + ctx.max_run_time
        self.steps = 0
        self.actions: list[Action] = []
        self.implicit_keep = True
        self.flags: list[str] = []  # imap4flags' internal variable
        self.globals: dict[str, str] = {}
        self.included: set[tuple[str, str]] = set()
        self.include_stack: list[tuple[str, str]] = []
        self.includes = 0
        self.body_cache: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        # editheader (RFC 5293): the header fields as the script has made them, and how
        self.headers: list[tuple[str, str]] = list(message.headers)
        self.edits: list[HeaderEdit] = []

    def values(self, name: str) -> list[str]:
        key = name.lower()
        return [value for field_name, value in self.headers if field_name.lower() == key]

    def lookup(self, fn: Callable[[str], _T], name: str) -> _T:
        """A Context callback: what it raises (the database's errors) is the caller's, not
        the script's, and passes through the run untouched."""
        try:
            return fn(name)
        except Exception as exc:
            raise _CallbackError(exc) from exc

    # --- bounds

    def step(self, frame: _Frame, node: Node, cost: int = 1) -> None:
        self.steps += cost
        if self.steps > self.ctx.max_steps:
            raise SieveRuntimeError(node.line, "too many steps", frame.script)
        if self.steps & 0xFF == 0 or cost > 1:
            if time.monotonic() > self.deadline:
                raise SieveRuntimeError(node.line, "run time limit reached", frame.script)

    # --- strings and variables

    def expand(self, frame: _Frame, text: str) -> str:
        """``${...}`` in ``text``: variables (RFC 5229) and encoded characters (RFC 5228
        2.4.2.4), each only when the script required it."""
        if "${" not in text:
            return text
        variables = "variables" in frame.required
        encoded = "encoded-character" in frame.required
        if not variables and not encoded:
            return text

        def one(found: re.Match[str]) -> str:
            inner = found.group(1)
            if encoded:
                hexed = _HEX.fullmatch(inner)
                if hexed:
                    data = bytes(int(h, 16) for h in hexed.group(1).split())
                    return data.decode("utf-8", "replace")
                uni = _UNICODE.fullmatch(inner)
                if uni:
                    points = [int(u, 16) for u in uni.group(1).split()]
                    if all(p <= 0x10FFFF and not 0xD800 <= p <= 0xDFFF for p in points):
                        return "".join(chr(p) for p in points)
            if variables and _IDENTIFIER.fullmatch(inner):
                return self.variable(frame, inner)
            return found.group(0)

        out = _VARIABLE_REF.sub(one, text)
        return out[:MAX_VARIABLE_CHARS * 4]

    def variable(self, frame: _Frame, name: str) -> str:
        if name.isdigit():
            index = int(name)
            return frame.match[index] if index < len(frame.match) else ""
        key = name.lower()
        if key in frame.variables:
            return frame.variables[key]
        return self.globals.get(key, "") if key in frame.global_names else ""

    def set_variable(self, frame: _Frame, node: Node, name: str, value: str) -> None:
        key = name.lower()
        value = value[:MAX_VARIABLE_CHARS]
        if key in frame.global_names:
            self.globals[key] = value
            return
        if key not in frame.variables and len(frame.variables) >= MAX_VARIABLES:
            raise SieveRuntimeError(node.line, "too many variables", frame.script)
        frame.variables[key] = value

    def strings(self, frame: _Frame, value: Value | None) -> list[str]:
        if value is None:
            return []
        items = value if isinstance(value, tuple) else (str(value),)
        return [self.expand(frame, item) for item in items]

    def string(self, frame: _Frame, value: Value | None) -> str:
        items = self.strings(frame, value)
        return items[0] if items else ""

    # --- tests

    def compare(self, frame: _Frame, node: Node, values: list[str], keys: list[str]) -> bool:
        match = str(node.args.get("match-type", ":is"))
        comparator = str(node.extra.get("comparator", CASEMAP))
        rel = node.extra.get("match-type")
        if match == ":count":
            return count_matches(str(rel), len(values), keys)
        # each key costs a step per 512 characters it is compared with (and a look at the clock)
        cost = 2 + sum(len(v) for v in values) // 512
        for key in keys:
            self.step(frame, node, cost)
            for value in values:
                ok, found = match_one(match, comparator, value, key,
                                      str(rel) if rel is not None else None)
                if ok:
                    if match == ":matches" and "variables" in frame.required:
                        frame.match = found or []
                    return True
        return False

    def _indexed(self, node: Node, values: list[str]) -> list[str]:
        if "index" not in node.args:
            return values
        index = _number(node.extra.get("index"), 1)
        if "last" in node.args:
            index = len(values) - index + 1
        return [values[index - 1]] if 1 <= index <= len(values) else []

    def header_values(self, frame: _Frame, node: Node, names: list[str]) -> list[str]:
        out: list[str] = []
        for name in names:
            out.extend(self._indexed(node, self.values(name)))
        return out

    def address_parts(self, node: Node, raw_values: list[str]) -> list[str]:
        part = str(node.args.get("address-part", ":all"))
        out = []
        for raw in raw_values:
            for addr in parse_addresses(raw):
                if not addr.mailbox or not addr.host:
                    continue
                value = self._part(part, addr.mailbox, addr.host)
                if value is not None:
                    out.append(value)
        return out

    def _part(self, part: str, local: str, domain: str) -> str | None:
        if part == ":localpart":
            return local
        if part == ":domain":
            return domain
        delimiter = self.ctx.delimiter
        if part == ":user":
            return local.split(delimiter, 1)[0] if delimiter else local
        if part == ":detail":
            if not delimiter or delimiter not in local:
                return None  # RFC 5233 4: no separator, no detail to test
            return local.split(delimiter, 1)[1]
        return f"{local}@{domain}" if domain else local

    def envelope_parts(self, node: Node, parts: list[str]) -> list[str]:
        part = str(node.args.get("address-part", ":all"))
        out = []
        for name in parts:
            name = name.lower()
            if name == "from":
                address = self.envelope.mail_from
            elif name == "to":
                address = self.envelope.rcpt_to
            else:
                continue
            if not address:
                out.append("")  # the null reverse-path: every part is empty
                continue
            local, _, domain = address.rpartition("@")
            if not local:
                local, domain = domain, ""
            value = self._part(part, local, domain)
            if value is not None:
                out.append(value)
        return out

    def body_texts(self, node: Node, frame: _Frame) -> list[str]:
        transform = str(node.args.get("body-transform", ":text"))
        types = tuple(t.lower() for t in self.strings(frame, node.extra.get("body-transform")))
        key = (transform, types)
        if key in self.body_cache:
            return self.body_cache[key]
        raw = self.message.raw() if self.message.raw else b""
        raw = raw[:MAX_BODY_BYTES]
        if transform == ":raw":
            cut = raw.find(b"\r\n\r\n")
            sep = 4
            if cut < 0:
                cut, sep = raw.find(b"\n\n"), 2
            texts = [raw[cut + sep:].decode("utf-8", "replace")] if cut >= 0 else [""]
        else:
            texts = _body_parts(raw, types if transform == ":content" else ("text",))
        self.body_cache[key] = texts
        return texts

    def date_values(self, frame: _Frame, node: Node) -> list[datetime]:
        if node.name == "currentdate":
            return [self.ctx.now]
        name = self.string(frame, node.args.get("header-name"))
        values = self._indexed(node, self.values(name))
        out = []
        for value in values:
            if name.lower() == "received":
                value = value.rsplit(";", 1)[-1]
            try:
                parsed = parsedate_to_datetime(value.strip())
            except (TypeError, ValueError, IndexError, OverflowError):
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            out.append(parsed)
        return out

    def test(self, frame: _Frame, node: Node) -> bool:
        self.step(frame, node)
        name = node.name
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self.test(frame, node.tests[0])
        if name == "allof":
            return all(self.test(frame, t) for t in node.tests)
        if name == "anyof":
            return any(self.test(frame, t) for t in node.tests)
        if name == "size":
            limit = _number(node.args.get("limit"), 0)
            over = node.args.get("comparator") == ":over"
            return self.message.size > limit if over else self.message.size < limit
        if name == "exists":
            return all(self.values(n) for n in
                       self.strings(frame, node.args.get("header-names")))
        keys = self.strings(frame, node.args.get("key-list"))
        if name == "header":
            names = self.strings(frame, node.args.get("header-names"))
            return self.compare(frame, node, self.header_values(frame, node, names), keys)
        if name == "address":
            names = self.strings(frame, node.args.get("header-list"))
            raw = self.header_values(frame, node, names)
            return self.compare(frame, node, self.address_parts(node, raw), keys)
        if name == "envelope":
            parts = self.strings(frame, node.args.get("header-list"))
            return self.compare(frame, node, self.envelope_parts(node, parts), keys)
        if name == "body":
            return self.compare(frame, node, self.body_texts(node, frame), keys)
        if name == "string":
            sources = self.strings(frame, node.args.get("source"))
            if node.args.get("match-type") == ":count":
                sources = [s for s in sources if s]
            return self.compare(frame, node, sources, keys)
        if name == "hasflag":
            names = self.strings(frame, node.args.get("variable-list"))
            flags = (_split_flags(" ".join(self.variable(frame, n) for n in names))
                     if names else list(self.flags))
            wanted = _split_flags(" ".join(self.strings(frame, node.args.get("list-of-flags"))))
            return self.compare(frame, node, flags, wanted)
        if name in ("date", "currentdate"):
            part = self.string(frame, node.args.get("date-part")).lower()
            zone = node.extra.get("zone")
            values = []
            for moment in self.date_values(frame, node):
                if node.args.get("zone") == ":originalzone":
                    pass
                elif isinstance(zone, str):
                    moment = moment.astimezone(_zone(self.expand(frame, zone)))
                else:
                    moment = moment.astimezone(UTC)
                values.append(_date_part(moment, part))
            return self.compare(frame, node, values, keys)
        if name == "mailboxexists":
            return all(self.lookup(self.ctx.mailbox_exists, n) for n in
                       self.strings(frame, node.args.get("mailbox-names")))
        raise SieveRuntimeError(node.line, f"unsupported test {name}", frame.script)

    # --- commands

    def block(self, frame: _Frame, nodes: Sequence[Node]) -> None:
        branch_done: bool | None = None
        for node in nodes:
            self.step(frame, node)
            if node.name == "require":
                continue
            if node.name == "if":
                branch_done = self.test(frame, node.tests[0])
                if branch_done:
                    self.block(frame, node.block)
                continue
            if node.name == "elsif":
                if not branch_done:
                    branch_done = self.test(frame, node.tests[0])
                    if branch_done:
                        self.block(frame, node.block)
                continue
            if node.name == "else":
                if not branch_done:
                    self.block(frame, node.block)
                branch_done = None
                continue
            branch_done = None
            self.command(frame, node)

    def _flags_arg(self, frame: _Frame, node: Node) -> tuple[str, ...]:
        if "flags" in node.args:
            return tuple(_split_flags(" ".join(self.strings(frame, node.extra.get("flags")))))
        return tuple(self.flags)

    def add(self, frame: _Frame, node: Node, action: Action) -> None:
        if isinstance(action, Keep | FileInto | Redirect | Vacation) and any(
                isinstance(a, Reject) for a in self.actions):
            raise SieveRuntimeError(node.line, f"{node.name} conflicts with reject",
                                    frame.script)
        if isinstance(action, Reject) and any(
                isinstance(a, Keep | FileInto | Redirect | Vacation | Reject)
                for a in self.actions):
            raise SieveRuntimeError(node.line, f"{node.name} conflicts with an earlier action",
                                    frame.script)
        if isinstance(action, Vacation) and any(isinstance(a, Vacation) for a in self.actions):
            raise SieveRuntimeError(node.line, "a second vacation action", frame.script)
        if isinstance(action, Redirect):
            count = sum(1 for a in self.actions if isinstance(a, Redirect))
            if any(a == action for a in self.actions):
                return  # RFC 5228 2.10.3: the same address twice is one redirect
            if count >= self.ctx.max_redirects:
                raise SieveRuntimeError(node.line, f"more than {self.ctx.max_redirects} "
                                        "redirects", frame.script)
        if len(self.actions) >= MAX_ACTIONS:
            raise SieveRuntimeError(node.line, f"more than {MAX_ACTIONS} actions", frame.script)
        self.actions.append(action)

    def command(self, frame: _Frame, node: Node) -> None:
        name = node.name
        if name == "stop":
            raise _Stop()
        if name == "return":
            raise _Return()
        if name == "keep":
            self.add(frame, node, Keep(self._flags_arg(frame, node)))
        elif name == "discard":
            self.implicit_keep = False
        elif name == "fileinto":
            mailbox = self.string(frame, node.args.get("mailbox"))
            _check_mailbox(frame, node, mailbox)
            self.add(frame, node, FileInto(mailbox, self._flags_arg(frame, node),
                                           create="create" in node.args))
            if "copy" not in node.args:
                self.implicit_keep = False
        elif name == "redirect":
            address = self.string(frame, node.args.get("address")).strip()
            if not _ADDRESS.fullmatch(address):
                raise SieveRuntimeError(node.line, f"redirect: {address[:80]!r} is not an "
                                        "e-mail address", frame.script)
            self.add(frame, node, Redirect(address))
            if "copy" not in node.args:
                self.implicit_keep = False
        elif name in ("reject", "ereject"):
            self.add(frame, node, Reject(self.string(frame, node.args.get("text")),
                                         extended=name == "ereject"))
            self.implicit_keep = False
        elif name == "vacation":
            self.add(frame, node, self.vacation(frame, node))
        elif name == "set":
            self.set_command(frame, node)
        elif name in ("setflag", "addflag", "removeflag"):
            self.flag_command(frame, node)
        elif name == "include":
            self.include(frame, node)
        elif name == "addheader":
            self.addheader(frame, node)
        elif name == "deleteheader":
            self.deleteheader(frame, node)
        elif name == "global":
            frame.global_names.update(v.lower() for v in
                                      self.strings(frame, node.args.get("value")))
        else:
            raise SieveRuntimeError(node.line, f"unsupported command {name}", frame.script)

    def _field_name(self, frame: _Frame, node: Node, raw: Value | None) -> str | None:
        name = self.string(frame, raw).strip()
        if not _FIELD_NAME.fullmatch(name):
            raise SieveRuntimeError(node.line, f"{name[:80]!r} is not a header field name",
                                    frame.script)
        # RFC 5293 6: fields that tell the message's path are not the script's to change
        return None if name.lower() in PROTECTED_FIELDS else name

    def addheader(self, frame: _Frame, node: Node) -> None:
        name = self._field_name(frame, node, node.args.get("field-name"))
        if name is None:
            return
        value = _LINE_BREAKS.sub(" ", self.string(frame, node.args.get("value")))[:MAX_FIELD]
        last = "last" in node.args
        if len(self.edits) >= MAX_EDITS:
            raise SieveRuntimeError(node.line, "too many header edits", frame.script)
        if last:
            self.headers.append((name, value))
        else:
            self.headers.insert(0, (name, value))
        self.edits.append(HeaderEdit("add", name, value, last=last))

    def deleteheader(self, frame: _Frame, node: Node) -> None:
        raw_name: Value | None
        patterns: Value | None = None
        if "field-name" in node.args:
            raw_name, patterns = node.args["field-name"], node.args.get("value-patterns")
        else:
            raw_name = node.args.get("value-patterns")
        name = self._field_name(frame, node, raw_name)
        if name is None:
            return
        keys = self.strings(frame, patterns) if patterns is not None else None
        key = name.lower()
        positions = [i for i, (n, _v) in enumerate(self.headers) if n.lower() == key]
        chosen = list(range(len(positions)))
        if "index" in node.args:
            index = _number(node.extra.get("index"), 1)
            if "last" in node.args:
                index = len(positions) - index + 1
            chosen = [index - 1] if 1 <= index <= len(positions) else []
        if keys is not None:
            chosen = [k for k in chosen
                      if self.compare(frame, node, [self.headers[positions[k]][1]], keys)]
        if not chosen:
            return
        if len(self.edits) >= MAX_EDITS:
            raise SieveRuntimeError(node.line, "too many header edits", frame.script)
        drop = {positions[k] for k in chosen}
        self.headers = [f for i, f in enumerate(self.headers) if i not in drop]
        self.edits.append(HeaderEdit("delete", name, occurrences=tuple(chosen)))

    def vacation(self, frame: _Frame, node: Node) -> Vacation:
        days = node.extra.get("days", 7)
        days = max(1, min(int(days) if isinstance(days, int) else 7, 365))
        subject = self.string(frame, node.extra["subject"]) if "subject" in node.args else None
        sender = self.string(frame, node.extra["from"]) if "from" in node.args else None
        handle = self.string(frame, node.extra["handle"]) if "handle" in node.args else None
        addresses = tuple(a.strip().lower() for a in
                          self.strings(frame, node.extra.get("addresses")))
        return Vacation(reason=self.string(frame, node.args.get("reason")), subject=subject,
                        days=days, addresses=addresses, sender=sender, handle=handle,
                        mime="mime" in node.args)

    def set_command(self, frame: _Frame, node: Node) -> None:
        name = self.string(frame, node.args.get("name"))
        value = self.string(frame, node.args.get("value"))
        case = node.args.get("case")
        if case == ":lower":
            value = value.lower()
        elif case == ":upper":
            value = value.upper()
        first = node.args.get("first-case")
        if first == ":lowerfirst":
            value = value[:1].lower() + value[1:]
        elif first == ":upperfirst":
            value = value[:1].upper() + value[1:]
        if "quotewildcard" in node.args:
            value = value.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
        if "length" in node.args:
            value = str(len(value))
        self.set_variable(frame, node, name, value)

    def flag_command(self, frame: _Frame, node: Node) -> None:
        given = _split_flags(" ".join(self.strings(frame, node.args.get("list-of-flags"))))
        variable = (self.string(frame, node.args["variable-name"])
                    if "variable-name" in node.args else None)
        current = (_split_flags(self.variable(frame, variable)) if variable is not None
                   else list(self.flags))
        if node.name == "setflag":
            new = given
        elif node.name == "addflag":
            new = current + [f for f in given if f.lower() not in {c.lower() for c in current}]
        else:
            drop = {f.lower() for f in given}
            new = [f for f in current if f.lower() not in drop]
        new = new[:MAX_FLAGS]
        if variable is not None:
            self.set_variable(frame, node, variable, " ".join(new))
        else:
            self.flags = new

    def include(self, frame: _Frame, node: Node) -> None:
        location = "global" if node.args.get("location") == ":global" else "personal"
        name = self.string(frame, node.args.get("script-name"))
        key = (location, name)
        if "once" in node.args and key in self.included:
            return
        if key in self.include_stack:
            raise SieveRuntimeError(node.line, f"include loop through {name!r}", frame.script)
        self.includes += 1
        if self.includes > MAX_INCLUDES or len(self.include_stack) >= MAX_INCLUDE_DEPTH:
            raise SieveRuntimeError(node.line, "too many includes", frame.script)
        lookup = self.ctx.global_script if location == "global" else self.ctx.personal_script
        text = self.lookup(lookup, name)
        if text is None:
            if "optional" in node.args:
                return
            raise SieveRuntimeError(node.line, f"no {location} script {name!r} to include",
                                    frame.script)
        try:
            script = Script.compile(name, text, max_bytes=self.ctx.max_script_bytes)
        except ValueError as exc:
            raise SieveRuntimeError(node.line, f"included script {name!r}: {exc}",
                                    frame.script) from None
        self.included.add(key)
        self.include_stack.append(key)
        try:
            self.script(script)
        finally:
            self.include_stack.pop()

    def script(self, script: Script) -> None:
        frame = _Frame(script.name)
        for node in script.nodes:
            if node.name == "require":
                frame.required.update(self.strings(frame, node.args.get("capabilities")))
        try:
            self.block(frame, script.nodes)
        except _Return:
            pass
        except RecursionError:
            raise SieveRuntimeError(0, "script too deeply nested", script.name) from None


def _number(value: Value | None, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _zone(text: str) -> timezone:
    found = re.fullmatch(r"([+-])([0-9]{2})([0-9]{2})", text.strip())
    if found is None:
        return UTC
    minutes = int(found.group(2)) * 60 + int(found.group(3))
    if minutes >= 24 * 60:
        return UTC
    return timezone(timedelta(minutes=minutes if found.group(1) == "+" else -minutes))


def _date_part(moment: datetime, part: str) -> str:
    """RFC 5260 4.2's date parts."""
    offset = moment.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    zone = f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    if part == "year":
        return f"{moment.year:04d}"
    if part == "month":
        return f"{moment.month:02d}"
    if part == "day":
        return f"{moment.day:02d}"
    if part == "date":
        return moment.strftime("%Y-%m-%d")
    if part == "julian":
        return str((moment.date() - datetime(1858, 11, 17).date()).days)
    if part == "hour":
        return f"{moment.hour:02d}"
    if part == "minute":
        return f"{moment.minute:02d}"
    if part == "second":
        return f"{moment.second:02d}"
    if part == "time":
        return moment.strftime("%H:%M:%S")
    if part == "iso8601":
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + (
            f"{zone[:3]}:{zone[3:]}")
    if part == "std11":
        return moment.strftime("%a, %d %b %Y %H:%M:%S ") + zone
    if part == "zone":
        return zone
    if part == "weekday":
        return str((moment.weekday() + 1) % 7)
    return ""


_ADDRESS = re.compile(r"[^\s@<>\"(),;:\\\[\]]{1,64}@[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_FIELD_NAME = re.compile(r"[!-9;-~]{1,200}")
_LINE_BREAKS = re.compile(r"[\r\n\x00]+")
#: fields editheader leaves alone: the message's path and our loop marker
PROTECTED_FIELDS = frozenset({"received", "auto-submitted", "x-postroom-loop"})
MAX_EDITS = 32
MAX_FIELD = 998


def _check_mailbox(frame: _Frame, node: Node, name: str) -> None:
    if not name or len(name) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in name) \
            or name.startswith("/") or ".." in name.split("/") or "*" in name or "%" in name:
        raise SieveRuntimeError(node.line, f"{name[:80]!r} is not a mailbox name", frame.script)


def _split_flags(text: str) -> list[str]:
    """A flag list (RFC 5232 3): space-separated, system flags in their usual case, the
    rest kept when it is an IMAP keyword; each once."""
    out: list[str] = []
    seen: set[str] = set()
    for item in text.split():
        flag = _SYSTEM_FLAGS.get(item.lower())
        if flag is None:
            if item.startswith("\\") or not _KEYWORD.fullmatch(item):
                continue
            flag = item
        if flag.lower() not in seen:
            seen.add(flag.lower())
            out.append(flag)
    return out


def _body_parts(raw: bytes, types: tuple[str, ...]) -> list[str]:
    """The decoded content of the MIME parts whose type is in ``types`` (``text`` for a whole
    type, ``text/html`` for one; empty: every part), RFC 5173 5.2/5.3."""
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
    except (ValueError, LookupError, TypeError, IndexError):
        return []
    out: list[str] = []
    stack: list[Message] = [message]
    seen = 0
    while stack and seen < MAX_BODY_PARTS:
        part = stack.pop()
        seen += 1
        if part.is_multipart():
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(reversed([c for c in children if isinstance(c, Message)]))
            continue
        content_type = part.get_content_type().lower()
        if types and not any(t == "" or content_type == t or content_type.split("/")[0] == t
                             for t in types):
            continue
        try:
            payload = part.get_payload(decode=True)
        except (ValueError, LookupError, TypeError):
            continue
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "us-ascii"
        try:
            out.append(payload.decode(charset, "replace"))
        except LookupError:
            out.append(payload.decode("utf-8", "replace"))
    return out


def run_scripts(scripts: Sequence[Script], message: MessageView, envelope: EnvelopeView,
                ctx: Context) -> list[Action]:
    """Run ``scripts`` in order as one run (the operator's, the account's, the operator's):
    actions add up, ``stop`` in any ends the run, and the implicit keep is kept unless
    one of them cancelled it. The actions to take, the keep (with its flags) last.

    SieveRuntimeError when the run cannot finish: the caller keeps the message.
    """
    run = _Run(message, envelope, ctx)
    try:
        for script in scripts:
            run.script(script)
    except _Stop:
        pass
    except _CallbackError as exc:
        raise exc.error from None
    except (SieveRuntimeError, MemoryError):
        raise
    except Exception as exc:
        # whatever a hostile message or script finds in here is a failed run: kept in INBOX
        raise SieveRuntimeError(0, f"internal error ({type(exc).__name__}: {exc})"[:300]
                                ) from exc
    actions = run.actions
    if run.implicit_keep and not any(isinstance(a, Keep) for a in actions):
        actions.append(Keep(tuple(run.flags), implicit=True))
    if run.edits:
        actions.append(EditHeaders(tuple(run.edits)))
    return _unique(actions)


def apply_edits(raw: bytes, edits: Sequence[HeaderEdit]) -> bytes:
    """``raw`` with the editheader changes made: the same changes in the same order to its
    header fields (names and occurrences as the run saw them), the body untouched. New
    values are RFC 2047-encoded when they are not ASCII."""
    end = raw.find(b"\r\n\r\n")
    sep = 4
    if end < 0:
        end, sep = raw.find(b"\n\n"), 2
    if end < 0:
        end, sep = len(raw), 0
    head, body = raw[:end], raw[end:]
    fields: list[list[bytes]] = []  # each: its lines, continuations included
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    if fields and not fields[-1][-1].endswith(b"\n"):
        fields[-1][-1] += b"\r\n"

    def name_of(field: list[bytes]) -> str:
        return field[0].split(b":", 1)[0].strip().decode("ascii", "replace").lower()

    for edit in edits:
        if edit.op == "add":
            added = [f"{edit.name}: {_encode_value(edit.value)}\r\n".encode("ascii")]
            if edit.last:
                fields.append(added)
            else:
                fields.insert(0, added)
        else:
            key = edit.name.lower()
            positions = [i for i, f in enumerate(fields) if name_of(f) == key]
            drop = {positions[k] for k in edit.occurrences if k < len(positions)}
            fields = [f for i, f in enumerate(fields) if i not in drop]
    out = b"".join(b"".join(f) for f in fields)
    if sep == 0:
        return out + b"\r\n"
    return out.rstrip(b"\r\n") + body


def _encode_value(value: str) -> str:
    if value.isascii():
        return value
    from email.header import Header

    return Header(value, "utf-8", maxlinelen=998).encode()


def _unique(actions: list[Action]) -> list[Action]:
    """One store per mailbox (keep is INBOX): the first action naming it wins."""
    out: list[Action] = []
    stored: set[str] = set()
    for action in actions:
        if isinstance(action, Keep | FileInto):
            target = "INBOX" if isinstance(action, Keep) else action.mailbox
            target = "INBOX" if target.upper() == "INBOX" else target
            if target in stored:
                continue
            stored.add(target)
        out.append(action)
    return out


def evaluate(script: Script, message: MessageView, envelope: EnvelopeView,
             ctx: Context) -> list[Action]:
    """Run one script (:func:`run_scripts` of it alone)."""
    return run_scripts([script], message, envelope, ctx)


__all__ = [
    "Action",
    "Context",
    "Discard",
    "EditHeaders",
    "EnvelopeView",
    "FileInto",
    "HeaderEdit",
    "Keep",
    "MessageView",
    "Redirect",
    "Reject",
    "Script",
    "SieveRuntimeError",
    "Vacation",
    "apply_edits",
    "evaluate",
    "run_scripts",
]
