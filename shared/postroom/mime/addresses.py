"""A tolerant RFC 5322 address-list parser producing RFC 3501 envelope addresses."""

from __future__ import annotations

import re

from postroom.mime.model import Address

MISSING_HOST = ".MISSING-HOST-NAME."
MISSING_MAILBOX = "MISSING_MAILBOX"
MAX_ADDRESSES = 500

_TOKEN = re.compile(r'\s+|"(?:[^"\\]|\\.)*"?|[<>@,;:.\[\]]|[^\s"<>@,;:.()\[\]]+|.', re.S)


def _tokens(text: str) -> tuple[list[str], list[str]]:
    """Split into tokens (quoted strings keep their quotes); comments go to a side list."""
    tokens: list[str] = []
    comments: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos] == "(":
            depth, start = 0, pos
            while pos < len(text):
                ch = text[pos]
                if ch == "\\":
                    pos += 1
                elif ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        break
                pos += 1
            comments.append(text[start + 1 : pos].strip())
            pos += 1
            continue
        if text[pos] == "[":
            end = text.find("]", pos)
            end = len(text) - 1 if end < 0 else end
            tokens.append(text[pos : end + 1])
            pos = end + 1
            continue
        match = _TOKEN.match(text, pos)
        assert match is not None  # the last alternative matches any character
        if not match.group(0).isspace():
            tokens.append(match.group(0))
        pos = match.end()
    return tokens, comments


def _word(token: str) -> str:
    if len(token) >= 2 and token[0] == '"' and token[-1] == '"':
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token.strip('"')


def _phrase(tokens: list[str]) -> str | None:
    text = " ".join(_word(t) for t in tokens).replace(" . ", ".").replace(" @ ", "@").strip()
    return text or None


def _local(tokens: list[str]) -> str:
    return "".join(_word(t) for t in tokens) or MISSING_MAILBOX


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens, self.comments = _tokens(text)
        self.pos = 0
        self.out: list[Address] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def until(self, stops: set[str]) -> list[str]:
        start = self.pos
        while self.pos < len(self.tokens) and self.tokens[self.pos] not in stops:
            self.pos += 1
        return self.tokens[start : self.pos]

    def mailbox(self, in_group: bool) -> None:
        stops = {"<", "@", ",", ";"} if in_group else {"<", "@", ",", ":", ";"}
        phrase = self.until(stops)
        tok = self.peek()
        if tok == ":" and not in_group:
            self.pos += 1
            self.out.append(Address(None, None, _phrase(phrase) or "", None))
            while self.peek() not in (None, ";") and len(self.out) < MAX_ADDRESSES:
                if self.peek() == ",":
                    self.pos += 1
                    continue
                self.mailbox(in_group=True)
            if self.peek() == ";":
                self.pos += 1
            self.out.append(Address(None, None, None, None))
            return
        if tok == "<":
            self.pos += 1
            inner = self.until({">", ",", ";"} if ">" not in self.tokens[self.pos :] else {">"})
            if self.peek() == ">":
                self.pos += 1
            self.until({",", ";"})
            self.out.append(self._angle(_phrase(phrase), inner))
            return
        if tok == "@":
            self.pos += 1
            domain = self.until({",", ";", "<"})
            if self.peek() == "<":  # "a@b <c@d>": the phrase was an unquoted address
                self.pos += 1
                inner = self.until({">"})
                if self.peek() == ">":
                    self.pos += 1
                name = _phrase([*phrase, "@", *domain])
                self.out.append(self._angle(name, inner))
                return
            name = self.comments.pop(0) if self.comments else None
            host = "".join(domain) or MISSING_HOST
            self.out.append(Address(name or None, None, _local(phrase), host))
            return
        if phrase:
            self.out.append(Address(None, None, _local(phrase), MISSING_HOST))
        if tok in (",",) or (tok == ";" and not in_group):
            self.pos += 1
        elif tok == ":":
            self.pos += 1

    def _angle(self, name: str | None, inner: list[str]) -> Address:
        adl = None
        if ":" in inner:
            cut = inner.index(":")
            adl = "".join(inner[:cut]) or None
            inner = inner[cut + 1 :]
        if "@" in inner:
            cut = len(inner) - 1 - inner[::-1].index("@")
            host = "".join(inner[cut + 1 :]) or MISSING_HOST
            return Address(name, adl, _local(inner[:cut]), host)
        if not inner:
            # "<>" is the null reverse path; keep it as an empty mailbox.
            return Address(name, adl, "", MISSING_HOST)
        return Address(name, adl, _local(inner), MISSING_HOST)

    def run(self) -> list[Address]:
        while self.pos < len(self.tokens) and len(self.out) < MAX_ADDRESSES:
            before = self.pos
            self.mailbox(in_group=False)
            if self.pos == before:
                self.pos += 1  # always make progress on junk such as a stray ">"
        return self.out


def parse_addresses(text: str) -> list[Address]:
    """Addresses in ``text`` (raw header value); group markers as RFC 3501 describes."""
    return _Parser(text).run()
