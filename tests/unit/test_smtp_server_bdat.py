"""CHUNKING/BDAT (RFC 3030) on the server: chunks, LAST, wrong sizes, mixing with DATA."""

from __future__ import annotations

from tests.unit.test_smtp_support import Harness, RecordingPolicy

BODY = b"Subject: chunked\r\n\r\nHello\r\n"


def test_two_chunks_then_last_are_delivered_as_one_message() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"BDAT 10\r\n" + BODY[:10] + b"BDAT %d LAST\r\n" % (len(BODY) - 10) + BODY[10:])
    assert harness.replies() == ["250 2.0.0 10 octets received", "250 2.0.0 Queued as Q0001"]
    assert harness.policy.delivered[0][1] == BODY


def test_chunk_data_split_across_reads() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"BDAT %d LAST\r\n" % len(BODY))
    for byte in BODY:
        harness.send(bytes([byte]))
    assert harness.codes() == [250]
    assert harness.policy.delivered[0][1] == BODY


def test_bdat_zero_last_ends_the_message() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"BDAT %d\r\n" % len(BODY) + BODY + b"BDAT 0 LAST\r\n")
    assert harness.codes() == [250, 250]
    assert harness.policy.delivered[0][1] == BODY


def test_bdat_without_mail_consumes_the_chunk_and_replies_503() -> None:
    harness = Harness()
    harness.greet()
    chunk = b"MAIL FROM:<x@example.org>\r\n"
    harness.send(b"BDAT %d\r\n" % len(chunk) + chunk + b"NOOP\r\n")
    assert harness.codes() == [503, 250]
    assert "mail_from" not in harness.policy.calls


def test_bdat_with_a_bad_size_is_501_and_closes() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"BDAT ten\r\nMAIL FROM:<x@example.org>\r\n")
    assert harness.codes()[0] == 501
    assert harness.closed
    assert harness.policy.calls.count("mail_from") == 1


def test_bdat_size_larger_than_the_data_waits_for_more() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"BDAT 1000 LAST\r\n" + BODY + b"QUIT\r\n")
    assert harness.take() == b"" and not harness.closed


def test_bdat_over_the_size_limit_is_552_and_nothing_delivered() -> None:
    harness = Harness(max_message_size=20)
    harness.start_transaction()
    harness.send(b"BDAT %d LAST\r\n" % len(BODY) + BODY)
    assert harness.codes() == [552]
    assert harness.policy.delivered == []


def test_huge_bdat_size_is_read_and_discarded_not_stored() -> None:
    harness = Harness(max_message_size=1000)
    harness.start_transaction()
    harness.send(b"BDAT 100000\r\n")
    for _ in range(10):
        harness.send((b"x" * 98 + b"\r\n") * 100)
    assert harness.codes() == [552]
    assert harness.protocol._bdat is None


def test_data_after_bdat_is_503() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"BDAT 4\r\nab\r\nDATA\r\n")
    assert harness.codes() == [250, 503]


def test_rcpt_after_bdat_is_503() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"BDAT 4\r\nab\r\nRCPT TO:<c@example.net>\r\n")
    assert harness.codes() == [250, 503]


def test_bdat_chunk_with_bare_lf_is_550() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"BDAT 7 LAST\r\na\nb\r\n\r\n")
    assert harness.codes() == [550]
    assert harness.policy.delivered == []


def test_new_transaction_after_bdat_is_possible() -> None:
    harness = Harness()
    harness.start_transaction()
    harness.send(b"BDAT %d LAST\r\n" % len(BODY) + BODY +
                 b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n" +
                 BODY + b".\r\n")
    assert harness.codes() == [250, 250, 250, 354, 250]
    assert len(harness.policy.delivered) == 2


def test_pipelined_bdat_with_deferred_policy() -> None:
    harness = Harness(RecordingPolicy(delay=1.0))
    harness.clock.advance(1)
    harness.take()
    harness.send(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
                 b"BDAT %d LAST\r\n" % len(BODY) + BODY + b"QUIT\r\n")
    for _ in range(5):
        harness.clock.advance(1)
    assert harness.codes() == [250, 250, 250, 250, 221]
