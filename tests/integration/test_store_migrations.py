"""Migrations: an empty database upgrades to head, and check_schema tells the two apart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect

from postroom.store.migrate import (
    SchemaOutOfDate,
    check_schema,
    current_revision,
    head_revision,
    upgrade,
)
from postroom.store.models import Base
from tests.support.db import create_test_database, drop_test_database


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    url = create_test_database("postroom_test_mig_")
    try:
        yield url
    finally:
        drop_test_database(url)


def test_empty_database_has_no_revision(empty_database_url):
    assert current_revision(empty_database_url) is None


def test_check_schema_raises_one_line_message_before_upgrade(empty_database_url):
    with pytest.raises(SchemaOutOfDate) as caught:
        check_schema(empty_database_url)
    message = str(caught.value)
    assert "\n" not in message
    assert f"this release needs {head_revision()}: run `postroom db upgrade`" in message


def test_upgrade_from_empty_reaches_head_and_check_passes(empty_database_url):
    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == head_revision()
    check_schema(empty_database_url)


def test_upgrade_creates_every_model_table(empty_database_url):
    upgrade(empty_database_url)
    engine = create_engine(empty_database_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables


def test_upgrade_twice_is_harmless(empty_database_url):
    upgrade(empty_database_url)
    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == head_revision()


def test_migrations_match_the_models(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
