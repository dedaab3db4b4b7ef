"""The searchable text of a message, and the index query of a needle (pure)."""

from __future__ import annotations

import base64

from postroom.mime.fulltext import MAX_PARTS, extract_text, html_text, normalise, words
from postroom.store.fts import tsquery


def _multipart(*parts: bytes) -> bytes:
    return (b"Subject: =?iso-8859-1?q?Gr=FC=DFe?=\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=X\r\n\r\n"
            + b"".join(b"--X\r\n" + p + b"\r\n" for p in parts) + b"--X--\r\n")


def test_base64_and_quoted_printable_parts_are_decoded_with_their_charset() -> None:
    doc = extract_text(_multipart(
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes("Ünïcode Straße".encode()),
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nd=E9j=E0 v=\r\nu"))
    assert doc.body == "ünïcode straße déjà vu"
    assert "subject: grüße" in doc.head
    assert not doc.truncated


def test_html_is_text_without_tags_script_or_style() -> None:
    assert normalise(html_text("<style>p{}</style><script>x()</script><p>A&amp;B "
                               "<b>bold</b><img alt='pic'></p>")) == "a&b bold pic"


def test_attachments_give_their_file_name_not_their_bytes() -> None:
    doc = extract_text(_multipart(
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''R%C3%A9sum%C3%A9.pdf\r\n\r\nAAAA"))
    assert doc.body == "résumé.pdf"


def test_an_attached_message_contributes_its_header_and_text() -> None:
    inner = b"Subject: inner topic\r\n\r\ninner words\r\n"
    doc = extract_text(_multipart(b"Content-Type: message/rfc822\r\n\r\n" + inner))
    assert "subject: inner topic" in doc.body and "inner words" in doc.body


def test_text_is_bounded_and_truncation_is_said() -> None:
    doc = extract_text(b"Subject: s\r\n\r\n" + b"word " * 1000, max_bytes=100)
    assert len(doc.body.encode()) <= 100 and doc.truncated
    big_html = b"Content-Type: text/html\r\n\r\n" + b"<p>x</p>" * 200_000
    assert extract_text(big_html, max_bytes=1000).truncated
    many = _multipart(*[b"Content-Type: text/plain\r\n\r\np"] * (MAX_PARTS + 5))
    assert extract_text(many).truncated


def test_hostile_bytes_never_reach_sql_as_nul_or_surrogates() -> None:
    doc = extract_text(b"Subject: \xff\xfe bad\r\nContent-Type: text/plain; charset=x-nope\r\n"
                       b"\r\nnul\x00here \xc3")
    assert "\x00" not in doc.body and "nul here" in doc.body
    (doc.head + doc.body).encode("utf-8")  # no lone surrogate left


def test_words_are_runs_of_letters_and_digits() -> None:
    assert words("user@example.org re: re: top-10 café_bar") == [
        "user", "example", "org", "re", "top", "10", "café", "bar"]


def test_needle_query_prefixes_only_a_cut_last_word() -> None:
    assert tsquery("hel", body_only=False) == "'hel':*"
    assert tsquery("hello wor", body_only=True) == "'hello':D & 'wor':*D"
    assert tsquery("hello world.", body_only=False) == "'hello' & 'world'"
    assert tsquery("@@ --", body_only=True) is None
    assert tsquery("", body_only=True) is None
