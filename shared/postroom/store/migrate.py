"""Schema migrations without alembic.ini: upgrade, downgrade, inspect and check the revision.

The compatibility window (expand-then-contract, docs/upgrades.md): every
migration declares ``kind = "expand"`` (additive: the release before it runs on
the new schema unchanged) or ``kind = "contract"`` (removes or changes what an
older release uses). After each upgrade or downgrade the table
``schema_compat`` lists every revision whose release runs on the schema as it
now is: the current revision, and each one before it reached back through
expand migrations only. A release runs when the database is at its head, or
at a newer revision whose ``schema_compat`` lists that head; an older release
cannot know the newer migrations, so it learns this from the database.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from postroom.store.db import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
KINDS = ("expand", "contract")


class SchemaOutOfDate(RuntimeError):
    """The database is not at a revision this release of Postroom can run on."""


class SchemaTooOld(SchemaOutOfDate):
    """The database is behind this release: `postroom db upgrade`."""


class SchemaTooNew(SchemaOutOfDate):
    """The database was migrated by a newer release past this one's compatibility window."""


def _config(migrations: Path = MIGRATIONS_DIR) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    return config


def _scripts(migrations: Path = MIGRATIONS_DIR) -> ScriptDirectory:
    return ScriptDirectory.from_config(_config(migrations))


def head_revision(migrations: Path = MIGRATIONS_DIR) -> str:
    """The newest revision shipped with this release."""
    head = _scripts(migrations).get_current_head()
    assert head is not None, "no migration scripts found"
    return head


def migration_kind(migrations: Path, revision: str) -> str:
    """``expand`` or ``contract``, as the migration script declares (ValueError if neither)."""
    script = _scripts(migrations).get_revision(revision)
    assert script is not None
    kind = getattr(script.module, "kind", None)
    if kind not in KINDS:
        raise ValueError(f"migration {revision} ({script.path}) declares no kind: add "
                         f'`kind: str = "expand"` or "contract" (docs/upgrades.md)')
    return str(kind)


def _declared_kind(migrations: Path, revision: str) -> str:
    try:
        return migration_kind(migrations, revision)
    except ValueError:
        return "contract"


def compatible_revisions(revision: str, migrations: Path = MIGRATIONS_DIR) -> list[str]:
    """The revisions whose release runs on the schema at ``revision``: ``revision`` itself,
    then each earlier one while the migration after it is an expand one (newest first)."""
    scripts = _scripts(migrations)
    found = [revision]
    current = revision
    # a migration that declares no kind counts as a contract one (the safe side); the test
    # suite refuses it (tests/integration/test_schema_window.py)
    while _declared_kind(migrations, current) == "expand":
        script = scripts.get_revision(current)
        assert script is not None
        down = script.down_revision
        if down is None or not isinstance(down, str):  # the first one, or a merge: stop
            break
        found.append(down)
        current = down
    return found


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _window(connection: Connection) -> list[str]:
    """The revisions ``schema_compat`` lists ([] before the table exists)."""
    if not inspect(connection).has_table("schema_compat"):
        return []
    return [str(r) for r in connection.execute(text("SELECT revision FROM schema_compat"))
            .scalars()]


def _record_window(connection: Connection, migrations: Path) -> None:
    current = _current(connection)
    if current is None or not inspect(connection).has_table("schema_compat"):
        return
    connection.execute(text("DELETE FROM schema_compat"))
    for revision in compatible_revisions(current, migrations):
        connection.execute(text("INSERT INTO schema_compat (revision) VALUES (:r)"),
                           {"r": revision})


def _known(migrations: Path, revision: str) -> bool:
    try:
        return _scripts(migrations).get_revision(revision) is not None
    except CommandError:
        return False


def _too_new(current: str, head: str) -> SchemaTooNew:
    return SchemaTooNew(
        f"the database schema is newer than this release: it is at {current}, past what "
        f"this release (schema {head}) can run on (a contract migration since); run the "
        f"newer release, or downgrade the schema with the newer release's "
        f"`postroom db downgrade {head}` (docs/upgrades.md)")


def upgrade(url: str, revision: str = "head", *, migrations: Path = MIGRATIONS_DIR) -> str:
    """Bring the database at ``url`` up to ``revision`` (the newest by default).

    A database already past this release's head (a newer release migrated it) is left
    as it is when it is inside the compatibility window, the case of a rollback, and
    refused with SchemaTooNew otherwise. Returns what was done, for the operator.
    """
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            current = _current(connection)
            if current is not None and not _known(migrations, current):
                head = head_revision(migrations)
                if head in _window(connection):
                    return (f"database schema is at {current}, newer than this release "
                            f"({head}) and compatible with it: nothing to do")
                raise _too_new(current, head)
            config = _config(migrations)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            _record_window(connection, migrations)
            return f"database schema is at {_current(connection)} (head)"
    finally:
        engine.dispose()


def downgrade(url: str, revision: str, *, migrations: Path = MIGRATIONS_DIR) -> None:
    """Take the database at ``url`` back to ``revision`` (run by the release that has the
    newer migrations; a contract migration's downgrade may not restore dropped data)."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config = _config(migrations)
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
            _record_window(connection, migrations)
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at, or None when it was never migrated."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return _current(connection)
    finally:
        engine.dispose()


def check_schema(url: str, *, migrations: Path = MIGRATIONS_DIR) -> str:
    """Return the database's revision if this release runs on it, else raise
    SchemaTooOld (run `postroom db upgrade`) or SchemaTooNew (outside the window)."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            current = _current(connection)
            head = head_revision(migrations)
            if current == head:
                return head
            if current is None:
                raise SchemaTooOld(
                    f"the database has no schema yet (empty database); this release needs "
                    f"{head}: run `postroom db upgrade`")
            if _known(migrations, current):
                raise SchemaTooOld(
                    f"the database schema is older than this release: it is at {current}, "
                    f"this release needs {head}: run `postroom db upgrade`")
            if head in _window(connection):
                return current
            raise _too_new(current, head)
    finally:
        engine.dispose()
