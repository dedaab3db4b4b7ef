"""The imap mailstore's prepared statements (docs/decisions/0006).

Every variant must prepare (most are not reached by the protocol tests), under
a name no other statement uses; and each shape of FETCH, STORE and EXPUNGE must
answer the same with PostgreSQL's generic plan (which it may keep from the
sixth execution on a connection) as with a plan made for the values.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from postroom.auth.passwords import hash_password
from postroom.mime import analyze, metadata_dict
from postroom.store import domains, entries, users
from postroom.store.db import Database
from postroom.store.prepared import Prepared
from postroom_imap import mailstore

cheap = functools.partial(hash_password, ln=4)
RUNS = 7  # past the five custom plans


def _statements() -> list[Prepared]:
    found: list[Prepared] = []
    for value in vars(entries).values():
        if isinstance(value, Prepared):
            found.append(value)
        elif isinstance(value, dict):
            found.extend(v for v in value.values() if isinstance(v, Prepared))
    return found


@pytest.fixture(params=["auto", "force_generic_plan"])
def db(database_url: str, clean_db: str, request: pytest.FixtureRequest) -> Iterator[Database]:
    """A one-connection Database; with force_generic_plan, every EXECUTE uses the generic plan."""
    database = Database(database_url, pool_size=1)

    @event.listens_for(database.engine, "connect")
    def plan_cache_mode(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET plan_cache_mode = {request.param}")
        cursor.close()
        dbapi_connection.commit()

    shown = database.run_sync(lambda s: s.execute(text("SHOW plan_cache_mode")).scalar())
    assert shown == request.param
    yield database
    database.dispose()


@pytest.fixture
def user_id(db: Database) -> int:
    db.run_sync(domains.add_domain, "example.test")
    return int(db.run_sync(users.add_user, "alice@example.test", "pw", hash_fn=cheap).id)


def _message(n: int) -> bytes:
    return (b"From: a@example.test\r\nTo: b@example.test\r\nSubject: m%d\r\n\r\nbody %d\r\n"
            % (n, n))


def _cached(n: int) -> dict[str, Any]:
    """The analysis the store keeps for message ``n``, as a FETCH reads it (no header list)."""
    cached = metadata_dict(analyze(_message(n)))
    cached.pop("headers")
    return cached


def _top(cached: dict[str, Any]) -> dict[str, Any]:
    body = cached["body"]
    return {"size": cached["size"], "body": {k: body[k] for k in ("header_start", "body_start",
                                                                   "end")}}


def _fill(db: Database, user_id: int, count: int) -> int:
    mailbox_id = 0
    for n in range(count):
        _, _, mailbox_id, _ = db.run_sync(mailstore.append, user_id, "INBOX", _message(n),
                                          ["\\Seen"] if n % 3 == 0 else [], None)
    return mailbox_id


def test_every_statement_prepares_under_its_own_imap_name(database_url: str) -> None:
    statements = _statements()
    names = [s.name for s in statements]
    assert len(statements) >= 30
    assert len(set(names)) == len(names)
    assert all(n.startswith("postroom_imap_") for n in names)
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement.prepare_sql)
            conn.exec_driver_sql("DEALLOCATE ALL")
    finally:
        engine.dispose()


@pytest.mark.parametrize("uids", [
    [3, 4, 5, 6],  # a range
    [2, 3, 5, 6],  # dense: the range, filtered in Python
    [1, 12],  # sparse: an array test within the range
])
def test_fetch_shapes_answer_alike_under_generic_plans(db: Database, user_id: int,
                                                       uids: list[int]) -> None:
    mailbox_id = _fill(db, user_id, 12)
    db.run_sync(mailstore.store, mailbox_id, [5, 12], "+", ["\\Flagged"], None)
    for _ in range(RUNS):
        for meta, tree in ((False, True), (True, True), (True, False)):
            for blob in (False, True):
                rows = db.run_sync(mailstore.fetch, mailbox_id, uids, blob, meta, False, None,
                                   tree)
                assert [r.uid for r in rows] == uids
                for r in rows:
                    assert (r.blob == _message(r.uid - 1)) if blob else r.blob is None
                    if not meta:
                        assert r.meta is None
                    elif tree:
                        assert r.meta == _cached(r.uid - 1)
                    else:
                        assert r.meta == _top(_cached(r.uid - 1))
                    assert ("\\Seen" in r.flags) == ((r.uid - 1) % 3 == 0)
                    assert r.size == len(_message(r.uid - 1))
                changed = db.run_sync(mailstore.fetch, mailbox_id, uids, blob, meta, False,
                                      12, tree)  # modseq 12: the last APPEND's
                assert [r.uid for r in changed] == [u for u in uids if u in (5, 12)]
        # header sections only: the blob up to the end of its header, the rest the same
        for since in (None, 12):
            head = db.run_sync(mailstore.fetch, mailbox_id, uids, True, True, False, since,
                               False, True)
            assert [r.uid for r in head] == [u for u in uids if since is None or u in (5, 12)]
            for r in head:
                whole = _message(r.uid - 1)
                assert r.blob == whole[:whole.index(b"\r\n\r\n") + 4]
                assert r.meta == _top(_cached(r.uid - 1)) and r.size == len(whole)


def _flags(db: Database, mailbox_id: int, uids: list[int]) -> dict[int, tuple[str, ...]]:
    rows = db.run_sync(mailstore.fetch, mailbox_id, uids, False, False, False, None)
    return {r.uid: r.flags for r in rows}


def test_store_modes_and_expunge_answer_alike_under_generic_plans(db: Database,
                                                                  user_id: int) -> None:
    last = 3 * RUNS + 2
    mailbox_id = _fill(db, user_id, last)
    gone = [1, last]
    for i in range(RUNS):
        uid = 3 * i + 2
        result = db.run_sync(mailstore.store, mailbox_id, [uid, uid + 1], "+",
                             ["\\Flagged", "$Work"], None)
        assert sorted(result.changed) == [uid, uid + 1]
        assert _flags(db, mailbox_id, [uid])[uid] == tuple(sorted(
            {"\\Flagged", "$Work"} | ({"\\Seen"} if (uid - 1) % 3 == 0 else set())))
        result = db.run_sync(mailstore.store, mailbox_id, [uid], "-", ["$Work"], None)
        assert result.changed == [uid] and "$Work" not in result.rows[0].flags
        result = db.run_sync(mailstore.store, mailbox_id, [uid + 1], "", ["\\Draft"], None)
        assert [r.flags for r in result.rows] == [("\\Draft",)]
        # UNCHANGEDSINCE older than the message's modseq: refused and reported
        stale = db.run_sync(mailstore.store, mailbox_id, [uid, uid + 1], "+", ["\\Deleted"], 1)
        assert stale.changed == [] and sorted(stale.modified) == [uid, uid + 1]
        current = result.modseq_after
        assert current is not None
        done = db.run_sync(mailstore.store, mailbox_id, [uid + 1], "", ["\\Deleted"], current)
        assert done.changed == [uid + 1] and done.modified == []
        for mode in ("-", ""):
            guarded = db.run_sync(mailstore.store, mailbox_id, [uid], mode, ["\\Answered"], 1)
            assert guarded.changed == [] and guarded.modified == [uid]
        removed, before, after = db.run_sync(mailstore.expunge, mailbox_id, [uid, uid + 1])
        assert removed == [uid + 1] and after == before + 1
        gone.append(uid + 1)
    db.run_sync(mailstore.store, mailbox_id, [1, last], "+", ["\\Deleted"], None)
    removed, _, _ = db.run_sync(mailstore.expunge, mailbox_id, None)
    assert removed == [1, last]
    state: Any = db.run_sync(mailstore.select, user_id, "INBOX")
    assert list(state.uids) == [u for u in range(1, last + 1) if u not in gone]
    # the mailbox's keyword list persists once announced (issue 18), message or not
    assert "$Work" in state.keywords
