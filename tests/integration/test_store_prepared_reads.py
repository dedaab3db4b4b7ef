"""Prepared.read_rows: an autocommit read on the driver's cursor, with execute's error handling."""

from __future__ import annotations

import pytest
from sqlalchemy import exc

from postroom.store.db import Database
from postroom.store.prepared import Prepared
from tests.support.db import terminate_backend

_PROBE = Prepared("test_read_rows_probe", (
    "SELECT pg_backend_pid(), CAST(%(a)s AS text[]), decode('00ff', 'hex'), NULL::int, "
    "%(n)s::int"))
_BROKEN = Prepared("test_read_rows_broken", "SELECT 1 / %(n)s::int")


def _probe(session, calls=None):
    if calls is not None:
        calls.append(1)
    return _PROBE.read_rows(session.connection(), {"a": ["\\Seen", "x"], "n": 7})


@pytest.fixture
def db(database_url, clean_db):
    database = Database(database_url, pool_size=1)
    yield database
    database.dispose()


def test_read_rows_gives_the_rows_execute_gives(db):
    def both(session):
        connection = session.connection()
        return (_PROBE.read_rows(connection, {"a": ["\\Seen", "x"], "n": 7}),
                [tuple(r) for r in _PROBE.execute(connection, {"a": ["\\Seen", "x"], "n": 7})])

    fast, slow = db.run_read_sync(both)
    assert [type(v) for v in fast[0]] == [type(v) for v in slow[0]]
    assert fast[0][1] == ["\\Seen", "x"] and bytes(fast[0][2]) == b"\x00\xff"
    assert (fast[0][0], *fast[0][3:]) == (slow[0][0], None, 7)


def test_read_rows_on_a_dead_connection_is_retried_like_execute(db, database_url):
    first = db.run_read_sync(_probe)[0][0]
    terminate_backend(database_url, first)
    calls: list[int] = []
    # the driver's error goes through execute, which invalidates the connection: the
    # Database runs the read once more on a new one
    rows = db.run_read_sync(_probe, calls)
    assert rows[0][0] != first
    assert len(calls) == 2


def test_an_sql_error_of_read_rows_is_sqlalchemys_and_not_retried(db):
    calls: list[int] = []

    def broken(session):
        calls.append(1)
        return _BROKEN.read_rows(session.connection(), {"n": 0})

    with pytest.raises(exc.DataError):
        db.run_read_sync(broken)
    assert len(calls) == 1


def test_read_rows_inside_a_transaction_is_execute(db):
    calls: list[int] = []

    def in_transaction(session):
        # psycopg2 not in autocommit: the statements belong to the transaction, and a
        # failure is raised as it is, not followed by a run in the aborted transaction
        # (which would fail with InFailedSqlTransaction, an InternalError)
        calls.append(1)
        assert _probe(session)[0][4] == 7
        return _BROKEN.read_rows(session.connection(), {"n": 0})

    with pytest.raises(exc.DataError):
        db.run_core_sync(in_transaction)
    assert len(calls) == 1
