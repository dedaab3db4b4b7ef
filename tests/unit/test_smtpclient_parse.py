"""The outbound client's pure parsers: replies, EHLO keywords, message traits, xtext."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom_mta.smtpclient_parse import (
    MalformedReply,
    ReplyParser,
    describe,
    encode_utf8_addr_xtext,
    encode_xtext,
    parse_ehlo,
    scan_message,
    valid_path_address,
)


def feed_all(*lines: bytes):
    parser = ReplyParser()
    replies = [parser.feed(line) for line in lines]
    return replies


def test_single_line_reply_has_code_and_text():
    (reply,) = feed_all(b"220 mx.example.org ESMTP ready")
    assert reply.code == 220
    assert reply.lines == ("mx.example.org ESMTP ready",)
    assert reply.enhanced is None


def test_multi_line_reply_completes_on_the_space_line():
    first, second, last = feed_all(b"250-mx.example.org", b"250-PIPELINING", b"250 SIZE 1000")
    assert first is None and second is None
    assert last.code == 250
    assert last.lines == ("mx.example.org", "PIPELINING", "SIZE 1000")


def test_enhanced_code_is_taken_off_every_line():
    _, reply = feed_all(b"550-5.1.1 No such user", b"550 5.1.1 here")
    assert reply.enhanced == "5.1.1"
    assert reply.lines == ("No such user", "here")
    assert describe(reply) == "550 5.1.1 No such user here"


def test_enhanced_code_of_another_class_is_left_as_text():
    (reply,) = feed_all(b"250 5.1.1 odd")
    assert reply.enhanced is None
    assert reply.lines == ("5.1.1 odd",)


def test_code_only_reply_is_accepted():
    (reply,) = feed_all(b"354")
    assert reply.code == 354
    assert describe(reply) == "354"


@pytest.mark.parametrize("line", [b"", b"hello", b"2500 x", b"25", b"abc def", b"650 nope",
                                  b"250_x", b"\x00\x01\x02"])
def test_garbage_line_is_malformed(line):
    with pytest.raises(MalformedReply):
        ReplyParser().feed(line)


def test_code_change_inside_multi_line_reply_is_malformed():
    parser = ReplyParser()
    parser.feed(b"250-first")
    with pytest.raises(MalformedReply):
        parser.feed(b"251 second")


def test_endless_multi_line_reply_is_malformed():
    parser = ReplyParser(max_lines=5)
    for _ in range(5):
        parser.feed(b"250-x")
    with pytest.raises(MalformedReply):
        parser.feed(b"250-x")


def test_control_characters_and_bad_utf8_are_cleaned_from_text():
    (reply,) = feed_all(b"550 bad\x1b[31m \xff text")
    assert reply.lines == ("bad[31m \ufffd text",)


@given(st.binary(max_size=80))
def test_parser_never_raises_anything_but_malformed_reply(line):
    parser = ReplyParser()
    try:
        parser.feed(line)
    except MalformedReply:
        pass


def test_ehlo_keywords_are_upper_cased_with_parameters():
    _, _, _, reply = feed_all(b"250-mx.example.org hi", b"250-pipelining",
                              b"250-SIZE 10240000", b"250 AUTH PLAIN LOGIN")
    ext = parse_ehlo(reply)
    assert ext.greeting == "mx.example.org hi"
    assert ext.has("PIPELINING") and ext.has("size")
    assert ext.keywords["AUTH"] == ("PLAIN", "LOGIN")
    assert ext.size_limit == 10240000


def test_ehlo_skips_invalid_keyword_lines():
    _, _, reply = feed_all(b"250-mx", b"250-AUTH=LOGIN", b"250 -BAD")
    assert dict(parse_ehlo(reply).keywords) == {}


@pytest.mark.parametrize("params,limit", [((), None), (("0",), None), (("x",), None),
                                          (("52428800",), 52428800)])
def test_size_limit_is_none_when_unbounded_or_garbage(params, limit):
    line = " ".join(("SIZE", *params)).encode()
    _, reply = feed_all(b"250-mx", b"250 " + line)
    assert parse_ehlo(reply).size_limit == limit


def test_ascii_message_traits():
    traits = scan_message([b"Subject: hi\r\n\r\nbody\r\n"])
    assert (traits.size, traits.eight_bit, traits.utf8_headers) == (21, False, False)


def test_eight_bit_body_is_not_utf8_headers():
    traits = scan_message([b"Subject: hi\r\n\r\nb\xc3\xa9b\xc3\xa9\r\n"])
    assert traits.eight_bit and not traits.utf8_headers


def test_utf8_header_is_found_across_chunks():
    message = b"Subject: " + b"a" * 100 + "é".encode() + b"\r\n\r\nbody\r\n"
    chunks = [message[i:i + 7] for i in range(0, len(message), 7)]
    traits = scan_message(chunks)
    assert traits.utf8_headers and traits.eight_bit and traits.size == len(message)


def test_header_end_split_over_chunks_is_found():
    traits = scan_message([b"Subject: a\r\n\r", b"\nb\xc3\xa9\r\n"])
    assert traits.eight_bit and not traits.utf8_headers


def test_message_without_headers_has_no_utf8_headers():
    assert not scan_message([b"\r\nb\xc3\xa9\r\n"]).utf8_headers


@pytest.mark.parametrize("address", ["bob@example.org", "", "postmaster", '"a b"@example.org',
                                     "jöran@exämple.org"])
def test_sendable_addresses(address):
    assert valid_path_address(address)


@pytest.mark.parametrize("address", ["bob@example.org>\r\nRSET", "a\nb@x", "<a@b>", "a b@c",
                                     "nobody", "a\x00@b", "a\t@b"])
def test_unsendable_addresses(address):
    assert not valid_path_address(address)


def test_xtext_escapes_plus_equals_and_controls():
    assert encode_xtext("a+b=c d") == "a+2Bb+3Dc+20d"


def test_utf8_addr_xtext_escapes_non_ascii():
    assert encode_utf8_addr_xtext("jö@x") == "j\\x{F6}@x"
