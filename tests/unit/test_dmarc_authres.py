"""Authentication-Results building and the removal of forged ones (RFC 8601)."""

from __future__ import annotations

from postroom.mailauth import authres


def test_address_values_stay_unquoted():
    assert authres.pvalue("user@example.com") == "user@example.com"


def test_values_with_specials_are_quoted():
    assert authres.pvalue('a b"c') == '"a b\\"c"'


def test_line_breaks_cannot_inject_fields():
    clause = authres.resinfo("spf", "pass", [("smtp.mailfrom", "x@y.z\r\nX-Evil: 1")])
    assert "\r" not in clause and "\n" not in clause


def test_header_field_is_folded_per_method():
    field = authres.header_field("mx.example.net", ["spf=pass", "dkim=none"])
    assert field == b"Authentication-Results: mx.example.net;\r\n\tspf=pass;\r\n\tdkim=none\r\n"


def test_no_results_is_none():
    assert authres.header_value("mx.example.net", []) == "mx.example.net; none"


def test_authserv_id_is_read_past_comments_and_version():
    assert authres.authserv_id_of(b" (hi) MX.Example.NET 1; spf=pass") == "mx.example.net"


def test_strip_forged_removes_only_our_authserv_id():
    message = (b"Received: from x\r\n"
               b"Authentication-Results: mx.example.net; dkim=pass\r\n"
               b"\theader.d=bank.example\r\n"
               b"Authentication-Results: other.example; spf=fail\r\n"
               b"Subject: hi\r\n\r\n"
               b"Authentication-Results: mx.example.net; body is untouched\r\n")
    assert authres.strip_forged(message, "MX.example.net") == (
        b"Received: from x\r\n"
        b"Authentication-Results: other.example; spf=fail\r\n"
        b"Subject: hi\r\n\r\n"
        b"Authentication-Results: mx.example.net; body is untouched\r\n")


def test_strip_forged_handles_bare_lf_messages():
    message = b"authentication-results: mx.example.net; spf=pass\nFrom: a@b.c\n\nbody\n"
    assert authres.strip_forged(message, "mx.example.net") == b"From: a@b.c\n\nbody\n"


def test_strip_forged_keeps_a_lookalike_id():
    message = b"Authentication-Results: mx.example.net.evil; spf=pass\r\n\r\n"
    assert authres.strip_forged(message, "mx.example.net") == message
