"""A group commit's spool rows in one statement (spool.create_spool_many, docs/decisions/0018):
the same rows as one create_spool_ids per member, the blobs stored once, and a bad member
still refused alone by the group commit's retry."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from twisted.internet.defer import DeferredList

from postroom.metrics import Metrics
from postroom.store import spool
from postroom.store.db import Database, StoreSession
from postroom.store.groupcommit import GroupCommit
from postroom.store.prepared import Prepared
from tests.support.redisdb import in_reactor

SHARED = b"From: a@example.com\r\nSubject: the same bytes\r\n\r\nbody\r\n"
STORED = b"From: b@example.com\r\nSubject: stored before\r\n\r\nbody\r\n"
AT = datetime(2026, 12, 7, 12, 30, 15, 123456, tzinfo=UTC)


def members(tag: str) -> list[dict[str, Any]]:
    """Six messages covering every column: shared and already stored bytes, duplicate
    recipients, NULLs and values, both streams, every kind of the front doors."""
    return [
        {"kind": "inbound", "mail_from": "a@example.com", "message": SHARED,
         "recipients": [("x@example.org", "deliver", None, None),
                        ("y@example.org", "deliver", "rfc822;y@example.org", "SUCCESS,DELAY"),
                        ("x@example.org", "deliver", None, None),
                        ("back@example.net", "outbound", None, "NEVER")],
         "size": 2048, "body": "8BITMIME", "smtputf8": True, "ret": "HDRS", "envid": "env-1",
         "peer_ip": "192.0.2.7", "helo": "mx.example.com", "disposition": "junk",
         "queue_id": f"{tag}1", "enqueued_at": AT},
        {"kind": "inbound", "mail_from": "", "message": SHARED,
         "recipients": [("z@example.org", "deliver", None, None)],
         "peer_ip": "2001:db8::1", "queue_id": f"{tag}2"},
        {"kind": "submission", "mail_from": "u@example.org",
         "message": b"own <" + tag.encode() + b">",
         "recipients": [("far@example.net", "outbound", None, None),
                        ("near@example.org", "deliver", None, None)],
         "auth_user": "u@example.org", "ret": "FULL", "peer_ip": "198.51.100.1",
         "queue_id": f"{tag}3", "enqueued_at": AT, "metadata": {"k": [1, "v"]}},
        {"kind": "inbound", "mail_from": "s@example.com", "message": STORED,
         "recipients": [("w@example.org", "deliver", None, None)], "queue_id": f"{tag}4"},
        {"kind": "bounce", "mail_from": "", "message": b"bounce <" + tag.encode() + b">",
         "recipients": [("v@example.org", "outbound", None, None)], "queue_id": f"{tag}5"},
        {"kind": "inbound", "mail_from": "q@example.com", "message": b"\x00\xff binary",
         "recipients": [(f"r{i}@example.org", "deliver", None, None) for i in range(40)],
         "queue_id": f"{tag}6", "enqueued_at": AT},
    ]


def rows(session: StoreSession, tag: str) -> list[tuple[Any, ...]]:
    """Every column a path wrote, the spool's own ids and clocks aside (blob by content)."""
    found = session.execute(text(
        "SELECT substr(s.queue_id, 2), s.kind, s.mail_from, s.size, s.body, s.smtputf8, s.ret,"
        " s.envid, host(s.peer_ip), s.helo, s.auth_user, s.disposition,"
        " m.sha256, m.size, m.blob, m.metadata::text,"
        " r.address, r.orcpt, r.notify, r.stream, r.state, r.attempts, r.enqueued_at,"
        " r.last_error, r.parent_id, r.id - min(r.id) OVER (PARTITION BY s.id),"
        " r.next_attempt_at = s.received_at"
        " FROM spool_messages s JOIN messages m ON m.id = s.message_id"
        " JOIN spool_recipients r ON r.spool_message_id = s.id"
        " WHERE s.queue_id LIKE :tag ORDER BY s.queue_id, r.id"), {"tag": f"{tag}%"})
    out = []
    for row in found:
        blob = bytes(row[14])
        assert row[12] == hashlib.sha256(blob).hexdigest() and row[13] == len(blob)
        # the two paths' own bytes differ by their tag only
        out.append((*row[:12], blob.replace(b"<" + tag.encode() + b">", b"<#>"), *row[15:]))
    return out


def ids_in_order(session: StoreSession, queue_id: str) -> list[int]:
    return [int(i) for i in session.execute(text(
        "SELECT r.id FROM spool_recipients r JOIN spool_messages s ON s.id = r.spool_message_id"
        " WHERE s.queue_id = :q ORDER BY r.id"), {"q": queue_id}).scalars()]


class Counted:
    """Counts the executions of a Prepared statement."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, statement: Prepared) -> None:
        self.calls = 0
        real = statement.execute

        def execute(connection: Any, params: Any) -> Any:
            self.calls += 1
            return real(connection, params)

        monkeypatch.setattr(statement, "execute", execute)


def test_a_group_is_written_in_one_statement_with_the_rows_of_one_statement_each(
        database: Database, clean_db: str, monkeypatch: pytest.MonkeyPatch):
    database.run_sync(lambda s: spool.create_spool_ids(
        s, kind="inbound", mail_from="", recipients=[("o@example.org", "deliver", None, None)],
        message=STORED, queue_id="O1"))
    one, group = Counted(monkeypatch, spool._SPOOL), Counted(monkeypatch, spool._SPOOL_GROUP)

    def single(session: StoreSession) -> list[tuple[str, list[int]]]:
        return [spool.create_spool_ids(session, **kwargs) for kwargs in members("S")]

    alone = database.run_sync(single)
    assert (one.calls, group.calls) == (6, 0)
    together = database.run_sync(spool.create_spool_many, members("M"))
    assert (one.calls, group.calls) == (6, 1)

    assert [q for q, _ in alone] == [f"S{i}" for i in range(1, 7)]
    assert [q for q, _ in together] == [f"M{i}" for i in range(1, 7)]
    # each member's ids: its own recipients', ascending in the order given
    assert [len(ids) for _, ids in together] == [3, 1, 2, 1, 1, 40]
    for queue_id, ids in together:
        assert ids == database.run_sync(ids_in_order, queue_id)
    written_alone = database.run_sync(rows, "S")
    assert written_alone == database.run_sync(rows, "M")
    assert len(written_alone) == 48
    # every blob once: the shared bytes, the one stored before, the binary one, and the
    # two per path that differ by tag
    with_blobs = database.run_sync(lambda s: s.execute(text(
        "SELECT count(*), count(DISTINCT sha256) FROM messages")).one())
    assert tuple(with_blobs) == (7, 7)


def test_a_group_of_one_takes_the_single_statement(database: Database, clean_db: str,
                                                   monkeypatch: pytest.MonkeyPatch):
    one, group = Counted(monkeypatch, spool._SPOOL), Counted(monkeypatch, spool._SPOOL_GROUP)
    [(queue_id, ids)] = database.run_sync(spool.create_spool_many, members("A")[:1])
    assert queue_id == "A1" and len(ids) == 3
    assert (one.calls, group.calls) == (1, 0)


def test_a_bad_argument_refuses_the_whole_group_before_any_statement(
        database: Database, clean_db: str, monkeypatch: pytest.MonkeyPatch):
    group = Counted(monkeypatch, spool._SPOOL_GROUP)
    bad = members("B")
    bad[3]["recipients"] = []
    with pytest.raises(ValueError, match="at least one recipient"):
        database.run_sync(spool.create_spool_many, bad)
    assert group.calls == 0
    assert database.run_sync(rows, "B") == []


def test_a_blob_committed_after_the_statements_snapshot_takes_the_row_path(
        database: Database, database_url: str, clean_db: str, monkeypatch: pytest.MonkeyPatch):
    """The race the one-message statement handles too: another transaction stores the same
    bytes and commits while the group's INSERT waits on its row lock."""
    racing = b"From: r@example.com\r\nSubject: raced\r\n\r\nbody\r\n"
    group = members("R")[:3]
    group[1]["message"] = racing
    by_rows: list[str] = []
    real_rows = spool._spool_rows

    def spool_rows(session: Any, params: dict[str, Any], *args: Any) -> Any:
        by_rows.append(params["queue_id"])
        return real_rows(session, params, *args)

    monkeypatch.setattr(spool, "_spool_rows", spool_rows)
    engine = create_engine(database_url)
    waiting = 0
    try:
        with engine.connect() as other:
            other.execute(text("INSERT INTO messages (sha256, size, blob) VALUES "
                               "(encode(sha256(:b), 'hex'), length(:b), :b)"), {"b": racing})
            outcome: list[Any] = []
            worker = threading.Thread(
                target=lambda: outcome.append(database.run_sync(spool.create_spool_many, group)))
            worker.start()
            # the group's statement waits on the uncommitted row; then it is committed
            with engine.connect() as watch:
                for _ in range(500):
                    waiting = watch.execute(text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE '%postroom_spool_group%'")).scalar_one()
                    if waiting:
                        break
                    threading.Event().wait(0.02)
            other.commit()
            worker.join(60)
    finally:
        engine.dispose()
    assert waiting == 1
    assert by_rows == ["R2"]  # only the raced member, in the same transaction
    [(q1, ids1), (q2, ids2), (q3, ids3)] = outcome[0]
    assert (q1, q2, q3) == ("R1", "R2", "R3")
    assert (len(ids1), len(ids2), len(ids3)) == (3, 1, 2)
    for queue_id, ids in outcome[0]:
        assert ids == database.run_sync(ids_in_order, queue_id)
    assert database.run_sync(lambda s: s.execute(text(
        "SELECT count(*) FROM messages WHERE blob = :b"), {"b": racing}).scalar_one()) == 1


def test_one_bad_member_of_a_multi_row_group_is_refused_alone(
        database: Database, clean_db: str, twisted_reactor: Any):
    metrics = Metrics("test", process_metrics=False)

    def work(session: StoreSession, **kwargs: Any) -> tuple[str, list[int]]:
        return spool.create_spool_ids(session, **kwargs)

    commit: GroupCommit[str, Any, None] = GroupCommit(
        database, work, lambda c: [None] * len(c), metrics=metrics,
        batch=spool.create_spool_many)
    database.run_sync(work, **members("T")[2])  # T3 taken: the group's T3 is refused
    group = members("T")

    def go() -> Any:
        return DeferredList([commit.submit(m["queue_id"], 100, **m) for m in group],
                            consumeErrors=True)

    results: Sequence[tuple[bool, Any]] = in_reactor(go, timeout=60)
    assert [ok for ok, _ in results] == [True, True, False, True, True, True]
    assert "unique" in str(results[2][1].value).lower()
    assert [value[0][0] for ok, value in results if ok] == ["T1", "T2", "T4", "T5", "T6"]
    written = {r[0] for r in database.run_sync(rows, "T")}
    assert written == {"1", "2", "3", "4", "5", "6"}  # "3": the one committed before
