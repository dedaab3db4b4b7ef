"""Sieve scripts parsed by sievelib into our own tree (:class:`Node`), with line numbers.

sievelib (PyPI) reads the RFC 5228 grammar and knows most commands; the syntax
of the extensions it lacks is registered here through its command API
(``sievelib.commands.add_commands``): ``ereject`` (RFC 5429), ``include``,
``return`` and ``global`` (RFC 6609), ``mailboxexists`` (RFC 5490),
``addheader``/``deleteheader`` (RFC 5293), the ``string`` test (RFC 5229),
``:user``/``:detail`` (RFC 5233), ``:index``/``:last`` (RFC 5260) and the
``i;ascii-numeric`` comparator. Its tree keeps strings quoted; :func:`parse`
turns it into frozen :class:`Node` values with decoded strings and numbers,
which is all the interpreter sees. sievelib keeps its parsing state per
thread, so parsing is safe from the mda's worker threads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sievelib import commands as sc
from sievelib.parser import Parser

# a tree deeper than this is refused (the interpreter recurses along it)
MAX_DEPTH = 24
MAX_NODES = 20_000

Value = str | int | tuple[str, ...] | bool


class ScriptError(ValueError):
    """A script that is not valid Sieve (or uses what we do not support); ``line`` is 1-based,
    0 when unknown."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Node:
    """One command or test: its name, the line it starts on, its arguments by sievelib's
    argument name (tags as their lower-case tag, e.g. ``args["match-type"] == ":count"``,
    with the tag's own value in ``extra``), its tests and its block."""

    name: str
    line: int
    args: dict[str, Value] = field(default_factory=dict)
    extra: dict[str, Value] = field(default_factory=dict)
    tests: tuple[Node, ...] = ()
    block: tuple[Node, ...] = ()


# --- the syntax sievelib lacks, registered through its command API

_COMPARATOR: sc.CommandArg = {
    "name": "comparator",
    "type": ["tag"],
    "values": [":comparator"],
    "extra_arg": {"type": "string",
                  "values": ['"i;octet"', '"i;ascii-casemap"', '"i;ascii-numeric"']},
    "required": False,
}
_ADDRESS_PART: sc.CommandArg = {
    "name": "address-part",
    "values": [":localpart", ":domain", ":all"],
    "extension_values": {":user": "subaddress", ":detail": "subaddress"},
    "type": ["tag"],
    "required": False,
}
_INDEX: sc.CommandArg = {"name": "index", "type": ["tag"], "values": [":index"],
                         "extra_arg": {"type": "number"}, "extension": "index",
                         "required": False}
_LAST: sc.CommandArg = {"name": "last", "type": ["tag"], "values": [":last"],
                        "extension": "index", "required": False}
_MATCH_TYPE = sc.match_type
_KEYS: sc.CommandArg = {"name": "key-list", "type": ["string", "stringlist"], "required": True}


class HeaderCommand(sc.TestCommand):
    args_definition = [_INDEX, _LAST, _COMPARATOR, _MATCH_TYPE,
                       {"name": "header-names", "type": ["string", "stringlist"],
                        "required": True}, _KEYS]


class AddressCommand(sc.TestCommand):
    args_definition = [_INDEX, _LAST, _COMPARATOR, _ADDRESS_PART, _MATCH_TYPE,
                       {"name": "header-list", "type": ["string", "stringlist"],
                        "required": True}, _KEYS]


class EnvelopeCommand(sc.TestCommand):
    extension = "envelope"
    args_definition = [_COMPARATOR, _ADDRESS_PART, _MATCH_TYPE,
                       {"name": "header-list", "type": ["string", "stringlist"],
                        "required": True}, _KEYS]


class BodyCommand(sc.TestCommand):
    extension = "body"
    args_definition = [_COMPARATOR, _MATCH_TYPE,
                       {"name": "body-transform", "values": [":raw", ":content", ":text"],
                        "extra_arg": {"type": "stringlist", "valid_for": [":content"]},
                        "type": ["tag"], "required": False}, _KEYS]


class HasflagCommand(sc.HasflagCommand):
    args_definition = [_COMPARATOR, _MATCH_TYPE,
                       {"name": "variable-list", "type": ["string", "stringlist"],
                        "required": False},
                       {"name": "list-of-flags", "type": ["string", "stringlist"],
                        "required": True}]


class DateCommand(sc.TestCommand):
    extension = "date"
    args_definition = [_INDEX, _LAST,
                       {"name": "zone", "type": ["tag"], "values": [":zone", ":originalzone"],
                        "extra_arg": {"type": "string", "valid_for": [":zone"]},
                        "required": False},
                       _COMPARATOR, _MATCH_TYPE,
                       {"name": "header-name", "type": ["string"], "required": True},
                       {"name": "date-part", "type": ["string"], "required": True}, _KEYS]


class CurrentdateCommand(sc.TestCommand):
    extension = "date"
    args_definition = [{"name": "zone", "type": ["tag"], "values": [":zone"],
                        "extra_arg": {"type": "string"}, "required": False},
                       _COMPARATOR, _MATCH_TYPE,
                       {"name": "date-part", "type": ["string"], "required": True}, _KEYS]


class StringCommand(sc.TestCommand):
    """RFC 5229 section 5: ``string [MATCH-TYPE] [COMPARATOR] <source> <key-list>``."""

    extension = "variables"
    args_definition = [_COMPARATOR, _MATCH_TYPE,
                       {"name": "source", "type": ["string", "stringlist"], "required": True},
                       _KEYS]


class MailboxexistsCommand(sc.TestCommand):
    """RFC 5490 section 3.1."""

    extension = "mailbox"
    args_definition = [{"name": "mailbox-names", "type": ["string", "stringlist"],
                        "required": True}]


class ErejectCommand(sc.ActionCommand):
    """RFC 5429 section 2.1: ``ereject <reason>`` (sievelib knows ``reject`` only)."""

    extension = "ereject"
    args_definition = [{"name": "text", "type": ["string"], "required": True}]


class IncludeCommand(sc.ActionCommand):
    """RFC 6609 section 3.2: ``include [:personal / :global] [:once] [:optional] <name>``."""

    extension = "include"
    args_definition = [
        {"name": "location", "type": ["tag"], "values": [":personal", ":global"],
         "required": False},
        {"name": "once", "type": ["tag"], "values": [":once"], "required": False},
        {"name": "optional", "type": ["tag"], "values": [":optional"], "required": False},
        {"name": "script-name", "type": ["string"], "required": True},
    ]


class ReturnCommand(sc.ActionCommand):
    extension = "include"
    args_definition: list[sc.CommandArg] = []


class GlobalCommand(sc.ActionCommand):
    extension = "include"
    args_definition = [{"name": "value", "type": ["string", "stringlist"], "required": True}]


class AddheaderCommand(sc.ActionCommand):
    """RFC 5293 section 4: ``addheader [:last] <field-name> <value>``."""

    extension = "editheader"
    args_definition = [
        {"name": "last", "type": ["tag"], "values": [":last"], "required": False},
        {"name": "field-name", "type": ["string"], "required": True},
        {"name": "value", "type": ["string"], "required": True},
    ]


class DeleteheaderCommand(sc.ActionCommand):
    """RFC 5293 section 5: ``deleteheader [:index N [:last]] [COMPARATOR] [MATCH-TYPE]
    <field-name> [<value-patterns>]`` (one string: the field name)."""

    extension = "editheader"
    non_deterministic_args = True
    args_definition = [
        {"name": "index", "type": ["tag"], "values": [":index"],
         "extra_arg": {"type": "number"}, "required": False},
        {"name": "last", "type": ["tag"], "values": [":last"], "required": False},
        _COMPARATOR, _MATCH_TYPE,
        {"name": "field-name", "type": ["string"], "required": False},
        {"name": "value-patterns", "type": ["string", "stringlist"], "required": True},
    ]

    def reassign_arguments(self) -> None:
        if "field-name" in self.arguments and "value-patterns" not in self.arguments:
            self.arguments["value-patterns"] = self.arguments.pop("field-name")
            self.rargs_cnt = 1


# sievelib finds a command by its class name ("ereject" -> ErejectCommand): these replace or
# add to its own
sc.add_commands([HeaderCommand, AddressCommand, EnvelopeCommand, BodyCommand, HasflagCommand,
                 DateCommand, CurrentdateCommand, StringCommand, MailboxexistsCommand,
                 ErejectCommand, IncludeCommand, ReturnCommand, GlobalCommand,
                 AddheaderCommand, DeleteheaderCommand])


# --- from sievelib's tree to ours

_NUMBER = re.compile(r"([0-9]{1,12})([KMGkmg]?)")
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def decode_string(raw: str) -> str:
    """The value of a quoted string or a ``text:`` multi-line string (RFC 5228 2.4.2)."""
    if raw.startswith('"'):
        return _ESCAPE.sub(r"\1", raw[1:-1])
    # text: [whitespace] [comment] CRLF *lines "." CRLF; a line starting ".." loses one dot
    body = raw.split("\n", 1)[1] if "\n" in raw else ""
    lines = body.split("\n")
    # the last line is the lone "."
    while lines and lines[-1].rstrip("\r") in ("", "."):
        last = lines.pop()
        if last.rstrip("\r") == ".":
            break
    out = [line[1:] if line.startswith("..") else line for line in lines]
    return "".join(line.rstrip("\r") + "\r\n" for line in out)


def decode_number(raw: str) -> int:
    found = _NUMBER.fullmatch(raw)
    if found is None:
        raise ScriptError(0, f"{raw[:20]!r} is not a number")
    return int(found.group(1)) * _UNITS[found.group(2).lower()]


def _value(raw: Any, kinds: Any) -> Value:
    if isinstance(raw, list):
        return tuple(decode_string(item) for item in raw)
    if isinstance(raw, str):
        if raw.startswith(('"', "text:")):
            return decode_string(raw)
        if raw[:1].isdigit():
            return decode_number(raw)
        return raw.lower()
    raise ScriptError(0, f"unexpected argument {type(raw).__name__}")


class _LineParser(Parser):
    """sievelib's parser, noting the line each command starts on."""

    def __init__(self) -> None:
        super().__init__()
        self._line_pos = 0
        self._line = 1

    def line_now(self) -> int:
        pos = self.lexer.pos
        if pos < self._line_pos:
            self._line_pos, self._line = 0, 1
        self._line += self.lexer.text.count(b"\n", self._line_pos, pos)
        self._line_pos = pos
        return self._line

    def _Parser__command(self, ttype: str, tvalue: bytes) -> bool:
        done: bool = Parser._Parser__command(self, ttype, tvalue)  # type: ignore[attr-defined]
        current = self._Parser__curcommand  # type: ignore[attr-defined]
        if current is not None and not hasattr(current, "postroom_line"):
            current.postroom_line = self.line_now()
        return done


def _convert(cmd: Any, depth: int, count: list[int], parent_line: int) -> Node:
    count[0] += 1
    line = int(getattr(cmd, "postroom_line", parent_line))
    if depth > MAX_DEPTH:
        raise ScriptError(line, f"commands nested deeper than {MAX_DEPTH}")
    if count[0] > MAX_NODES:
        raise ScriptError(line, f"more than {MAX_NODES} commands and tests")
    args: dict[str, Value] = {}
    extra: dict[str, Value] = {}
    tests: list[Node] = []
    for definition in cmd.args_definition:
        name = definition["name"]
        if name not in cmd.arguments:
            continue
        raw = cmd.arguments[name]
        if definition["type"] in (["test"], ["testlist"]):
            items = raw if isinstance(raw, list) else [raw]
            tests.extend(_convert(t, depth + 1, count, line) for t in items)
            continue
        args[name] = _value(raw, definition["type"])
        if name in cmd.extra_arguments:
            extra[name] = _value(cmd.extra_arguments[name], definition.get("extra_arg"))
    block = tuple(_convert(child, depth + 1, count, line) for child in cmd.children)
    return Node(cmd.name, line, args, extra, tuple(tests), block)


def parse(text: str) -> tuple[Node, ...]:
    """The script's commands, or ScriptError (with the line sievelib or we found it on)."""
    parser = _LineParser()
    try:
        ok = parser.parse(text.encode("utf-8", "surrogatepass"))
    except Exception as exc:  # noqa: BLE001 - a parser bug must read as a refused script
        # sievelib catches its own errors; anything else is a bug in it, on hostile text: the
        # script is refused (and at delivery, the message kept), never a crash
        raise ScriptError(0, f"script not understood ({type(exc).__name__})") from None
    if not ok:
        line = int(getattr(parser, "error_pos", (0,))[0])
        message = str(getattr(parser, "error", "parse error"))
        message = re.sub(r"^line \d+: ", "", message)
        raise ScriptError(line, message[:300])
    count = [0]
    try:
        return tuple(_convert(cmd, 0, count, 1) for cmd in parser.result)
    except ScriptError:
        raise
    except Exception as exc:  # noqa: BLE001 - as above: a tree we cannot read is refused
        raise ScriptError(0, f"script not understood ({type(exc).__name__})") from None
