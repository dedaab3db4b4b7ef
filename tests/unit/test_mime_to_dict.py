"""MessageMeta.to_dict (hand-written for speed at delivery) equals dataclasses.asdict."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from postroom.mime import analyze

MAIL = Path(__file__).resolve().parent.parent / "data" / "mail"

HOSTILE = [
    b"",
    b"Subject: a\x00b\r\n\r\nbody\x00\r\n",
    b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: message/rfc822\r\n"
    b"\r\nFrom: x@y\r\nSubject: inner\r\n\r\nhi\r\n--a--\r\n",
    b"Content-Type: multipart/mixed; boundary=\"a\"\r\n\r\n"
    + b"--a\r\nContent-Type: multipart/mixed; boundary=\"a\"\r\n\r\n" * 50,
]


def test_to_dict_is_asdict_for_every_sample():
    samples = [p.read_bytes() for p in sorted(MAIL.glob("*.eml"))] + HOSTILE
    assert len(samples) > len(HOSTILE)
    for raw in samples:
        meta = analyze(raw)
        plain, reference = meta.to_dict(), asdict(meta)
        assert plain == reference
        # the same container types too (tuples stay tuples, as asdict keeps them)
        assert repr(plain) == repr(reference)
