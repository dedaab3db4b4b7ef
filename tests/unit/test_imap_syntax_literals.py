"""The command reader's literal rules: nothing large before login, budgets after, APPEND spooled."""

from __future__ import annotations

from typing import Any

import pytest

from postroom_imap import syntax
from postroom_imap.spool import SpooledLiteral
from postroom_imap.syntax import (
    Command,
    CommandReader,
    LiteralRefused,
    LiteralTooBig,
    NeedContinuation,
    ParseError,
)
from postroom_imap.syntax import Limits as ReaderLimits
from postroom_imap.syntax_types import Append

MB = 1_000_000


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


class Recorded(SpooledLiteral):
    """A SpooledLiteral that remembers every instance, to check they all get closed."""

    made: list[Recorded] = []

    def __init__(self, size: int) -> None:
        super().__init__(size)
        Recorded.made.append(self)


@pytest.fixture
def spools(monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    Recorded.made = []
    monkeypatch.setattr(syntax, "SpooledLiteral", Recorded)
    return Recorded.made


# --- before login


def test_preauth_append_is_refused_before_any_continuation() -> None:
    reader = CommandReader()
    events = reader.feed(b"a APPEND INBOX {500}\r\nb NOOP\r\n")
    assert events == [LiteralRefused("a", "APPEND not allowed now", "preauth_append"),
                      Command("b", "NOOP", events[1].args)]
    assert not any(isinstance(e, NeedContinuation) for e in events)


def test_preauth_append_literal_plus_data_is_discarded_not_held() -> None:
    reader = CommandReader()
    events = reader.feed(b"a APPEND INBOX {%d+}\r\n" % (30 * MB))
    assert kinds(events) == ["LiteralRefused"]
    chunk = b"x" * (64 * 1024)
    for _ in range(30 * MB // len(chunk)):
        assert reader.feed(chunk) == []
        assert reader.held == 0
    # the rest of the first literal, then more continuation literals of the same command
    rest = 30 * MB - (30 * MB // len(chunk)) * len(chunk)
    assert reader.feed(b"y" * rest + b" {%d+}\r\n" % MB) == []
    assert reader.feed(b"z" * MB) == [] and reader.held == 0
    events = reader.feed(b"\r\nb NOOP\r\n")
    assert kinds(events) == ["Command"] and events[0].tag == "b"


def test_preauth_literal_over_the_small_limit_gets_no_continuation() -> None:
    reader = CommandReader()
    events = reader.feed(b"a LOGIN {5000}\r\n")
    assert events == [LiteralRefused("a", "[TOOBIG] literal too large before login",
                                     "preauth_size")]


def test_preauth_command_total_is_bounded_across_small_literals() -> None:
    reader = CommandReader(ReaderLimits(max_preauth_literal=100, max_preauth_command=250))
    events = reader.feed(b"a ID (" + b'"k" {100+}\r\n' + b"v" * 100 + b' "k" {100+}\r\n'
                         + b"v" * 100 + b' "k" {100+}\r\n' + b"v" * 100 + b")\r\nb NOOP\r\n")
    assert kinds(events) == ["LiteralRefused", "Command"]
    assert events[0].why == "preauth_size" and events[1].tag == "b"


def test_preauth_login_with_small_literals_works() -> None:
    reader = CommandReader()
    assert reader.feed(b"a LOGIN {4}\r\n") == [NeedContinuation("a", 4)]
    events = reader.feed(b"fred {6+}\r\nsecret\r\n")
    assert events[0].args.user == "fred" and events[0].args.password == "secret"


def test_login_pauses_the_reader_so_pipelined_append_is_judged_after_it() -> None:
    reader = CommandReader()
    events = reader.feed(b"a LOGIN u p\r\nb APPEND INBOX {5+}\r\nhello\r\n")
    assert kinds(events) == ["Command"] and events[0].name == "LOGIN"
    assert reader.paused and reader.held == len(b"b APPEND INBOX {5+}\r\nhello\r\n")
    reader.authenticated = True  # the server's LOGIN succeeded
    events = reader.resume()
    assert kinds(events) == ["Command"] and events[0].args.messages[0].data == b"hello"


def test_failed_login_leaves_pipelined_append_refused() -> None:
    reader = CommandReader()
    reader.feed(b"a LOGIN u wrong\r\nb APPEND INBOX {5+}\r\nhello\r\nc NOOP\r\n")
    events = reader.resume()
    assert kinds(events) == ["LiteralRefused", "Command"] and events[1].tag == "c"


# --- after login: per-command budget and literal count


def test_append_command_total_is_bounded_across_messages() -> None:
    limits = ReaderLimits(max_append_literal=100, max_append_command=250)
    reader = CommandReader(limits, authenticated=True)
    events = reader.feed(b"a APPEND INBOX {100+}\r\n" + b"m" * 100 + b" {100+}\r\n" + b"m" * 100
                         + b" {100+}\r\n" + b"m" * 100 + b"\r\nb NOOP\r\n")
    assert kinds(events) == ["LiteralTooBig", "Command"]
    assert events[0] == LiteralTooBig("a", 100, False) and events[1].tag == "b"


def test_literal_count_is_capped_per_command() -> None:
    reader = CommandReader(ReaderLimits(max_literals=3), authenticated=True)
    events = reader.feed(b"a APPEND INBOX {1+}\r\nw {1+}\r\nx {1+}\r\ny {1+}\r\nz\r\nb NOOP\r\n")
    assert events == [LiteralRefused("a", "too many literals in one command", "count"),
                      Command("b", "NOOP", events[1].args)]


def test_literal_count_cap_allows_exactly_the_limit() -> None:
    reader = CommandReader(ReaderLimits(max_literals=3), authenticated=True)
    events = reader.feed(b"a APPEND INBOX {1+}\r\nw {1+}\r\nx {1+}\r\ny\r\n")
    assert [m.data for m in events[0].args.messages] == [b"w", b"x", b"y"]


def test_synchronizing_literal_over_the_count_gets_no_continuation() -> None:
    reader = CommandReader(ReaderLimits(max_literals=1), authenticated=True)
    assert kinds(reader.feed(b"a LOGIN {1}\r\n")) == ["NeedContinuation"]
    assert kinds(reader.feed(b"u {1}\r\n")) == ["LiteralRefused"]


def test_held_counts_the_command_being_read() -> None:
    reader = CommandReader(authenticated=True)
    reader.feed(b"a APPEND INBOX {1000+}\r\n" + b"m" * 400)
    assert reader.held == len(b"a APPEND INBOX {1000+}\r\n") + 400
    events = reader.feed(b"m" * 600 + b"\r\n")
    assert reader.held == 0
    assert events[0].size == len(b"a APPEND INBOX {1000+}\r\n") + 1000 + 2


# --- APPEND data spooled to disk


def test_large_append_literal_goes_to_a_temporary_file(spools: list[Recorded]) -> None:
    reader = CommandReader(ReaderLimits(spool_threshold=1000), authenticated=True)
    payload = bytes(range(256)) * 40  # 10,240 bytes, every byte value
    assert reader.feed(b"a APPEND INBOX {%d+}\r\n" % len(payload) + payload[:5000]) == []
    assert len(spools) == 1 and spools[0].written == 5000
    events = reader.feed(payload[5000:] + b"\r\n")
    message = events[0].args.messages[0]
    assert message.data is spools[0] and message.data.read() == payload
    events[0].args.close()
    assert spools[0].closed


def test_small_append_literal_stays_in_memory(spools: list[Recorded]) -> None:
    reader = CommandReader(ReaderLimits(spool_threshold=1000), authenticated=True)
    events = reader.feed(b"a APPEND INBOX {500+}\r\n" + b"m" * 500 + b"\r\n")
    assert events[0].args.messages[0].data == b"m" * 500 and spools == []


def test_multiappend_spools_once_memory_would_pass_the_threshold(spools: list[Recorded]) -> None:
    reader = CommandReader(ReaderLimits(spool_threshold=1000), authenticated=True)
    events = reader.feed(b"a APPEND INBOX {400+}\r\n" + b"a" * 400 + b" {400+}\r\n" + b"b" * 400
                         + b" {400+}\r\n" + b"c" * 400 + b"\r\n")
    data = [m.data for m in events[0].args.messages]
    assert data[:2] == [b"a" * 400, b"b" * 400]
    assert isinstance(data[2], SpooledLiteral) and data[2].read() == b"c" * 400


def test_spooled_literal_is_not_accepted_as_a_mailbox_name(spools: list[Recorded]) -> None:
    reader = CommandReader(ReaderLimits(spool_threshold=10), authenticated=True)
    events = reader.feed(b"a APPEND {20+}\r\n" + b"n" * 20 + b" {3+}\r\nmsg\r\n")
    assert events == [ParseError("a", "mailbox name too long")]
    assert spools and all(s.closed for s in spools)


def test_spooled_literals_of_a_bad_command_are_closed(spools: list[Recorded]) -> None:
    reader = CommandReader(ReaderLimits(spool_threshold=10), authenticated=True)
    events = reader.feed(b"a APPEND INBOX {20+}\r\n" + b"m" * 20 + b" ((\r\n")
    assert kinds(events) == ["ParseError"]
    assert len(spools) == 1 and spools[0].closed


def test_spooled_literal_of_a_refused_command_is_closed(spools: list[Recorded]) -> None:
    limits = ReaderLimits(spool_threshold=10, max_append_command=100)
    reader = CommandReader(limits, authenticated=True)
    events = reader.feed(b"a APPEND INBOX {50+}\r\n" + b"m" * 50 + b" {50+}\r\n" + b"m" * 50
                         + b"\r\nb NOOP\r\n")
    assert kinds(events) == ["LiteralTooBig", "Command"]
    assert len(spools) == 1 and spools[0].closed


def test_closing_the_reader_closes_the_literal_being_spooled(spools: list[Recorded]) -> None:
    reader = CommandReader(ReaderLimits(spool_threshold=10), authenticated=True)
    reader.feed(b"a APPEND INBOX {50+}\r\n" + b"m" * 20)
    reader.close()
    assert len(spools) == 1 and spools[0].closed and reader.held == 0


def test_spool_failure_answers_no_and_skips_the_literal(monkeypatch: pytest.MonkeyPatch) -> None:
    class DiskFull(SpooledLiteral):
        def write(self, data: Any) -> None:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(syntax, "SpooledLiteral", DiskFull)
    reader = CommandReader(ReaderLimits(spool_threshold=10), authenticated=True)
    events = reader.feed(b"a APPEND INBOX {50+}\r\n" + b"m" * 50 + b"\r\nb NOOP\r\n")
    assert kinds(events) == ["LiteralRefused", "Command"]
    assert events[0].status == "NO" and events[0].why == "spool" and events[1].tag == "b"


def test_append_close_is_harmless_for_messages_in_memory() -> None:
    Append("INBOX", ()).close()
    events = CommandReader(authenticated=True).feed(b"a APPEND INBOX {1+}\r\nx\r\n")
    events[0].args.close()
    assert events[0].args.messages[0].data == b"x"
