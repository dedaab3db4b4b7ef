"""METADATA (RFC 5464): the command grammar, value rendering and replies with an in-memory store."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from postroom_imap.handlers_metadata import metadata_value
from postroom_imap.policy import MetadataMaxSize, MetadataTooMany
from postroom_imap.syntax import Command, CommandReader, Limits
from postroom_imap.syntax_commands import metadata_entry
from postroom_imap.syntax_lexer import SyntaxProblem
from postroom_imap.syntax_types import GetMetadata, SetMetadata
from tests.unit.test_imap_protocol import FakeStore, Harness


def parse(line: bytes) -> Any:
    (event,) = CommandReader(Limits()).feed(line)
    return event.args if isinstance(event, Command) else event


def test_getmetadata_forms_of_the_rfc() -> None:
    assert parse(b'a GETMETADATA "" /shared/comment\r\n') == GetMetadata(
        "", ("/shared/comment",))
    assert parse(b'a GETMETADATA "INBOX" (MAXSIZE 1024) ("/shared/comment" '
                 b'"/private/comment")\r\n') == GetMetadata(
        "INBOX", ("/shared/comment", "/private/comment"), 1024)
    assert parse(b'a GETMETADATA (DEPTH 1) "" "/Private/Filters/Values"\r\n') == GetMetadata(
        "", ("/private/filters/values",), None, "1")


def test_setmetadata_values_and_nil() -> None:
    assert parse(b'a SETMETADATA INBOX (/private/comment {5+}\r\nhello /shared/x NIL)\r\n'
                 ) == SetMetadata("INBOX", (("/private/comment", b"hello"),
                                            ("/shared/x", None)))


@pytest.mark.parametrize("name", [b"comment", b"/private", b"/private/", b"/other/x",
                                  b"/private//x", b"/private/a*", b"/shared/%", b"/private/\x01",
                                  b"/private/" + b"x" * 1100])
def test_bad_entry_names(name: bytes) -> None:
    with pytest.raises(SyntaxProblem):
        metadata_entry(name)


def test_values_are_quoted_or_literals() -> None:
    assert metadata_value(None) == b"NIL"
    assert metadata_value(b"Shared comment") == b'"Shared comment"'
    assert metadata_value(b'say "hi"') == b'{8}\r\nsay "hi"'
    assert metadata_value(b"a\x00b") == b"~{3}\r\na\x00b"


class Annotated(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[str, str], bytes] = {("", "/shared/comment"): b"x" * 2199,
                                                     ("", "/private/comment"): b"My own"}
        self.refuse: Exception | None = None

    def get_metadata(self, mailbox: str, names: Any, depth: str) -> Deferred[Any]:
        return succeed([(n, self.values.get((mailbox, n))) for n in names])

    def set_metadata(self, mailbox: str, entries: Any) -> Deferred[None]:
        if self.refuse is not None:
            return fail(self.refuse)
        for name, value in entries:
            self.values[(mailbox, name)] = value
        return succeed(None)


def test_replies_with_longentries_and_limit_codes() -> None:
    h = Harness(tls=True)
    store = h.store = h.accounts.store = Annotated()
    h.login()
    assert h.send(b'a GETMETADATA "" (MAXSIZE 1024) ("/shared/comment" '
                  b'"/private/comment")\r\n') == (
        b'* METADATA "" (/private/comment "My own")\r\n'
        b"a OK [METADATA LONGENTRIES 2199] GETMETADATA completed\r\n")
    store.refuse = MetadataMaxSize(1024)
    assert h.send(b'b SETMETADATA "" (/private/comment "x")\r\n') == (
        b"b NO [METADATA MAXSIZE 1024] metadata value too large\r\n")
    store.refuse = MetadataTooMany()
    assert h.send(b'c SETMETADATA "" (/private/comment "x")\r\n') == (
        b"c NO [METADATA TOOMANY] too many metadata entries\r\n")
    assert h.send(b"d GETMETADATA\r\n").startswith(b"d BAD ")
