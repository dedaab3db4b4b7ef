"""Author domains from the From field, and the malformed cases (RFC 7489 6.6.1)."""

from __future__ import annotations

from postroom_dmarc.fromheader import author_domains


def test_single_address():
    assert author_domains(b"From: Alice <alice@Example.COM>\r\n\r\nx").domains == ("example.com",)


def test_folded_from_field():
    msg = b"From: \"Alice Long Name\"\r\n <alice@example.com>\r\n\r\n"
    assert author_domains(msg).domains == ("example.com",)


def test_encoded_display_name():
    msg = b"From: =?utf-8?q?Ren=C3=A9?= <rene@example.com>\r\n\r\n"
    assert author_domains(msg).domains == ("example.com",)


def test_several_addresses_give_each_distinct_domain():
    msg = b"From: a@one.example, b@two.example, c@one.example\r\n\r\n"
    assert author_domains(msg).domains == ("one.example", "two.example")


def test_no_from_field():
    assert author_domains(b"To: b@example.com\r\n\r\n").problem == "no From field"


def test_two_from_fields():
    msg = b"From: a@example.com\r\nFrom: b@example.com\r\n\r\n"
    assert author_domains(msg).problem == "several From fields"


def test_from_without_address():
    assert author_domains(b"From: undisclosed-recipients:;\r\n\r\n").problem == "no address in From"


def test_from_in_body_is_ignored():
    assert author_domains(b"Subject: x\r\n\r\nFrom: a@example.com\r\n").problem == "no From field"


# --- the From fields read alone, and the common shapes read without the email package

import time  # noqa: E402

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from postroom_dmarc.fromheader import (  # noqa: E402
    _COMMON_FROM,
    addresses,
    from_values,
    header_fields,
)


def _full(value: str) -> list[str]:
    from email.utils import getaddresses
    return [address for _display, address in getaddresses([value])]


COMMON = ["a@b.example", "<a@b.example>", "Sender <s@src.test>", "A B C <a.b@c.example>",
          '"Q, N" <a@b.c>', '"Q. N" <a@b.c>', '"" <a@b.c>', '"x"<a@b.c>', "x<a@b.c>",
          "a+tag@b-c.example", "<loadgen@src.test>", "A_B-C+D <a@b.c>"]
ODD = ["", " ", "a@b.c.", "A  B <a@b.c>", "A.B <a@b.c>", "<a@b.c> x", "a@b.c, d@e.f",
       "<a..b@c.d>", "<.a@c.d>", "a@b", "(comment) a@b.c", "<@c.d>", '"a\\"b" <a@b.c>',
       "=?utf-8?q?x?= <a@b.c>", "Ren\u00e9 <r@b.c>", "<a@b.c", "a@b.c>", '"a <x@y.z>" <b@c.d>',
       "undisclosed-recipients:;", "group: a@b.c;", "<a@[127.0.0.1]>", "a@b.c (x)"]


@pytest.mark.parametrize("value", COMMON + ODD)
def test_addresses_are_getaddresses_own(value: str) -> None:
    assert addresses(value) == _full(value)


@pytest.mark.parametrize("value", COMMON)
def test_the_common_shapes_take_the_fast_path(value: str) -> None:
    assert _COMMON_FROM.fullmatch(value) is not None


PIECES = ["a", "B", "0", "_", "+", "-", ".", "@", "<", ">", " ", "  ", '"', ",", ";", ":",
          "(", ")", "\\", "[", "]", "'", "\t", "\u00e9", "b.example", "x@y.z"]


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14))
def test_any_value_of_address_pieces_reads_as_getaddresses(pieces: list[str]) -> None:
    value = "".join(pieces)
    assert addresses(value) == _full(value)


def _oracle(message: bytes) -> list[str]:
    return [value for name, value in header_fields(message) if name == "from"]


FIELD_PIECES = [b"From:", b"from :", b"FROM:", b" From: x", b"From", b"Fromage: y", b"To: z",
                b" a@b.c", b"\t<d@e.f>", b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"x",
                b"\xff", b"\r\n\r\n", b"\n\n", b"a@b.c", b"From x"]


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(FIELD_PIECES), max_size=24))
def test_from_values_are_header_fields_from_values(pieces: list[bytes]) -> None:
    message = b"".join(pieces)
    assert from_values(message) == _oracle(message)


@pytest.mark.parametrize("message", [
    b"From: a@b.c\r\n folded\r\n\tmore\r\nTo: x\r\n folded to\r\n\r\nFrom: body@x.y\r\n",
    b" From: leading@fold.example\r\n\r\n", b"junk line\r\n continued\r\nFrom: a@b.c\r\n\r\n",
    b"From: a@b.c\r\nbad line\r\n continues from\r\n\r\n", b"From: a@b.c", b""])
def test_from_values_of_awkward_headers(message: bytes) -> None:
    assert from_values(message) == _oracle(message)


def _quick(value: str) -> float:
    started = time.perf_counter()
    addresses(value)
    return time.perf_counter() - started


def test_hostile_values_are_read_in_bounded_time() -> None:
    # near-misses of the common shapes, which a backtracking pattern would explore
    # exponentially or quadratically; over _FAST_MAX they go to the full parser at once
    for value in ["a " * 490 + "<", "a" * 990 + "@", "a." * 495 + "@b", '"' + "a" * 990,
                  "a " * 5000 + "<a@b.c", "<" + "a." * 5000 + "@", "a@" + "b." * 490 + "-"]:
        assert _quick(value) < 0.5, value[:20]


def test_a_huge_from_field_is_bounded() -> None:
    message = b"From: " + b"a" * (1024 * 1024) + b"@b.example\r\n\r\n"
    started = time.perf_counter()
    result = author_domains(message)
    assert time.perf_counter() - started < 2.0
    assert result.problem is not None  # cut at 256 KiB: the field has no usable address
