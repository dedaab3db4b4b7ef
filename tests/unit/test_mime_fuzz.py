"""Fuzz tests: analyze never raises, and its offsets and wire output are always well formed."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.mime import (
    Limits,
    MessageMeta,
    Part,
    analyze,
    analyze_structure,
    render_bodystructure,
    render_envelope,
    section_range,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PIECES = [b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: message/rfc822\r\n",
          b"Content-Type: text/plain; charset=\"utf-8\"\r\n", b"--b\r\n", b"--b--\r\n", b"\r\n",
          b"\n", b"Subject: =?utf-8?q?x=C3?=\r\n", b"From: a <b@c>, (x) \"q\\\"\" <@r:d@e>;\r\n",
          b"To: g: a@b;\r\n", b" folded\r\n", b"\x00", b"\xff\xfe", b"Content-Type: multipart/",
          b"Content-Disposition: attachment; filename*0*=utf-8''%C3; x=\"\r\n", b"Date: 99\r\n",
          b"Content-Type: multipart/digest; boundary=\"b\"\r\n", b"boundary=", b"\t", b"x"]
mimeish = st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=12)), max_size=60).map(
    b"".join)


def walk(part: Part, size: int):
    assert 0 <= part.header_start <= part.body_start <= part.end <= size
    assert part.lines >= 0
    for child in part.children:
        assert part.body_start <= child.header_start and child.end <= part.end
        yield from walk(child, size)
    yield part


def check(raw: bytes, meta: MessageMeta) -> None:
    assert meta.size == len(raw)
    list(walk(meta.body, len(raw)))
    assert isinstance(render_envelope(meta), bytes)
    for extended in (True, False):
        wire = render_bodystructure(meta, extended)
        assert wire.startswith(b"(") and wire.endswith(b")")
    for path in ((), (1,), (1, 1), (2,), (1, 2, 1)):
        for text in ("", "HEADER", "TEXT", "MIME"):
            span = section_range(meta, path, text)
            assert span is None or 0 <= span[0] <= span[1] <= len(raw)
    assert MessageMeta.from_dict(meta.to_dict()) == meta


@FUZZ
@given(raw=st.binary(max_size=2000))
def test_analyze_never_raises_on_arbitrary_bytes(raw):
    check(raw, analyze(raw))


@FUZZ
@given(raw=mimeish)
def test_analyze_never_raises_on_mime_like_bytes(raw):
    check(raw, analyze(raw, Limits(max_depth=4, max_parts=20)))


@FUZZ
@given(raw=mimeish)
def test_analyze_structure_is_analyze_without_the_imap_extras(raw):
    # the attachment policy judges these parts: they must be exactly what analyze finds
    limits = Limits(max_depth=4, max_parts=20)
    meta, structure = analyze(raw, limits), analyze_structure(raw, limits)
    assert (structure.body, structure.degraded, structure.defects) == \
        (meta.body, meta.degraded, meta.defects)
