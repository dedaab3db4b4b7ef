"""Private PostgreSQL and Redis under a var directory: start, answer, stop."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import pytest
import redis
from sqlalchemy.engine import make_url

from postroom.ops.localinfra import LocalInfra, fallback_prefix


@pytest.fixture
def var_dir():
    path = Path(tempfile.mkdtemp(prefix="postroom-infra-"))
    path.chmod(0o755)  # PostgreSQL runs as an unprivileged user when we are root
    yield path / "var"
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_private_postgres_and_redis_start_answer_and_stop(var_dir):
    infra = LocalInfra(var_dir, durable=False)
    try:
        db_url = make_url(infra.start_postgres())
        redis_url = infra.start_redis()
        assert db_url.host == "127.0.0.1"
        conn = psycopg2.connect(host=db_url.host, port=db_url.port, user=db_url.username,
                                password=db_url.password, dbname=db_url.database)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == ("postroom",)
        conn.close()
        client = redis.Redis.from_url(redis_url)
        assert client.ping() is True
        assert client.config_get("save")["save"] == ""  # nothing kept on disk
        client.close()
        pids = [infra.postgres.proc.pid, infra.redis.proc.pid]
    finally:
        infra.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_private_postgres_refuses_password_less_logins(var_dir):
    infra = LocalInfra(var_dir, durable=False)
    try:
        db_url = make_url(infra.start_postgres())
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(host=db_url.host, port=db_url.port, user=db_url.username,
                             dbname=db_url.database, password="wrong")
    finally:
        infra.stop()


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as "
                               "another user (CI and the development containers are root)")


@pytest.fixture
def private_var_dir():
    """A var directory inside a 0700 one, like a checkout in root's home."""
    path = Path(tempfile.mkdtemp(prefix="postroom-infra-"))  # 0700
    yield path / "var"
    shutil.rmtree(path, ignore_errors=True)


@root_only
@pytest.mark.slow
def test_a_cluster_its_user_cannot_reach_runs_in_a_per_run_directory_removed_at_stop(
        private_var_dir):
    infra = LocalInfra(private_var_dir, durable=False)
    try:
        db_url = make_url(infra.start_postgres())
        assert infra.postgres is not None
        fallback = infra.postgres.fallback
        assert fallback is not None and fallback.parent in (Path("/var/tmp"), Path("/tmp"))
        assert fallback.name.startswith(fallback_prefix(private_var_dir.resolve() / "pg"))
        st = fallback.stat()
        assert st.st_mode & 0o777 == 0o700
        assert pwd.getpwuid(st.st_uid).pw_name in ("postgres", "nobody")
        assert not (private_var_dir / "pg" / "data").exists()
        conn = psycopg2.connect(host=db_url.host, port=db_url.port, user=db_url.username,
                                password=db_url.password, dbname=db_url.database)
        conn.close()
        pid = infra.postgres.proc.pid
    finally:
        infra.stop()
    assert not fallback.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@root_only
@pytest.mark.slow
def test_a_per_run_directory_left_by_a_killed_run_is_removed_next_time(private_var_dir):
    user = pwd.getpwnam("postgres") if _has_user("postgres") else pwd.getpwnam("nobody")
    prefix = fallback_prefix(private_var_dir.resolve() / "pg")
    stale = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    live = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    dead_pid = _a_dead_pid()
    for path, pid in ((stale, dead_pid), (live, os.getpid())):
        (path / "data").mkdir()
        (path / "data" / "postmaster.pid").write_text(f"{pid}\n/x\n")
        for item in (path, path / "data", path / "data" / "postmaster.pid"):
            os.chown(item, user.pw_uid, user.pw_gid)
    infra = LocalInfra(private_var_dir, durable=False)
    try:
        infra.start_postgres()
        assert not stale.exists()  # its postmaster is gone: a leftover of a killed run
        assert live.exists()  # a postmaster still runs there: not ours to remove
    finally:
        infra.stop()
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _a_dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
