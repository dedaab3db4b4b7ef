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


def test_0009_starts_existing_mailboxes_with_nothing_recent_and_their_keywords(
        empty_database_url):
    upgrade(empty_database_url, "0008")
    engine = create_engine(empty_database_url)
    try:
        with engine.begin() as c:
            c.exec_driver_sql(
                "INSERT INTO domains (name) VALUES ('m9.example');"
                "INSERT INTO users (localpart, address, domain_id, password_hash) "
                "SELECT 'a', 'a@m9.example', id, 'x' FROM domains;"
                "INSERT INTO mailboxes (user_id, name, uidvalidity, uidnext) "
                "SELECT id, 'INBOX', 1, 3 FROM users;"
                "INSERT INTO messages (sha256, size, blob) VALUES (repeat('1', 64), 1, 'x'), "
                "(repeat('2', 64), 1, 'y');"
                "INSERT INTO mailbox_entries (mailbox_id, uid, message_id, flags, modseq, "
                "internaldate) SELECT b.id, m.id, m.id, CASE m.id WHEN 1 THEN "
                "ARRAY['\\Seen', '$b', '$a'] ELSE ARRAY['$a'] END, 1, now() "
                "FROM mailboxes b, messages m")
        upgrade(empty_database_url)
        with engine.begin() as c:
            row = c.exec_driver_sql("SELECT recent_uid, keywords FROM mailboxes").one()
            assert row == (3, ["$a", "$b"])
    finally:
        engine.dispose()


def test_0014_makes_each_accounts_json_rules_its_active_sieve_script(empty_database_url):
    upgrade(empty_database_url, "0013")
    engine = create_engine(empty_database_url)
    rules = ('[{"if": {"header": "list-id", "contains": "dev"}, '
             '"then": [{"fileinto": "Lists"}, {"stop": true}]}]')
    try:
        with engine.begin() as c:
            c.exec_driver_sql(
                "INSERT INTO domains (name) VALUES ('m14.example');"
                "INSERT INTO users (localpart, address, domain_id, password_hash) "
                "SELECT l, l || '@m14.example', id, 'x' FROM domains, "
                "(VALUES ('a'), ('b'), ('c')) v(l);")
            c.exec_driver_sql(
                "INSERT INTO mail_rules (user_id, rules) SELECT id, CAST(%(r)s AS jsonb) "
                "FROM users WHERE localpart = 'a'", {"r": rules})
            # an empty rule set is no script
            c.exec_driver_sql("INSERT INTO mail_rules (user_id, rules) SELECT id, '[]' "
                              "FROM users WHERE localpart = 'b'")
        upgrade(empty_database_url)
        with engine.begin() as c:
            rows = c.exec_driver_sql(
                "SELECT u.localpart, s.name, s.active, s.content, s.size FROM sieve_scripts s "
                "JOIN users u ON u.id = s.user_id").all()
        assert [(r[0], r[1], r[2]) for r in rows] == [("a", "rules", True)]
        content = rows[0][3]
        assert 'require "fileinto";' in content
        assert 'if header :contains "list-id" "dev" {' in content
        assert rows[0][4] == len(content.encode())
    finally:
        engine.dispose()


def _insert_blob(c, digit: str, blob: bytes) -> None:
    c.exec_driver_sql("INSERT INTO messages (sha256, size, blob) VALUES (%s, %s, %s)",
                      (digit * 64, len(blob), blob))


def test_0019_backfills_header_rows_and_its_trigger_fills_new_ones(empty_database_url):
    from postroom.store.migrate import downgrade

    upgrade(empty_database_url, "0018")
    engine = create_engine(empty_database_url)
    try:
        with engine.begin() as c:
            _insert_blob(c, "1", b"A: 1\r\n\r\nbody\r\n")
            _insert_blob(c, "2", b"no blank")
            _insert_blob(c, "3", b"B: 2\r\n" + b"x" * 70000)
        upgrade(empty_database_url)
        upgrade(empty_database_url)  # harmless again
        with engine.begin() as c:
            rows = c.exec_driver_sql("SELECT m.sha256, h.header, h.plain FROM message_headers h "
                                     "JOIN messages m ON m.id = h.message_id "
                                     "ORDER BY m.sha256").all()
            # the third's header has no end within 64 kB: no row, searched the old way
            assert [(r[0][0], bytes(r[1]), r[2]) for r in rows] == [
                ("1", b"A: 1\r\n\r\n", True), ("2", b"no blank", True)]
            _insert_blob(c, "4", b"C: \x80\r\n\r\nbody")
            row = c.exec_driver_sql("SELECT h.header, h.plain FROM message_headers h JOIN "
                                    "messages m ON m.id = h.message_id "
                                    "WHERE m.sha256 = repeat('4', 64)").one()
            assert (bytes(row[0]), row[1]) == (b"C: \x80\r\n\r\n", False)
            c.exec_driver_sql("DELETE FROM messages WHERE sha256 = repeat('1', 64)")
            assert c.exec_driver_sql("SELECT count(*) FROM message_headers").scalar() == 2
        downgrade(empty_database_url, "0018")
        assert "message_headers" not in inspect(engine).get_table_names()
        with engine.begin() as c:
            _insert_blob(c, "5", b"z")
    finally:
        engine.dispose()
