"""The compatibility window (expand-then-contract, docs/upgrades.md), against real PostgreSQL.

A "newer release" is this tree's migrations plus one more revision in a copied
directory; "this release" is the shipped directory. A release whose head is N
runs on N+1 when N+1 is an expand migration, and refuses N+1 contract with a
message that says the schema is the newer side.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from postroom.store import migrate
from postroom.store.migrate import (
    KINDS,
    MIGRATIONS_DIR,
    SchemaTooNew,
    SchemaTooOld,
    check_schema,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from tests.support.db import create_test_database, drop_test_database

NEXT = "9001"

_NEXT_MIGRATION = '''"""A newer release's migration (test only)."""
import sqlalchemy as sa
from alembic import op

revision = "{next}"
down_revision = "{head}"
branch_labels = None
depends_on = None
kind = "{kind}"


def upgrade():
    if kind == "expand":
        op.create_table("future_things", sa.Column("id", sa.Integer(), primary_key=True))
    else:
        op.drop_column("users", "quota_messages")


def downgrade():
    if kind == "expand":
        op.drop_table("future_things")
    else:
        op.add_column("users", sa.Column("quota_messages", sa.Integer(), nullable=True))
'''


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    url = create_test_database("postroom_test_window_")
    try:
        yield url
    finally:
        drop_test_database(url)


def newer_release(tmp_path: Path, kind: str) -> Path:
    """A copy of this release's migrations with one more revision of ``kind``."""
    target = tmp_path / f"migrations-{kind}"
    shutil.copytree(MIGRATIONS_DIR, target,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (target / "versions" / f"{NEXT}_next.py").write_text(
        _NEXT_MIGRATION.format(next=NEXT, head=head_revision(), kind=kind))
    return target


def test_every_migration_declares_its_kind():
    scripts = ScriptDirectory(str(MIGRATIONS_DIR))
    revisions = list(scripts.walk_revisions())
    assert revisions
    for script in revisions:
        assert getattr(script.module, "kind", None) in KINDS, (
            f"{script.path}: declare kind = 'expand' or 'contract' (docs/upgrades.md)")


def test_the_new_migration_template_makes_the_author_choose():
    template = (MIGRATIONS_DIR / "script.py.mako").read_text()
    assert "kind: str =" in template


def test_the_previous_release_runs_on_this_schema_when_the_head_is_an_expand(
        empty_database_url, tmp_path):
    """The window of the real tree: this release's head migration, if an expand one, keeps
    the release before it (the same tree without that file) running."""
    head = head_revision()
    previous = tmp_path / "previous"
    shutil.copytree(MIGRATIONS_DIR, previous, ignore=shutil.ignore_patterns("__pycache__"))
    [head_file] = [p for p in (previous / "versions").glob("*.py")
                   if f'revision: str = "{head}"' in p.read_text()]
    head_file.unlink()
    upgrade(empty_database_url)
    if migrate.migration_kind(MIGRATIONS_DIR, head) == "expand":
        assert check_schema(empty_database_url, migrations=previous) == head
    else:
        with pytest.raises(SchemaTooNew):
            check_schema(empty_database_url, migrations=previous)


def test_release_n_runs_on_n_plus_1_expand(empty_database_url, tmp_path):
    newer = newer_release(tmp_path, "expand")
    upgrade(empty_database_url, migrations=newer)
    assert current_revision(empty_database_url) == NEXT
    # this release (head N) on the newer schema: accepted, and says where the database is
    assert check_schema(empty_database_url) == NEXT
    # its one-shot `db upgrade` (compose's migrate service) must not fail on a rollback
    said = upgrade(empty_database_url)
    assert "newer than this release" in said and "nothing to do" in said
    assert current_revision(empty_database_url) == NEXT
    # the newer release itself is at its head
    assert check_schema(empty_database_url, migrations=newer) == NEXT


def test_release_n_refuses_n_plus_1_contract_saying_the_schema_is_newer(empty_database_url,
                                                                        tmp_path):
    newer = newer_release(tmp_path, "contract")
    upgrade(empty_database_url, migrations=newer)
    with pytest.raises(SchemaTooNew) as caught:
        check_schema(empty_database_url)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the database schema is newer than this release")
    assert "run the newer release" in message
    assert f"`postroom db downgrade {head_revision()}`" in message
    with pytest.raises(SchemaTooNew):
        upgrade(empty_database_url)
    # the documented way back: the newer release downgrades, then this one runs again
    downgrade(empty_database_url, head_revision(), migrations=newer)
    assert check_schema(empty_database_url) == head_revision()


def test_an_older_schema_says_so_and_names_the_fix(empty_database_url):
    first = migrate.compatible_revisions(head_revision())[-1]
    upgrade(empty_database_url, first)
    with pytest.raises(SchemaTooOld) as caught:
        check_schema(empty_database_url)
    assert str(caught.value).startswith("the database schema is older than this release")
    assert str(caught.value).endswith("run `postroom db upgrade`")


def test_the_window_is_recorded_from_the_kinds(empty_database_url, tmp_path):
    from sqlalchemy import create_engine, text

    upgrade(empty_database_url, migrations=newer_release(tmp_path, "expand"))
    engine = create_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            rows = set(conn.execute(text("SELECT revision FROM schema_compat")).scalars())
    finally:
        engine.dispose()
    assert {NEXT, head_revision()} <= rows
    assert rows == set(migrate.compatible_revisions(NEXT, tmp_path / "migrations-expand"))


def test_cli_db_check_and_upgrade_on_a_newer_compatible_schema(empty_database_url, tmp_path):
    upgrade(empty_database_url, migrations=newer_release(tmp_path, "expand"))
    env = {"PATH": "/usr/bin:/bin", "POSTROOM_DATABASE_URL": empty_database_url}
    for action, expected in (("check", "compatible with it"), ("upgrade", "nothing to do")):
        done = subprocess.run([sys.executable, "-m", "postroom.ops.cli", "db", action],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout


@pytest.mark.parametrize("kind", ["expand", "contract"])
def test_a_service_of_this_release_on_a_newer_schema(kind, empty_database_url, tmp_path,
                                                     redis_url):
    """The rollback itself: `postroom serve mda` of this release on a schema a newer release
    migrated starts (expand) or stops at once with the one line saying which side is newer
    (contract), rather than crash-looping on "needs NNNN"."""
    import secrets

    from tests.support.procs import ServiceProcess

    upgrade(empty_database_url, migrations=newer_release(tmp_path, kind))
    env = {"POSTROOM_DATABASE_URL": empty_database_url, "POSTROOM_REDIS_URL": redis_url,
           "POSTROOM_REDIS_PREFIX": f"window{secrets.token_hex(4)}:",
           "POSTROOM_DB_POOL_SIZE": "2"}
    proc = ServiceProcess("mda", env)  # `postroom serve mda`, as compose runs it
    try:
        if kind == "expand":
            proc.start()
            events = [e for e in proc.log_events()
                      if e.get("event") == "database schema newer than this release"]
            assert events and events[0]["schema"] == NEXT
        else:
            proc.spawn()
            assert proc.wait_exit(timeout=60) == 2
            [line] = [e for e in proc.log_events() if e.get("event") == "service failed to start"]
            assert line["reason"].startswith("the database schema is newer than this release")
            assert f"postroom db downgrade {head_revision()}" in line["reason"]
    finally:
        proc.close()
