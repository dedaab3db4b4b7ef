"""Prepared statements of the hot paths: placeholders, once per connection, reconnects."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from postroom.store.prepared import Prepared


def test_placeholders_become_numbered_parameters_once_per_name():
    stmt = Prepared("probe", "SELECT %(a)s::int + %(b)s::int, %(a)s::int, 'x%%'")
    assert stmt.params == ("a", "b")
    assert stmt.prepare_sql == "PREPARE postroom_probe AS SELECT $1::int + $2::int, $1::int, 'x%'"
    assert stmt.execute_sql == "EXECUTE postroom_probe (%(a)s, %(b)s)"


def test_names_are_checked():
    with pytest.raises(ValueError):
        Prepared("drop table; --", "SELECT 1")


@pytest.fixture
def engine(database_url):
    eng = create_engine(database_url, pool_size=1, max_overflow=0)
    yield eng
    eng.dispose()


def _backend_statements(conn):
    return conn.exec_driver_sql("SELECT name FROM pg_prepared_statements").scalars().all()


def test_prepared_once_per_connection_kept_after_rollback_and_reprepared_on_reconnect(engine):
    stmt = Prepared("probe_add", "SELECT %(a)s::int + %(b)s::int AS total")
    with engine.connect() as conn:
        assert stmt.execute(conn, {"a": 1, "b": 2}).scalar_one() == 3
        conn.rollback()  # PREPARE is not transactional: the statement stays
        assert _backend_statements(conn) == ["postroom_probe_add"]
        assert stmt.execute(conn, {"a": 5, "b": 6}).one().total == 11
    with engine.connect() as conn:  # the same pooled connection: no second PREPARE (it would fail)
        assert stmt.execute(conn, {"a": 2, "b": 2}).scalar_one() == 4
        conn.invalidate()  # the connection is replaced: the new one prepares again
    with engine.connect() as conn:
        assert _backend_statements(conn) == []
        assert stmt.execute(conn, {"a": 1, "b": 1}).scalar_one() == 2
        assert _backend_statements(conn) == ["postroom_probe_add"]
