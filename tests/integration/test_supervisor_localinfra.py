"""Private PostgreSQL and Redis under a var directory: start, answer, stop."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psycopg2
import pytest
import redis
from sqlalchemy.engine import make_url

from postroom.localinfra import LocalInfra


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
