"""Whether a Sieve script is one we run: sievelib's grammar, then our checks of what it means.

Pure functions of the text. :func:`compile_script` gives the tree the
interpreter runs (or raises :class:`ScriptError`); :func:`check_script` gives
the list of errors a user sees (empty: valid).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from postroom.sieve.grammar import Node, ScriptError, Value, parse

#: the extensions we run (RFC 5228 section 6 names; the ManageSieve SIEVE capability)
SIEVE_EXTENSIONS: tuple[str, ...] = (
    "fileinto", "reject", "ereject", "envelope", "encoded-character", "vacation",
    "imap4flags", "body", "variables", "relational", "comparator-i;ascii-numeric",
    "subaddress", "copy", "include", "date", "index", "mailbox", "editheader",
)
# what RFC 5228 and its extensions allow in each position
_DATE_PARTS = ("year", "month", "day", "date", "julian", "hour", "minute", "second",
               "time", "iso8601", "std11", "zone", "weekday")
_RELATIONS = ("gt", "ge", "lt", "le", "eq", "ne")
_ZONE = re.compile(r"[+-][0-9]{4}")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_FIELD_NAME = re.compile(r"[!-9;-~]{1,200}")
# a redirect or :from address: nothing that could break out of an SMTP command or header
_ADDRESS = re.compile(r"[^\s@<>\"(),;:\\\[\]]{1,64}@[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
MAX_VACATION_DAYS = 365
MAX_REASON_CHARS = 16_000


@dataclass(frozen=True)
class SieveError:
    """One problem in a script: its line (1-based; 0 when unknown) and what is wrong."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


def _has_variable(value: str) -> bool:
    return "${" in value


def _strings(value: Value | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, tuple):
        return value
    return (str(value),)


class _Checker:
    def __init__(self) -> None:
        self.required: set[str] = set()
        self.errors: list[SieveError] = []

    def error(self, node: Node, message: str) -> None:
        self.errors.append(SieveError(node.line, message))

    def need(self, node: Node, extension: str) -> None:
        if extension not in self.required:
            self.error(node, f"{node.name}: needs require \"{extension}\"")

    def script(self, nodes: Iterable[Node]) -> None:
        seen_other = False
        for node in nodes:
            if node.name == "require":
                if seen_other:
                    self.error(node, "require must come before any other command")
                for ext in _strings(node.args.get("capabilities")):
                    if ext not in SIEVE_EXTENSIONS:
                        self.error(node, f"unsupported extension \"{ext}\"")
                    self.required.add(ext)
                continue
            seen_other = True
            self.command(node)

    def block(self, nodes: Iterable[Node]) -> None:
        for node in nodes:
            if node.name == "require":
                self.error(node, "require must come before any other command")
            else:
                self.command(node)

    def common(self, node: Node) -> None:
        comparator = node.extra.get("comparator")
        if comparator == "i;ascii-numeric":
            self.need(node, "comparator-i;ascii-numeric")
        match = node.args.get("match-type")
        if match in (":count", ":value"):
            if node.extra.get("match-type") not in _RELATIONS:
                self.error(node, f"{match} needs one of {', '.join(_RELATIONS)}")
        if match == ":regex":
            self.error(node, ":regex is not supported")
        part = node.args.get("address-part")
        if part in (":user", ":detail"):
            self.need(node, "subaddress")
        index = node.extra.get("index")
        if "index" in node.args and (not isinstance(index, int) or index < 1):
            self.error(node, ":index needs a number from 1")
        if "last" in node.args and "index" not in node.args and node.name != "addheader":
            self.error(node, ":last needs :index")

    def test(self, node: Node) -> None:
        self.common(node)
        if node.name in ("date", "currentdate"):
            part = node.args.get("date-part")
            if isinstance(part, str) and not _has_variable(part) \
                    and part.lower() not in _DATE_PARTS:
                self.error(node, f"unknown date part \"{part}\"")
            zone = node.extra.get("zone")
            if isinstance(zone, str) and not _has_variable(zone) and not _ZONE.fullmatch(zone):
                self.error(node, f"zone \"{zone}\" is not +hhmm or -hhmm")
        if node.name == "string":
            self.need(node, "variables")
        for child in node.tests:
            self.test(child)

    def command(self, node: Node) -> None:
        self.common(node)
        for child in node.tests:
            self.test(child)
        name = node.name
        if name in ("elsif", "else", "if"):
            self.block(node.block)
            return
        if name == "fileinto":
            self.mailbox(node, node.args.get("mailbox"))
            if "create" in node.args:
                self.need(node, "mailbox")
        elif name == "redirect":
            address = node.args.get("address")
            if isinstance(address, str) and not _has_variable(address) \
                    and not _ADDRESS.fullmatch(address):
                self.error(node, f"redirect: \"{address[:100]}\" is not an e-mail address")
        elif name == "vacation":
            days = node.extra.get("days")
            if "days" in node.args and (not isinstance(days, int)
                                        or not 0 <= days <= MAX_VACATION_DAYS):
                self.error(node, f"vacation :days must be from 0 to {MAX_VACATION_DAYS}")
            if "seconds" in node.args:
                self.error(node, "vacation :seconds is not supported")
            sender = node.extra.get("from")
            if isinstance(sender, str) and not _has_variable(sender) \
                    and not _ADDRESS.search(sender):
                self.error(node, f"vacation :from \"{sender[:100]}\" has no e-mail address")
            for address in _strings(node.extra.get("addresses")):
                if not _has_variable(address) and not _ADDRESS.fullmatch(address.strip()):
                    self.error(node, f"vacation :addresses \"{address[:100]}\" is not an "
                                     "e-mail address")
            reason = node.args.get("reason")
            if isinstance(reason, str) and len(reason) > MAX_REASON_CHARS:
                self.error(node, f"vacation reason longer than {MAX_REASON_CHARS} characters")
        elif name == "set":
            variable = node.args.get("name")
            if isinstance(variable, str) and not _VARIABLE.fullmatch(variable):
                self.error(node, f"set: \"{variable[:64]}\" is not a variable name")
        elif name == "global":
            self.need(node, "variables")
            for variable in _strings(node.args.get("value")):
                if not _VARIABLE.fullmatch(variable):
                    self.error(node, f"global: \"{variable[:64]}\" is not a variable name")
        elif name == "include":
            script = node.args.get("script-name")
            if isinstance(script, str) and (not script or "/" in script or _has_variable(script)
                                            or any(ord(c) < 32 for c in script)):
                self.error(node, f"include: \"{script[:100]}\" is not a script name")
        elif name in ("addheader", "deleteheader"):
            field_name = node.args.get("field-name" if name == "addheader" else "value-patterns")
            if "field-name" in node.args and name == "deleteheader":
                field_name = node.args.get("field-name")
            if isinstance(field_name, str) and not _has_variable(field_name) \
                    and not _FIELD_NAME.fullmatch(field_name):
                self.error(node, f"{name}: \"{field_name[:100]}\" is not a header field name")

    def mailbox(self, node: Node, value: Value | None) -> None:
        if not isinstance(value, str) or _has_variable(value):
            return
        if not value or any(ord(c) < 32 or ord(c) == 127 for c in value) \
                or value.startswith("/") or ".." in value.split("/"):
            self.error(node, f"\"{value[:100]}\" is not a mailbox name")


def compile_script(text: str, *, max_bytes: int) -> tuple[Node, ...]:
    """The script's tree, or ScriptError for the first problem (:func:`check_script`)."""
    errors, nodes = _check(text, max_bytes)
    if errors:
        raise ScriptError(errors[0].line, errors[0].message)
    return nodes


def _check(text: str, max_bytes: int) -> tuple[list[SieveError], tuple[Node, ...]]:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return [SieveError(0, f"script is {size} bytes, more than {max_bytes}")], ()
    if "\x00" in text:
        return [SieveError(0, "script contains a NUL character")], ()
    try:
        nodes = parse(text)
    except ScriptError as exc:
        return [SieveError(exc.line, exc.message)], ()
    checker = _Checker()
    try:
        checker.script(nodes)
    except Exception as exc:  # noqa: BLE001 - a checker bug must read as a refused script
        return [SieveError(0, f"script not understood ({type(exc).__name__})")], ()
    return checker.errors[:50], nodes


def check_script(text: str, *, max_bytes: int) -> list[SieveError]:
    """The problems in a Sieve script (empty: valid and runnable here), each with its line."""
    return _check(text, max_bytes)[0]
