"""The mda's faster text and metadata (issue 23) store exactly what they stored before.

The searchable text and its words are compared with the extraction as it was
(tests/support/fulltext_reference.py, kept verbatim) over every message file of
the test suite, the bench's messages and generated hostile MIME, at several text
budgets; the metadata's two changed pieces (one header lookup table per block, one
Date: parse for both date keys) with what they replaced.
"""

from __future__ import annotations

import base64
import email.utils
import quopri
import sys
from datetime import UTC
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.mime import Limits, analyze, metadata_json
from postroom.mime.fulltext import MAX_PARTS, text_or_unreadable, words
from postroom.mime.headers import scan_header
from postroom.store.fts import text_params
from tests.support import fulltext_reference as ref

ROOT = Path(__file__).resolve().parents[2]
for _tree in (ROOT / "bench", ROOT / "scripts"):  # as tests/unit/test_bench_harness.py does
    if str(_tree) not in sys.path:
        sys.path.insert(0, str(_tree))

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BUDGETS = (1, 7, 64, 300, 4096, 1 << 20)


def _files() -> list[bytes]:
    found = sorted(p for p in (ROOT / "tests" / "data").rglob("*")
                   if p.is_file() and p.suffix in (".eml", ".msg"))
    assert len(found) >= 10
    return [p.read_bytes() for p in found]


def _bench() -> list[bytes]:
    from measure_mda_group import message as group_message
    from workloads.mailgen import message as mailgen_message
    return [mailgen_message(n) for n in range(3)] + [group_message(n) for n in range(3)]


def _wrap(ctype: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"Content-Type: " + ctype + b"\r\n" + extra + b"\r\n" + body


def _multipart(*parts: bytes, boundary: bytes = b"X") -> bytes:
    return (b"Subject: =?iso-8859-1?q?Gr=FC=DFe?= =?bogus?q?x?= =?utf-8?b?!!?=\r\n"
            b"From: \xff\xfe odd <a@b>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n"
            + b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
            + b"--" + boundary + b"--\r\n")


def _hostile() -> list[bytes]:
    word = "Wörter wörter WÖRTER ünïcode-straße 42x_y ".encode()
    html = (b"<html><head><title>t</title><style>p{}</style></head><body><p>A&amp;B &#x1F600;"
            b"<script>hidden()</script><img alt='pic'><b>bold</b></p><!-- c --><![CDATA[x]]>"
            b"<p unclosed") * 20
    nested = b"Subject: inner\r\n\r\nleaf"
    for depth in range(30):
        nested = _wrap(b"message/rfc822", nested, b"Subject: level %d\r\n" % depth)
    return [
        _multipart(
            _wrap(b"text/plain; charset=utf-8", base64.encodebytes(word * 50),
                  b"Content-Transfer-Encoding: base64\r\n"),
            _wrap(b"text/plain; charset=iso-8859-1", quopri.encodestring(b"d\xe9j\xe0 vu " * 99),
                  b"Content-Transfer-Encoding: quoted-printable\r\n"),
            _wrap(b"text/html; charset=utf-8", html),
            _wrap(b"text/plain; charset=x-unknown", b"caf\xc3\xa9 \xff\x00 nul"),
            _wrap(b"application/pdf; name=\"=?utf-8?q?r=C3=A9sum=C3=A9?=.pdf\"", b"%PDF",
                  b"Content-Disposition: attachment; filename*=utf-8''na%C3%AFve.pdf\r\n"),
            _wrap(b"message/rfc822", b"Subject: =?utf-8?q?inner_=E2=9C=93?=\r\n\r\ninner body"),
            _wrap(b"text/plain", b"x" * 250 + b" " + b"y" * 101 + b" " + b"z" * 100),
        ),
        _multipart(*[_wrap(b"text/plain", b"part %d words" % i) for i in range(MAX_PARTS + 20)]),
        nested,
        b"Subject: " + b"\xed\xa0\x80 lone surrogate bytes \x80\x81" * 40 + b"\r\n\r\nbody",
        b"X-Long: " + b"a" * 70000 + b"\r\n\r\n" + b"word " * 30000,
        b"no header at all, only \t\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0 odd white space",
        _multipart(_wrap(b"text/html", b"<p>" * 5000 + b"&" * 500 + b"<!DOCTYPE")),
        _multipart(_wrap(b"text/plain; charset=utf-16", "utf16 text".encode("utf-16"))),
        b"",
    ]


CORPUS = _files() + _bench() + _hostile()


def _same_text(data: bytes, budget: int) -> None:
    new, old = text_or_unreadable(data, budget), ref.text_or_unreadable(data, budget)
    assert (new.head, new.body, new.truncated) == (old.head, old.body, old.truncated)
    params = text_params(new)
    assert params["hw"] == " ".join(ref.words(old.head))
    assert params["bw"] == " ".join(ref.words(old.body))


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_the_searchable_text_is_what_it_was(index: int, budget: int) -> None:
    _same_text(CORPUS[index], budget)


PIECES = [b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: message/rfc822\r\n",
          b"Content-Type: text/plain; charset=\"utf-8\"\r\n", b"--b\r\n", b"--b--\r\n", b"\r\n",
          b"\n", b"Subject: =?utf-8?q?x=C3?=\r\n", b"Subject: =?iso-8859-1?b?5fY=?= x\r\n",
          b"Content-Type: text/html; charset=latin1\r\n", b"<p>a&amp;b</p>", b"<script>",
          b"Content-Transfer-Encoding: base64\r\n", b"w6nDqQ==\r\n",
          b"Content-Transfer-Encoding: quoted-printable\r\n", b"=C3=A9=\r\n", b"\x00",
          b"\xff\xfe", b"\xc3\xa9",
          b"Content-Disposition: attachment; filename=\"=?utf-8?q?a?=\"\r\n",
          b"Content-Disposition: attachment; filename*0*=utf-8''%C3; x=\"\r\n", b" folded\r\n",
          b"\t", b"x", b"W\xc3\xb6rd_42 ", b"\xe2\x80\xa8", b"a" * 120]
mimeish = st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=12)), max_size=80).map(
    b"".join)


@FUZZ
@given(data=mimeish, budget=st.sampled_from(BUDGETS))
def test_the_searchable_text_of_generated_mime_is_what_it_was(data: bytes, budget: int) -> None:
    _same_text(data, budget)


@FUZZ
@given(text=st.text(max_size=300))
def test_words_are_what_they_were(text: str) -> None:
    normal = ref.normalise(text)
    assert words(normal) == ref.words(normal)
    assert words(text) == ref.words(text)


def _date_keys_before(date_text: str | None) -> tuple[object, object]:
    """The two date keys as analyze computed them before (two parses)."""
    instant = day = None
    if date_text:
        try:
            when = email.utils.parsedate_to_datetime(date_text)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            instant = when.astimezone(UTC).isoformat()
        except (TypeError, ValueError, IndexError, OverflowError):
            instant = None
        try:
            parts = email.utils.parsedate_tz(date_text)
            if parts is not None:
                day = email.utils.datetime.date(parts[0], parts[1], parts[2]).isoformat()
        except (TypeError, ValueError, IndexError, OverflowError):
            day = None
    return instant, day


DATES = ["Mon, 07 Dec 2026 15:00:00 +0000", "7 Dec 2026 15:00 -1130", "Mon, 07 Dec 2026 15:00:00",
         "Mon, 07 Dec 2026 15:00:00 GMT", "Mon, 07 Dec 2026 15:00:00 EST", "1 Jan 0001 00:00 +0100",
         "31 Dec 9999 23:59:59 -2359", "31 Dec 9999 23:59:59 +9999", "30 Feb 2026 10:00 +0000",
         "1 Jan 99 00:00 +0000", "garbage", "", "Mon, 07 Dec 2026 25:61:61 +0000",
         "7 Dec 2026 15:00:00 +0000 (UTC)", "Tue, 1 Jul 2003 10:52:37 +0200 extra"]


@FUZZ
@given(date_text=st.one_of(st.sampled_from(DATES), st.text(max_size=40),
                           st.sampled_from(DATES).map(lambda d: d.replace("2026", "99999"))))
def test_the_date_keys_are_what_they_were(date_text: str) -> None:
    meta = analyze(b"Date: " + date_text.encode("utf-8", "surrogatepass") + b"\r\n\r\nbody")
    raw = meta.envelope.date
    assert (meta.sort["date"], meta.sort["sent_day"]) == _date_keys_before(raw)


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_a_header_lookup_is_the_first_field_of_that_name(index: int) -> None:
    data = CORPUS[index]
    block = scan_header(data, 0, len(data), Limits())
    names = {name for name, _ in block.fields} | {"content-type", "absent"}
    for name in names:
        assert block.first(name) == next((v for k, v in block.fields if k == name), None)
    block.fields.append(("added-later", b"v"))  # a field added after a lookup is found too
    assert block.first("added-later") == b"v"
    meta = analyze(data)
    assert metadata_json(meta)  # and the stored form is still made


# APPEND's text (issue 23, round 5): a message of one part with a plain header is built
# without the feed parser (fulltext._single_part); it must be the parser's Message exactly
SINGLE = [b"Subject: s\r\n", b"From: a <b@c>\r\n", b"X-Odd-Name!#~: v\r\n", b" folded\r\n",
          b"\tfolded tab\r\n", b"\r\n", b"\n", b"\r", b"From x@y Mon\r\n", b"From: f\n",
          b":novalue\r\n", b"no colon line\r\n", b"Name With Space: v\r\n", b"Subject:\r\n",
          b"Content-Type: text/plain; charset=\"iso-8859-1\"\r\n",
          b"Content-Type: text/html; charset=utf-8; name=\"a.html\"\r\n",
          b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: message/rfc822\r\n",
          b"Content-Type: TEXT/PLAIN\r\n", b"Content-Type: bogus\r\n",
          b"Content-Transfer-Encoding: base64\r\n",
          b"Content-Transfer-Encoding: Quoted-Printable\r\n",
          b"Content-Transfer-Encoding: quoted-printable \r\n",
          b"Content-Transfer-Encoding: x-uue\r\n",
          b"Content-Disposition: attachment; filename=\"r.txt\"\r\n", b"w6nDqQ==\r\n",
          b"=C3=A9=\r\n", b"caf\xc3\xa9", b"\xff", b"\x00", b"\x0b\x0c\x1c\x85", b"x", b" ", b"\t",
          b"Subject: =?utf-8?q?caf=C3=A9?=\r\n", b"--b\r\n"]
single_part = st.lists(st.one_of(st.sampled_from(SINGLE), st.binary(max_size=6)),
                       max_size=40).map(b"".join)


def _same_message(data: bytes) -> None:
    import email
    import email.policy

    from postroom.mime.fulltext import _single_part
    fast = _single_part(data)
    if fast is None:
        return
    slow = email.message_from_bytes(data, policy=email.policy.compat32)
    assert fast._headers == slow._headers
    assert fast.get_payload() == slow.get_payload()
    assert fast.get_unixfrom() == slow.get_unixfrom()
    assert not slow.is_multipart()
    assert fast.get_content_type() == slow.get_content_type()


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_a_single_part_message_built_without_the_parser_is_the_parsers(index: int) -> None:
    _same_message(CORPUS[index])


@FUZZ
@given(data=single_part, budget=st.sampled_from(BUDGETS))
def test_generated_single_part_messages_are_the_parsers_and_give_the_same_text(
        data: bytes, budget: int) -> None:
    _same_message(data)
    _same_text(data, budget)


def test_the_fast_path_takes_the_common_message_and_leaves_the_odd_ones() -> None:
    from postroom.mime.fulltext import _single_part
    plain = (b"From: a@b\r\nSubject: s\r\n folded\r\nContent-Type: text/plain; charset=utf-8\r\n"
             b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 \xff\r\n")
    assert _single_part(plain) is not None
    assert _single_part(b"Subject: s\r\n\r\n") is not None
    for odd in (b"Subject: caf\xc3\xa9\r\n\r\nx", b"From a@b Mon\r\nSubject: s\r\n\r\nx",
                b" lead\r\nSubject: s\r\n\r\nx", b"Subject: s\rX: y\r\n\r\nx",
                b"Subject: s\r\nno colon\r\n\r\nx", b"Content-Type: message/rfc822\r\n\r\nS: x",
                b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--"):
        assert _single_part(odd) is None, odd
