"""FETCH of top-level header and text sections from the cached analysis's offsets alone.

Rendering with the cached analysis (as the store returns it: without its
decoded header list) must give exactly what rendering from a fresh analysis
of the blob gives, and BODY[] must not ask the store for the analysis at all.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from postroom.mime import analyze, metadata_dict
from postroom_imap.policy import FetchRow
from postroom_imap.render import fetch_items, needs_meta, needs_tree
from postroom_imap.syntax import Command, parse_command
from postroom_imap.syntax_types import Fetch

MESSAGES = [
    b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n",
    b"From: a@example.test\nSubject: bare LF\n folded\n\nline one\nline two\n",
    b"Subject: no body, no blank line\r\n",
    b"no header at all\r\n",
    b"From: a@example.test\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=xx\r\n\r\npreamble\r\n--xx\r\n"
    b"Content-Type: text/plain\r\n\r\npart one\r\n--xx\r\n"
    b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\nTo: c@example.test\r\n\r\n"
    b"inner body\r\n--xx--\r\n",
]
ITEMS = [
    b"(UID BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])",
    b"(BODY.PEEK[HEADER.FIELDS.NOT (subject)] BODY.PEEK[TEXT])",
    b"(BODY[HEADER] RFC822.HEADER RFC822.TEXT)",
    b"(BODY.PEEK[1.MIME] BODY.PEEK[]<0.10> BODY.PEEK[HEADER]<2.5>)",
    b"(ENVELOPE BODY.PEEK[HEADER.FIELDS (To)] BODY.PEEK[2.HEADER])",
    b"(BODY.PEEK[1] BODY.PEEK[2.TEXT] BODY.PEEK[HEADER] BODYSTRUCTURE)",
]


def _args(line: bytes) -> Fetch:
    command = parse_command([b"a FETCH 1 " + line], [])
    assert isinstance(command, Command) and isinstance(command.args, Fetch)
    return command.args


def _row(blob: bytes, meta: dict | None) -> FetchRow:
    return FetchRow(uid=3, flags=("\\Seen",), modseq=4,
                    internaldate=datetime(2024, 1, 1, tzinfo=UTC), size=len(blob), meta=meta,
                    blob=blob)


@pytest.mark.parametrize("blob", MESSAGES)
@pytest.mark.parametrize("items", ITEMS)
def test_sections_from_the_cached_offsets_match_a_fresh_analysis(blob: bytes,
                                                                 items: bytes) -> None:
    cached = metadata_dict(analyze(blob))
    cached.pop("headers", None)  # the store reads ``metadata - 'headers'``
    args = _args(items)
    fresh = fetch_items(_row(blob, None), args.items, with_uid=True, with_modseq=False)
    assert fetch_items(_row(blob, cached), args.items, with_uid=True,
                       with_modseq=False) == fresh
    if not any(needs_tree(i) for i in args.items):
        # what the store returns when asked for no tree: the size and the top part's offsets
        body = cached["body"]
        top = {"size": cached["size"], "body": {k: body[k] for k in ("header_start",
                                                                     "body_start", "end")}}
        assert fetch_items(_row(blob, top), args.items, with_uid=True,
                           with_modseq=False) == fresh


def test_whole_body_needs_no_analysis_but_parts_and_headers_do() -> None:
    assert not any(needs_meta(i) for i in _args(b"(UID BODY.PEEK[] BODY[]<0.5>)").items)
    for line in (b"BODY.PEEK[HEADER]", b"BODY[1]", b"BODY", b"BODYSTRUCTURE", b"ENVELOPE",
                 b"BODY.PEEK[TEXT]"):
        assert all(needs_meta(i) for i in _args(line).items), line


def test_only_parts_and_structures_need_the_whole_analysis() -> None:
    for line in (b"BODY.PEEK[HEADER]", b"BODY.PEEK[HEADER.FIELDS (TO)]", b"BODY.PEEK[TEXT]",
                 b"BODY[]", b"RFC822.HEADER", b"RFC822.TEXT"):
        assert not any(needs_tree(i) for i in _args(line).items), line
    for line in (b"BODY[1]", b"BODY[2.HEADER]", b"BODY", b"BODYSTRUCTURE", b"ENVELOPE"):
        assert all(needs_tree(i) for i in _args(line).items), line
