"""Plain postgresql:// and postgres:// URLs reach real PostgreSQL through psycopg2, everywhere.

The services (Database), the migrations (Alembic) and the CLI all make their
engine through postroom.store.db.make_engine; a driver we do not ship stops
`postroom serve` and `postroom db` with one line naming POSTROOM_DATABASE_URL.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from postroom.store import migrate
from postroom.store.db import Database
from tests.support.procs import REPO_ROOT, base_env


def _as(url: str, scheme: str) -> str:
    return make_url(url).set(drivername=scheme).render_as_string(hide_password=False)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_plain_url_connects_through_psycopg2(database_url, scheme):
    url = _as(database_url, scheme)
    assert url.startswith(f"{scheme}://")
    database = Database(url, pool_size=1)
    try:
        assert database.engine.dialect.driver == "psycopg2"
        with database.engine.connect() as connection:
            name = connection.execute(text("SELECT current_database()")).scalar()
        assert name == make_url(database_url).database
    finally:
        database.dispose()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_migrations_take_the_plain_url_too(database_url, scheme):
    url = _as(database_url, scheme)
    migrate.upgrade(url)  # already at head: runs Alembic on the connection, changes nothing
    assert migrate.current_revision(url) == migrate.head_revision()
    migrate.check_schema(url)


def _cli(*argv: str, url: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = base_env({"POSTROOM_DATABASE_URL": url})
    return subprocess.run([sys.executable, "-m", "postroom.ops.cli", *argv], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_cli_db_current_works_with_a_postgres_url(database_url):
    result = _cli("db", "current", url=_as(database_url, "postgres"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == migrate.head_revision()


def test_cli_with_a_driver_we_do_not_ship_is_one_line(database_url):
    result = _cli("db", "current", url=_as(database_url, "postgresql+asyncpg"))
    assert result.returncode == 2
    output = (result.stdout + result.stderr).strip()
    assert len(output.splitlines()) == 1, output
    assert "POSTROOM_DATABASE_URL" in output and "Traceback" not in output


def test_serve_with_a_driver_we_do_not_ship_is_one_line_and_exit_2(service_process,
                                                                  database_url, redis_url):
    proc = service_process("mda", {"POSTROOM_DATABASE_URL": _as(database_url,
                                                                "postgresql+asyncpg"),
                                   "POSTROOM_REDIS_URL": redis_url}, start=False)
    assert proc.wait_exit(30) == 2
    lines = proc.output.strip().splitlines()
    assert len(lines) == 1, proc.output
    assert "POSTROOM_DATABASE_URL" in lines[0] and "asyncpg" in lines[0]
    assert "Traceback" not in proc.output and '"traceback"' not in proc.output
