"""SEARCH keys (RFC 3501 6.4.4, RFC 7162 MODSEQ) into typed, nested key objects."""

from __future__ import annotations

import codecs

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
)
from postroom_imap.syntax_args import Args, parse_sequence_set
from postroom_imap.syntax_lexer import Atom, SyntaxProblem

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
    "RECENT": ("\\Recent", True), "OLD": ("\\Recent", False),
}
_TEXT_KEYS = ("BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO")
_DATE_KEYS = {
    "BEFORE": (False, "before"), "ON": (False, "on"), "SINCE": (False, "since"),
    "SENTBEFORE": (True, "before"), "SENTON": (True, "on"), "SENTSINCE": (True, "since"),
}
_ENTRY_TYPES = ("PRIV", "SHARED", "ALL")
_MAX_DEPTH = 64


class BadCharset(SyntaxProblem):
    """An unknown CHARSET: the reply is ``NO [BADCHARSET]``."""


def _key(args: Args, charset: str, depth: int) -> SearchKey:
    if depth > _MAX_DEPTH:
        raise SyntaxProblem("search keys nested too deeply")
    tok = args.peek()
    if isinstance(tok, list):
        args.pos += 1
        inner = Args(tok, "search list")
        keys = _keys(inner, charset, depth + 1)
        if not keys:
            raise SyntaxProblem("empty search list")
        return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
    if not isinstance(tok, Atom):
        raise SyntaxProblem("expected a search key")
    name = tok.text.upper()
    args.pos += 1
    if name == "ALL":
        return SearchAll()
    if name == "NEW":
        return SearchAnd((SearchFlag("\\Recent", True), SearchFlag("\\Seen", False)))
    if name in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[name]
        return SearchFlag(flag, present)
    if name in ("KEYWORD", "UNKEYWORD"):
        return SearchFlag(args.flag(), name == "KEYWORD")
    if name in _TEXT_KEYS:
        return SearchText(name.lower(), args.astring("search string", charset))
    if name == "HEADER":
        field = args.astring("header field name", charset)
        return SearchHeader(field.lower(), args.astring("search string", charset))
    if name in _DATE_KEYS:
        sent, op = _DATE_KEYS[name]
        return SearchDate(sent, op, args.date())
    if name in ("LARGER", "SMALLER"):
        return SearchSize(name.lower(), args.number("size"))
    if name == "UID":
        return SearchSet(args.sequence_set(), uid=True)
    if name == "NOT":
        return SearchNot(_key(args, charset, depth + 1))
    if name == "OR":
        left = _key(args, charset, depth + 1)
        return SearchOr(left, _key(args, charset, depth + 1))
    if name == "MODSEQ":
        entry = entry_type = None
        if args.more() and not (args.peek_atom() or "").isdigit():
            entry = args.astring("entry name").lower()
            entry_type = args.atom("entry type").upper()
            if entry_type not in _ENTRY_TYPES:
                raise SyntaxProblem("invalid MODSEQ entry type")
        return SearchModseq(args.modseq(), entry, entry_type)
    if name[:1].isdigit() or name[:1] in ("*", "$"):
        return SearchSet(parse_sequence_set(tok.text))
    raise SyntaxProblem("unknown search key")


def _keys(args: Args, charset: str, depth: int) -> list[SearchKey]:
    keys = []
    while args.more():
        keys.append(_key(args, charset, depth))
    return keys


def check_charset(name: str) -> str:
    """Normalise a CHARSET name; unknown ones raise BadCharset."""
    try:
        codecs.lookup(name)
    except LookupError as exc:
        raise BadCharset("unsupported charset") from exc
    return name.upper()


def parse_search_keys(args: Args, charset: str = "utf-8") -> SearchKey:
    """All remaining tokens as one key (AND of the top-level keys)."""
    keys = _keys(args, charset, 0)
    if not keys:
        raise SyntaxProblem("missing search key")
    return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
