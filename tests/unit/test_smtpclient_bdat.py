"""BDAT chunking of the message: CRLF line ends, no dot-stuffing, the last chunk flagged."""

from __future__ import annotations

from postroom_mta.smtpclient_data import iter_bdat


def test_bdat_chunks_join_to_the_message_and_only_the_last_is_flagged() -> None:
    message = b"a\r\n.b\r\n" * 100
    chunks = list(iter_bdat(message, 64))
    assert b"".join(data for data, _last in chunks) == message
    assert [last for _data, last in chunks] == [False] * (len(chunks) - 1) + [True]


def test_bdat_does_not_stuff_dots() -> None:
    assert list(iter_bdat(b".\r\n..\r\n")) == [(b".\r\n..\r\n", True)]


def test_bdat_adds_a_final_crlf_when_missing() -> None:
    assert list(iter_bdat(b"no end")) == [(b"no end\r\n", True)]


def test_bdat_crlf_split_across_chunks_is_not_doubled() -> None:
    assert b"".join(d for d, _ in iter_bdat(b"ab\r\ncd\r\n", 3)) == b"ab\r\ncd\r\n"


def test_empty_message_is_one_empty_last_chunk() -> None:
    assert list(iter_bdat(b"")) == [(b"", True)]
