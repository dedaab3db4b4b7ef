"""Fixtures: a fresh, migrated PostgreSQL database per test session, and a clean one per test.

The server is POSTROOM_TEST_PG_URL (default: postgres on 127.0.0.1:5432). When it
cannot be reached the fixture fails with the reason: tests never skip for it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from postroom.store.db import Database
from postroom.store.migrate import upgrade
from postroom.store.models import Base

DEFAULT_SERVER_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    return os.environ.get("POSTROOM_TEST_PG_URL", DEFAULT_SERVER_URL)


def create_test_database(prefix: str = "postroom_test_") -> str:
    """Create an empty database with a unique name on the test server; returns its URL."""
    server = make_url(server_url())
    name = prefix + secrets.token_hex(6)
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.fail(f"PostgreSQL at {server.render_as_string(hide_password=True)} is not "
                    f"reachable (set POSTROOM_TEST_PG_URL): {exc.orig}", pytrace=False)
    finally:
        admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


def drop_test_database(url: str) -> None:
    """Terminate the database's connections and drop it."""
    name = make_url(url).database
    admin = create_engine(server_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :name AND pid <> pg_backend_pid()"),
                         {"name": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()


def terminate_backend(url: str, pid: int) -> None:
    """End the server process ``pid`` (a connection of the database at ``url``), as a crash
    or an administrator would: its client finds out at its next statement."""
    engine = create_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            conn.commit()
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """URL of a fresh database migrated to head, dropped at the end of the session."""
    url = create_test_database()
    try:
        upgrade(url)
        yield url
    finally:
        drop_test_database(url)


@pytest.fixture(scope="session")
def database(database_url: str) -> Iterator[Database]:
    """A started Database (db thread pool running) on the session's database."""
    db = Database(database_url, pool_size=4)
    db.start()
    try:
        yield db
    finally:
        db.stop()


def truncate_all(url: str) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture
def clean_db(database_url: str) -> Iterator[str]:
    """The session database emptied before the test (every table, identities restarted)."""
    truncate_all(database_url)
    yield database_url
