"""FetchPlan: a FETCH's items classified once, rendered for each message as they were one by one."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from postroom.mime import analyze, metadata_dict
from postroom_imap.policy import FetchRow
from postroom_imap.render import FetchPlan
from postroom_imap.syntax import Command, parse_command
from postroom_imap.syntax_types import Fetch

BLOB = (b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n"
        b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n")


def _items(line: bytes) -> Fetch:
    command = parse_command([b"a FETCH 1:* " + line], [])
    assert isinstance(command, Command) and isinstance(command.args, Fetch)
    return command.args


def _row(uid: int, *, seen_set: bool = False) -> FetchRow:
    return FetchRow(uid=uid, flags=("\\Seen",), modseq=10 + uid,
                    internaldate=datetime(2024, 1, 1, tzinfo=UTC), size=len(BLOB),
                    meta=metadata_dict(analyze(BLOB)), blob=BLOB, seen_set=seen_set)


def test_one_plan_renders_each_row_with_its_own_values_and_implicit_flags() -> None:
    plan = FetchPlan(_items(b"(UID RFC822.SIZE BODY[HEADER.FIELDS (Subject)])").items,
                     with_uid=False, with_modseq=True)
    hdr = b"BODY[HEADER.FIELDS (SUBJECT)] {15}\r\nSubject: hi\r\n\r\n"
    assert plan.render(_row(1)) == b"(UID 1 RFC822.SIZE %d %s MODSEQ (11))" % (len(BLOB), hdr)
    # \\Seen set by this FETCH: FLAGS comes along for that row only (RFC 3501 6.4.5)
    assert plan.render(_row(2, seen_set=True)) == (
        b"(UID 2 RFC822.SIZE %d %s FLAGS (\\Seen) MODSEQ (12))" % (len(BLOB), hdr))
    assert plan.render(_row(3)) == b"(UID 3 RFC822.SIZE %d %s MODSEQ (13))" % (len(BLOB), hdr)


def test_repeated_items_are_rendered_once_in_their_first_place() -> None:
    plan = FetchPlan(_items(b"(FLAGS UID MODSEQ FLAGS BODY.PEEK[TEXT] BODY[TEXT])").items,
                     with_uid=True, with_modseq=True)
    row = replace(_row(4), seen_set=True)
    assert plan.render(row) == b"(UID 4 FLAGS (\\Seen) MODSEQ (14) BODY[TEXT] {6}\r\nbody\r\n)"
