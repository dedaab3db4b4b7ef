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
