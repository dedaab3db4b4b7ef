"""The IMAP server and literals: refusals before login, reading paused on held bytes, spooling."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from postroom_imap.syntax import Limits
from tests.unit.test_imap_protocol import MESSAGE, Harness


def test_preauth_append_gets_bad_and_no_continuation() -> None:
    h = Harness(tls=True)
    assert h.send(b"a APPEND INBOX {5000}\r\n") == b"a BAD APPEND not allowed now\r\n"
    assert h.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"


def test_preauth_append_literal_plus_stream_is_discarded() -> None:
    h = Harness(tls=True)
    replies = h.send(b"a APPEND INBOX {1000000+}\r\n")
    chunk = b"x" * 100_000
    for _ in range(5):  # 5 MB: literal after literal of one command that never ends
        for _ in range(10):
            replies += h.send(chunk)
            assert h.server.held < 100
        replies += h.send(b" {1000000+}\r\n")
    replies += h.send(b"y" * 1_000_000 + b"\r\nn NOOP\r\n")
    assert replies == b"a BAD APPEND not allowed now\r\nn OK NOOP completed\r\n"
    assert h.store.appended == [] and not h.transport.disconnecting
    assert h.transport.producerState == "producing"


def test_preauth_refusals_count_as_protocol_errors() -> None:
    h = Harness(tls=True)
    h.send(b"a APPEND INBOX {100}\r\n" * 25)
    assert h.transport.disconnecting
    assert b"* BYE too many protocol errors" in h.transport.value()


def test_pipelined_login_then_append_with_literal_plus_works() -> None:
    h = Harness(tls=True)
    reply = h.send(b"a LOGIN u@example.org secret\r\nb APPEND INBOX {%d+}\r\n%s\r\n"
                   % (len(MESSAGE), MESSAGE))
    assert b"a OK" in reply and b"b OK [APPENDUID 7 101]" in reply
    assert h.store.appended[0][1] == MESSAGE


def test_login_with_literals_still_works() -> None:
    h = Harness(tls=True)
    assert h.send(b"a LOGIN {13}\r\n") == b"+ Ready for literal data\r\n"
    assert h.send(b"u@example.org {6}\r\n") == b"+ Ready for literal data\r\n"
    assert h.send(b"secret\r\n").startswith(b"a OK")


def test_large_append_is_stored_from_a_temporary_file_which_is_then_closed() -> None:
    h = Harness(tls=True, limits=Limits(spool_threshold=1024))
    h.login()
    message = b"Subject: big\r\n\r\n" + b"line of a big message\r\n" * 2000
    assert h.send(b"a APPEND INBOX {%d}\r\n" % len(message)) == b"+ Ready for literal data\r\n"
    reply = b"".join(h.send(message[i:i + 4096]) for i in range(0, len(message), 4096))
    reply += h.send(b"\r\n")
    assert reply.startswith(b"a OK [APPENDUID")
    assert h.store.appended[0][1] == message
    assert len(h.store.spooled) == 1 and h.store.spooled[0].closed


def test_reading_pauses_while_held_bytes_pass_the_budget_and_resumes_after() -> None:
    h = Harness(tls=True, limits=Limits(max_held=10_000))
    h.login()
    h.store.hold_append = Deferred()
    # the first APPEND runs and waits for the store; the next ones are read and queued
    h.send(b"a APPEND INBOX {6000+}\r\n" + b"m" * 6000 + b"\r\n")
    assert h.transport.producerState == "producing"  # 6 KB held: under the budget
    h.send(b"b APPEND INBOX {6000+}\r\n" + b"m" * 6000 + b"\r\n")
    assert h.server.held > 10_000
    assert h.transport.producerState == "paused"
    hold, h.store.hold_append = h.store.hold_append, None
    hold.callback(None)  # the store answers: a and b complete, the held bytes are freed
    assert h.server.held == 0
    assert h.transport.producerState == "producing"
    assert len(h.store.appended) == 2
    assert b"a OK" in h.transport.value() and b"b OK" in h.transport.value()


def test_reading_is_not_paused_by_the_command_being_read_alone() -> None:
    h = Harness(tls=True, limits=Limits(max_held=10_000, spool_threshold=1_000_000))
    h.login()
    h.send(b"a APPEND INBOX {50000+}\r\n" + b"m" * 40_000)
    assert h.server.held > 10_000
    assert h.transport.producerState == "producing"  # only more input can finish it
    assert h.send(b"m" * 10_000 + b"\r\n").startswith(b"a OK")


def test_before_login_reading_pauses_at_the_small_budget_while_login_runs() -> None:
    h = Harness(tls=True, limits=Limits(max_preauth_held=4096))
    pending: Deferred[Any] = Deferred()
    h.accounts.login = lambda user, password, peer: pending  # type: ignore[method-assign]
    h.send(b"a LOGIN u@example.org secret\r\n")
    h.send(b"n NOOP\r\n" * 1000)  # 8 KB pipelined behind a LOGIN that has not finished
    assert h.server.reader.paused and h.transport.producerState == "paused"
    pending.callback(h.store)
    assert h.transport.producerState == "producing"
    assert h.transport.value().count(b"n OK NOOP completed") == 1000


def test_queued_append_files_are_closed_when_the_connection_is_lost() -> None:
    h = Harness(tls=True, limits=Limits(spool_threshold=100))
    h.login()
    h.store.hold_append = Deferred()
    h.send(b"a APPEND INBOX {10+}\r\n0123456789\r\n")  # runs, waits for the store
    h.send(b"b APPEND INBOX {500+}\r\n" + b"m" * 500 + b"\r\n")  # spooled, queued
    h.send(b"c APPEND INBOX {500+}\r\n" + b"m" * 200)  # spooled, being read
    queued = h.server._queue[0].args.messages[0].data
    reading = h.server.reader._spool
    h.server.connectionLost(None)
    assert queued.closed and reading.closed


def test_idle_waiting_for_done_is_never_paused_by_held_bytes() -> None:
    h = Harness(tls=True, limits=Limits(max_held=1000))
    h.select()
    assert h.send(b"i IDLE\r\n") == b"+ idling\r\n"
    h.send(b"x" * 5000)  # a long partial line while IDLE waits for DONE
    assert h.transport.producerState == "producing"
    assert h.send(b"\r\n").startswith(b"i BAD")
