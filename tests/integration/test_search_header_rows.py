"""SEARCH HEADER on uncached fields: the narrow header rows (0019) give the old answers.

Real PostgreSQL: messages stored as the store stores them (the trigger makes
their header rows), searched by ``entries.search`` (header rows first) and by
the statement before 0019 (``messages`` only), with and without header rows.
"""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import text

from postroom.auth.passwords import hash_password
from postroom.mime import analyze
from postroom.store import domains, entries, mailboxes, messages, users
from postroom.store.db import Database
from postroom.store.search import (
    SearchAnd,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchNot,
    SearchOr,
    SearchSize,
    search_plan,
    search_where,
)

BLOBS = [
    # folded field, value across the fold
    b"From: a@example.org\r\nX-Tag: alpha\r\n beta-2026 gamma\r\nSubject: s\r\n\r\nbody 777\r\n",
    # encoded word (raw bytes are what HEADER matches here), case
    b"From: b@example.org\r\nX-Enc: =?utf-8?q?caf=C3=A9?= MiXeD-123\r\n\r\nx\r\n",
    # 8-bit header bytes, then digits right after one (an escape sequence's look-alike)
    b"From: c@example.org\r\nX-Raw: caf\xc3\xa9 \x802001\r\n\r\n2001 in the body\r\n",
    # a backslash in the header
    b"From: d@example.org\r\nX-Path: C:\\dir\\200 beta-2026\r\n\r\nbody\r\n",
    # the value only in the body
    b"From: e@example.org\r\nX-Other: nothing\r\n\r\nX-Tag: alpha beta-2026\r\n",
    # bare LF line ends: no CRLF CRLF, the header row holds the whole blob
    b"From: f@example.org\nX-Tag: beta-2026 LF\n\nbody 2001\n",
    # a NUL in the header
    b"From: g@example.org\r\nX-Nul: a\x00b 12345\r\n\r\nbody\r\n",
    # a long header whose end is beyond 64 kB: no header row
    b"From: h@example.org\r\nX-Long: beta-2026 " + b"y" * 70000 + b"\r\n\r\nbody\r\n",
    b"From: i@example.org\r\nx-tag: ALPHA BETA-2026\r\n\r\nbody\r\n",
    # byte 0x80 then "1": escaped, the header reads "\\2001", which the body holds as bytes
    b"From: j@example.org\r\nX-Art: \x801\r\n\r\n2001 and 001\r\n",
]

KEYS: list[SearchKey] = [
    SearchHeader("x-tag", "beta-2026"),
    SearchHeader("x-tag", "alpha beta-2026"),
    SearchHeader("x-tag", "beta-2026 gamma"),
    SearchHeader("x-tag", ""),
    SearchHeader("X-TAG", "Alpha"),
    SearchHeader("x-enc", "=?utf-8?q?caf=C3=A9?="),
    SearchHeader("x-enc", "mixed-123"),
    SearchHeader("x-enc", "café"),
    SearchHeader("x-raw", "café"),
    SearchHeader("x-raw", "2001"),
    SearchHeader("x-raw", "200"),
    SearchHeader("x-raw", "\\200"),
    SearchHeader("x-path", "\\dir\\200"),
    SearchHeader("x-path", "200"),
    SearchHeader("x-path", "beta-2026"),
    SearchHeader("x-nul", "12345"),
    SearchHeader("x-nul", "\\000"),
    SearchHeader("x-long", "beta-2026"),
    SearchHeader("x-long", "yyyyyy"),
    SearchHeader("x-other", "beta-2026"),
    SearchHeader("x-missing", ""),
    SearchHeader("x-art", "2001"),
    SearchHeader("x-art", "001"),
    SearchHeader("x-art", "\\2001"),
    SearchAnd((SearchHeader("x-tag", "beta-2026"), SearchSize("larger", 60))),
    SearchAnd((SearchHeader("x-tag", "beta"), SearchAnd((SearchHeader("x-tag", "alpha"),)))),
    SearchAnd((SearchHeader("x-tag", "beta"), SearchNot(SearchFlag("\\Seen")))),
    SearchOr(SearchHeader("x-tag", "gamma"), SearchHeader("x-raw", "2001")),
    SearchNot(SearchHeader("x-tag", "beta-2026")),
]


@pytest.fixture
def mailbox_id(database: Database) -> int:
    domain = f"hdr{secrets.token_hex(4)}.example"
    database.run_sync(domains.add_domain, domain)
    user_id = database.run_sync(users.add_user, f"u@{domain}", "pw",
                                hash_fn=lambda p: hash_password(p, ln=4)).id
    tag = secrets.token_hex(6).encode()

    def fill(session: object) -> int:
        for blob in BLOBS:
            data = blob.replace(b"\r\n\r\n", b"\r\nX-Run: " + tag + b"\r\n\r\n", 1)
            if data == blob:  # no CRLF CRLF: keep the blob distinct another way
                data = blob + tag
            message_id = messages.store_message(session, data,  # type: ignore[arg-type]
                                                analyze(data).to_dict())
            mailboxes.deliver_to_mailbox(session, user_id=user_id,  # type: ignore[arg-type]
                                         mailbox_name="INBOX", message_id=message_id,
                                         spool_recipient_id=None)
        return int(mailboxes.get_mailbox(session, user_id, "INBOX").id)  # type: ignore[arg-type]
    return int(database.run_sync(fill))


def _old(session: object, mailbox_id: int, key: SearchKey) -> list[tuple[int, int]]:
    """The statement before 0019: every entry joined to ``messages``."""
    where, params = search_where(key)
    params.update({"mbox": mailbox_id, "maxuid": 10**9})
    rows = session.execute(text(  # type: ignore[attr-defined]
        "SELECT e.uid, e.modseq FROM mailbox_entries e JOIN messages m ON m.id = e.message_id "
        f"WHERE e.mailbox_id = :mbox AND e.uid <= :maxuid AND ({where}) ORDER BY e.uid"),
        params).all()
    return [(int(r[0]), int(r[1])) for r in rows]


def _both(database: Database, mailbox_id: int) -> list[tuple[list[int], list[int]]]:
    def work(session: object) -> list[tuple[list[int], list[int]]]:
        return [([u for u, _ in entries.search(session, mailbox_id, k, 10**9)],  # type: ignore[arg-type]
                 [u for u, _ in _old(session, mailbox_id, k)]) for k in KEYS]
    return database.run_sync(work)


def test_header_rows_give_the_answers_of_the_old_statement(database: Database,
                                                           mailbox_id: int) -> None:
    rows = database.run_sync(lambda s: s.execute(text(
        "SELECT count(h.message_id) FROM mailbox_entries e LEFT JOIN message_headers h "
        "ON h.message_id = e.message_id WHERE e.mailbox_id = :b"), {"b": mailbox_id}).scalar())
    assert rows == len(BLOBS) - 1  # the long header has none
    answers = _both(database, mailbox_id)
    for key, (new, old) in zip(KEYS, answers, strict=True):
        assert new == old, key
    found = dict(zip(KEYS, (new for new, _ in answers), strict=True))
    # the cases themselves, so an equal but wrong pair of answers shows
    assert found[SearchHeader("x-tag", "beta-2026")] == [1, 6, 9]
    assert found[SearchHeader("x-tag", "")] == [1, 6, 9]
    assert found[SearchHeader("X-TAG", "Alpha")] == [1, 9]
    assert found[SearchHeader("x-enc", "mixed-123")] == [2]
    assert found[SearchHeader("x-raw", "café")] == [3]
    assert found[SearchHeader("x-long", "beta-2026")] == [8]
    assert found[SearchHeader("x-other", "beta-2026")] == []
    assert found[SearchHeader("x-path", "\\dir\\200")] == [4]
    # as before 0019: "\\2001" is the escaped header (0x80, "1"), and the body holds 2001
    assert found[SearchHeader("x-art", "2001")] == [10]


def test_messages_without_header_rows_are_still_found(database: Database,
                                                      mailbox_id: int) -> None:
    before = _both(database, mailbox_id)
    database.run_sync(lambda s: s.execute(text(
        "DELETE FROM message_headers WHERE message_id IN (SELECT message_id FROM "
        "mailbox_entries WHERE mailbox_id = :b AND uid % 2 = 1)"), {"b": mailbox_id}))
    after = _both(database, mailbox_id)
    assert after == before
    for new, old in after:
        assert new == old


def test_only_required_uncached_header_keys_use_the_header_rows() -> None:
    assert search_plan(SearchHeader("x-tag", "a"))[1] is not None
    assert search_plan(SearchAnd((SearchSize("larger", 1), SearchHeader("x-tag", "a"))))[1]
    assert search_plan(SearchHeader("subject", "a"))[1] is None  # cached: metadata
    assert search_plan(SearchOr(SearchHeader("x-a", "a"), SearchHeader("x-b", "b")))[1] is None
    assert search_plan(SearchNot(SearchHeader("x-a", "a")))[1] is None
