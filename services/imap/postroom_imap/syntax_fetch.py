"""FETCH attributes: macros, BODY[section]<partial>, .PEEK, BINARY, MODSEQ and modifiers."""

from __future__ import annotations

import re

from postroom_imap.syntax_args import Args
from postroom_imap.syntax_lexer import Atom, Str, SyntaxProblem, tokenize
from postroom_imap.syntax_types import MAX_NUMBER, FetchItem, Section

_SIMPLE = ("ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
           "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID", "MODSEQ", "X-GM-MSGID", "EMAILID",
           "THREADID", "SAVEDATE")
MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SECTIONED = re.compile(
    r"^(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK|BINARY\.SIZE)\[(.*)\](?:<(\d{1,10})\.(\d{1,10})>)?$",
    re.S | re.I)
_PART = re.compile(r"^[1-9]\d{0,8}$")
_TEXTS = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")


def parse_section(spec: str, binary: bool) -> Section:
    """``1.2.HEADER.FIELDS (A B)`` into a Section."""
    head, _, rest = spec.partition(" ")
    path: list[int] = []
    words = head.split(".") if head else []
    while words and _PART.match(words[0]):
        path.append(int(words.pop(0)))
    text = ".".join(words).upper()
    if text and text not in _TEXTS:
        raise SyntaxProblem("invalid section")
    if binary and text:
        raise SyntaxProblem("BINARY takes only a part number")
    if text == "MIME" and not path:
        raise SyntaxProblem("MIME needs a part number")
    fields: tuple[str, ...] = ()
    if text.startswith("HEADER.FIELDS"):
        tokens = tokenize([rest.encode("utf-8")], [], 2, 1000)
        if len(tokens) != 1 or not isinstance(tokens[0], list) or not tokens[0]:
            raise SyntaxProblem("HEADER.FIELDS needs a list of field names")
        names = Args(tokens[0], "header list")
        out = []
        while names.more():
            out.append(names.astring("header field name").upper())
        fields = tuple(out)
    elif rest.strip():
        raise SyntaxProblem("invalid section")
    return Section(tuple(path), text, fields)


def parse_fetch_att(text: str) -> FetchItem:
    """One fetch attribute written as an atom."""
    upper = text.upper()
    if upper in _SIMPLE:
        return FetchItem(upper)
    if upper == "BINARY.SIZE":
        raise SyntaxProblem("BINARY.SIZE needs a section")
    match = _SECTIONED.match(text)
    if not match:
        raise SyntaxProblem("unknown fetch attribute")
    name = match.group(1).upper()
    peek = name.endswith(".PEEK")
    base = name.removesuffix(".PEEK")
    section = parse_section(match.group(2), binary=base.startswith("BINARY"))
    partial = None
    if match.group(3) is not None:
        if base == "BINARY.SIZE":
            raise SyntaxProblem("BINARY.SIZE takes no partial")
        start, length = int(match.group(3)), int(match.group(4))
        if length == 0 or start > MAX_NUMBER or length > MAX_NUMBER:
            raise SyntaxProblem("invalid partial range")
        partial = (start, length)
    return FetchItem(base, section, partial, peek)


def parse_fetch_items(args: Args) -> tuple[tuple[FetchItem, ...], str | None]:
    """Macro, single attribute or parenthesised list; returns items and the macro name."""
    tok = args.next("fetch attributes")
    if isinstance(tok, Atom):
        upper = tok.text.upper()
        if upper in MACROS:
            return tuple(FetchItem(n) for n in MACROS[upper]), upper
        return (parse_fetch_att(tok.text),), None
    if isinstance(tok, list):
        if not tok:
            raise SyntaxProblem("empty fetch attribute list")
        items = []
        for item in tok:
            if not isinstance(item, Atom):
                raise SyntaxProblem("invalid fetch attribute")
            items.append(parse_fetch_att(item.text))
        return tuple(items), None
    if isinstance(tok, Str):
        raise SyntaxProblem("fetch attributes cannot be strings")
    raise SyntaxProblem("invalid fetch attributes")
