"""The Database runner: transactions on the `db` thread pool, plain data only, ping."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text
from twisted.python.failure import Failure

from postroom.store import domains
from postroom.store.db import Database
from postroom.store.errors import AlreadyExists
from postroom.store.models import Domain
from tests.support.db import terminate_backend


class CallingReactor:
    """Just enough reactor for deferToThreadPool without running the global one: results are
    handed over on the pool thread, and the test waits for them with an Event."""

    def __init__(self):
        self.triggers = {}

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def addSystemEventTrigger(self, phase, event, f, *args):
        key = object()
        self.triggers[key] = (phase, event, f)
        return key

    def removeSystemEventTrigger(self, key):
        del self.triggers[key]


@pytest.fixture
def runner(database_url, clean_db):
    db = Database(database_url, pool_size=2, reactor=CallingReactor())
    db.start()
    yield db
    db.stop()


def wait(d, timeout=10):
    done = threading.Event()
    box = []
    d.addBoth(lambda r: (box.append(r), done.set()))
    assert done.wait(timeout), "Deferred never fired"
    return box[0]


def test_engine_pool_is_bounded_with_no_overflow(runner):
    pool = runner.engine.pool
    assert (pool.size(), pool._max_overflow) == (2, 0)


def test_run_executes_on_the_db_thread_pool(runner):
    name = wait(runner.run(lambda session: threading.current_thread().name))
    assert name.startswith("PoolThread-db-")


def test_run_commits_on_success(runner):
    wait(runner.run(domains.add_domain, "example.test"))
    names = runner.run_sync(lambda s: list(s.execute(select(Domain.name)).scalars()))
    assert names == ["example.test"]


def test_run_rolls_back_and_fails_on_error(runner):
    def add_then_fail(session):
        domains.add_domain(session, "example.test")
        raise AlreadyExists("boom")

    result = wait(runner.run(add_then_fail))
    assert isinstance(result, Failure) and result.check(AlreadyExists)
    assert runner.run_sync(domains.list_domains) == []


def test_run_then_calls_then_in_the_same_thread_after_the_commit(runner):
    seen = []

    def then(domain_id):
        # another connection sees the row: the transaction has committed
        seen.append((threading.current_thread().name,
                     [d.name for d in runner.run_sync(domains.list_domains)], domain_id))
        return "then-result"

    result = wait(runner.run_then(lambda s: (domains.add_domain(s, "example.test"),
                                             threading.current_thread().name)[1], then))
    name, then_result = result
    assert then_result == "then-result"
    assert seen == [(name, ["example.test"], name)]


def test_run_then_returns_the_exception_of_then_the_commit_stands(runner):
    def then(_):
        raise ConnectionError("redis went away")

    result = wait(runner.run_then(domains.add_domain, then, "example.test"))
    assert not isinstance(result, Failure)
    assert isinstance(result[1], ConnectionError)
    assert [d.name for d in runner.run_sync(domains.list_domains)] == ["example.test"]


def test_run_then_skips_then_when_the_transaction_fails(runner):
    called = []

    def add_then_fail(session):
        domains.add_domain(session, "example.test")
        raise AlreadyExists("boom")

    result = wait(runner.run_then(add_then_fail, called.append))
    assert isinstance(result, Failure) and result.check(AlreadyExists)
    assert called == [] and runner.run_sync(domains.list_domains) == []


def test_run_refuses_to_return_orm_objects(runner):
    runner.run_sync(domains.add_domain, "example.test")
    result = wait(runner.run(lambda s: s.execute(select(Domain)).scalar_one()))
    assert isinstance(result, Failure) and result.check(TypeError)


def test_run_refuses_an_orm_object_among_plain_rows(runner):
    runner.run_sync(domains.add_domain, "example.test")
    result = wait(runner.run(lambda s: [(1, "a"), (2, "b"),
                                        s.execute(select(Domain)).scalar_one(), (3, "c")]))
    assert isinstance(result, Failure) and result.check(TypeError)


def test_run_before_start_is_an_error(database_url):
    db = Database(database_url, pool_size=1, reactor=CallingReactor())
    try:
        with pytest.raises(RuntimeError):
            db.run(lambda s: 1)
    finally:
        db.dispose()


def test_run_sync_passes_arguments(runner):
    assert runner.run_sync(lambda s, a, b=0: s.execute(text("SELECT :x"), {"x": a + b})
                           .scalar(), 2, b=3) == 5


def test_ping_answers_true_for_a_live_database(runner):
    assert wait(runner.ping()) is True


def test_ping_answers_false_for_an_unreachable_server():
    db = Database("postgresql+psycopg2://postgres@127.0.0.1:1/postgres?connect_timeout=2",
                  pool_size=1, reactor=CallingReactor())
    db.start()
    try:
        assert wait(db.ping()) is False
    finally:
        db.stop()


def test_stop_removes_the_reactor_shutdown_trigger(database_url):
    reactor = CallingReactor()
    db = Database(database_url, pool_size=1, reactor=reactor)
    db.start()
    assert len(reactor.triggers) == 1
    db.stop()
    assert reactor.triggers == {}


# --- stale connections: idle ping and one retry (docs/decisions/0005)


def _backend_pid(session):
    return session.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _counting(fn, calls):
    def counted(session):
        calls.append(1)
        return fn(session)

    return counted


def test_a_connection_killed_under_a_busy_pool_costs_a_retry_not_an_error(database_url, clean_db):
    db = Database(database_url, pool_size=1, reactor=CallingReactor())
    db.start()
    try:
        first = wait(db.run(_backend_pid))
        terminate_backend(database_url, first)
        calls = []
        work = _counting(_backend_pid, calls)
        # straight away: the connection was idle for less than PING_AFTER_IDLE, so no ping;
        # the first statement finds it dead, and the transaction runs again on a new one
        second = wait(db.run(work))
        assert isinstance(second, int) and second != first
        assert len(calls) == 2
    finally:
        db.stop()


def test_an_idle_connection_is_pinged_and_replaced_before_use(database_url, clean_db,
                                                              monkeypatch):
    from postroom.store import db as dbmodule

    monkeypatch.setattr(dbmodule, "PING_AFTER_IDLE", 0.0)
    db = Database(database_url, pool_size=1, reactor=CallingReactor())
    db.start()
    try:
        first = wait(db.run(_backend_pid))
        terminate_backend(database_url, first)
        calls = []
        work = _counting(_backend_pid, calls)
        second = wait(db.run(work))
        assert isinstance(second, int) and second != first
        assert len(calls) == 1  # the checkout ping found it: the work ran once
    finally:
        db.stop()


def test_an_sql_error_is_not_retried(runner):
    calls = []

    def broken(session):
        calls.append(1)
        session.execute(text("SELECT 1/0"))

    result = wait(runner.run(broken))
    assert isinstance(result, Failure)
    assert len(calls) == 1


def test_run_read_statements_commit_by_themselves_without_an_orm_session(runner):
    from sqlalchemy.orm import Session

    def read(session):
        assert not isinstance(session, Session)  # no Session made and closed per read
        session.execute(text("CREATE TEMP TABLE IF NOT EXISTS read_probe (x int)"))
        session.execute(text("INSERT INTO read_probe VALUES (1)"))
        # the INSERT's transaction ended with it: none is open now
        open_txid = session.execute(text("SELECT txid_current_if_assigned()")).scalar()
        return open_txid, session.connection().exec_driver_sql("SELECT 1").scalar()

    assert wait(runner.run_read(read)) == (None, 1)


def test_run_read_refuses_orm_work_loudly(runner):
    result = wait(runner.run_read(lambda session: session.scalars(select(Domain)).all()))
    assert isinstance(result, Failure) and result.check(AttributeError)


def test_run_read_retries_a_read_on_a_dead_connection(database_url, clean_db):
    db = Database(database_url, pool_size=1, reactor=CallingReactor())
    db.start()
    try:
        first = wait(db.run_read(_backend_pid))
        terminate_backend(database_url, first)
        calls = []
        second = wait(db.run_read(_counting(_backend_pid, calls)))
        assert isinstance(second, int) and second != first
        assert len(calls) == 2
    finally:
        db.stop()


def test_run_core_then_is_one_transaction_without_an_orm_session(runner):
    from sqlalchemy.orm import Session

    def work(session):
        assert not isinstance(session, Session)  # no Session made and closed per call
        session.execute(text("CREATE TEMP TABLE IF NOT EXISTS core_probe (x int)"))
        session.execute(text("INSERT INTO core_probe VALUES (1)"))
        # both statements in one open transaction
        return session.execute(text("SELECT txid_current_if_assigned()")).scalar()

    txid, then = wait(runner.run_core_then(work, lambda txid: ("after", txid)))
    assert txid is not None and then == ("after", txid)


def test_run_core_then_rolls_back_when_the_work_raises(runner):
    runner.run_sync(lambda s: s.execute(text("CREATE TABLE core_rollback (x int)")))

    def broken(session):
        session.execute(text("INSERT INTO core_rollback VALUES (1)"))
        session.execute(text("SELECT 1/0"))

    then_calls = []
    try:
        result = wait(runner.run_core_then(broken, then_calls.append))
        assert isinstance(result, Failure)
        assert then_calls == []
        assert runner.run_sync(lambda s: s.execute(
            text("SELECT count(*) FROM core_rollback")).scalar()) == 0
    finally:
        # the database is shared with later tests (test_migrations_match_the_models)
        runner.run_sync(lambda s: s.execute(text("DROP TABLE IF EXISTS core_rollback")))


def test_run_core_then_retries_on_a_dead_connection(database_url, clean_db):
    db = Database(database_url, pool_size=1, reactor=CallingReactor())
    db.start()
    try:
        first, _ = wait(db.run_core_then(_backend_pid, lambda pid: None))
        terminate_backend(database_url, first)
        calls = []
        second, _ = wait(db.run_core_then(_counting(_backend_pid, calls), lambda pid: None))
        assert isinstance(second, int) and second != first
        assert len(calls) == 2
    finally:
        db.stop()


def test_a_read_after_the_idle_ping_and_a_transaction_after_a_read(database_url, clean_db,
                                                                    monkeypatch):
    """run_read sets psycopg2's autocommit on the client and clears it before checkin: the
    idle ping leaves no transaction that would stop it being set, and the next run on the
    same connection is a transaction again (its work rolls back when it raises)."""
    from postroom.store import db as dbmodule

    monkeypatch.setattr(dbmodule, "PING_AFTER_IDLE", 0.0)  # every checkout pings
    db = Database(database_url, pool_size=1, reactor=CallingReactor())
    db.start()
    try:
        for _ in range(2):
            assert wait(db.run_read(lambda s: s.execute(text("SELECT 7")).scalar())) == 7
        db.run_sync(lambda s: s.execute(text("CREATE TABLE IF NOT EXISTS read_then_tx (x int)")))

        def insert_then_fail(session):
            session.execute(text("INSERT INTO read_then_tx VALUES (1)"))
            raise RuntimeError("roll back")

        assert isinstance(wait(db.run(insert_then_fail)), Failure)
        assert wait(db.run_read(lambda s: s.execute(
            text("SELECT count(*) FROM read_then_tx")).scalar())) == 0
        db.run_sync(lambda s: s.execute(text("DROP TABLE read_then_tx")))
    finally:
        db.stop()



def test_run_core_then_leaves_no_transaction_open_after_an_error(database_url, clean_db):
    # decision 0036: the core transaction is begun by hand (BEGIN in front of its first
    # statement, psycopg2 in autocommit), so its ROLLBACK is sent by hand too; one pooled
    # connection: the next caller gets that same connection, idle
    from postroom.store.errors import NotFound

    db = Database(database_url, pool_size=1, reactor=CallingReactor())
    db.start()
    db.run_sync(lambda s: s.execute(text("CREATE TABLE core_left_open (x int)")))
    try:
        def raises_in_python(session):
            session.execute(text("INSERT INTO core_left_open VALUES (1)"))
            raise NotFound("no such mailbox")

        def raises_in_sql(session):
            session.execute(text("INSERT INTO core_left_open VALUES (2)"))
            session.execute(text("SELECT 1/0"))

        for broken in (raises_in_python, raises_in_sql):
            assert isinstance(wait(db.run_core_then(broken, lambda r: None)), Failure)
            assert db.run_read_sync(lambda s: s.execute(
                text("SELECT txid_current_if_assigned()")).scalar()) is None
            assert db.run_read_sync(lambda s: s.execute(
                text("SELECT count(*) FROM core_left_open")).scalar()) == 0
        # the same connection still runs transactions and commits
        wait(db.run_core_then(lambda s: s.execute(
            text("INSERT INTO core_left_open VALUES (3)")) and None, lambda r: None))
        assert db.run_sync(lambda s: s.execute(
            text("SELECT array_agg(x) FROM core_left_open")).scalar()) == [3]
    finally:
        db.run_sync(lambda s: s.execute(text("DROP TABLE IF EXISTS core_left_open")))
        db.stop()


def test_run_core_then_prepared_statements_share_its_transaction(database_url, clean_db):
    # a Prepared's PREPARE goes alone (not transactional); BEGIN rides on its EXECUTE;
    # read_rows inside the transaction is execute, not a statement of its own
    from postroom.store.prepared import Prepared

    current = Prepared("test_core_txid", "SELECT txid_current() + %(z)s")
    db = Database(database_url, pool_size=1, reactor=CallingReactor())
    db.start()
    try:
        def work(session):
            first = current.execute(session.connection(), {"z": 0}).scalar()
            again = current.read_rows(session.connection(), {"z": 0})[0][0]
            last = session.execute(text("SELECT txid_current_if_assigned()")).scalar()
            return first, again, last

        for _ in range(2):  # PREPAREd on the first run, EXECUTE only on the second
            (first, again, last), _ = wait(db.run_core_then(work, lambda r: None))
            assert first == again == last
    finally:
        db.stop()


def test_run_core_then_driver_cursor_errors_are_sqlalchemys(database_url, clean_db):
    # after BEGIN went, a Prepared runs on the driver's cursor (decision 0036): its errors
    # keep SQLAlchemy's classes, and the transaction is rolled back
    from sqlalchemy import exc

    from postroom.store.prepared import Prepared

    divide = Prepared("test_core_divide", "SELECT 1 / %(z)s")
    db = Database(database_url, pool_size=1, reactor=CallingReactor())
    db.start()
    try:
        def work(session):
            session.execute(text("SELECT 1"))  # carries the BEGIN
            return divide.execute(session.connection(), {"z": 0}).scalar_one()

        result = wait(db.run_core_then(work, lambda r: None))
        assert isinstance(result, Failure) and result.check(exc.DataError)
        assert db.run_core_sync(lambda s: (s.execute(text("SELECT 1")),
                                           divide.execute(s.connection(), {"z": 1}).one())[1]) \
            == (1,)
    finally:
        db.stop()


def test_run_core_then_retries_a_connection_killed_between_its_statements(database_url,
                                                                          clean_db):
    from postroom.store.prepared import Prepared

    one = Prepared("test_core_one", "SELECT %(v)s::int")
    db = Database(database_url, pool_size=1, reactor=CallingReactor())
    db.start()
    calls = []
    try:
        def work(session):
            calls.append(1)
            pid = _backend_pid(session)
            if len(calls) == 1:
                terminate_backend(database_url, pid)
            return pid, one.execute(session.connection(), {"v": 7}).scalar_one()

        (_pid, seven), _ = wait(db.run_core_then(work, lambda r: None))
        assert seven == 7 and len(calls) == 2
    finally:
        db.stop()


def test_run_core_then_rolls_back_when_its_first_statement_fails(database_url, clean_db):
    # "BEGIN; <statement>" in one message: the BEGIN ran, the statement failed, the
    # transaction is aborted on the server while psycopg2 (autocommit) knows of none
    db = Database(database_url, pool_size=1, reactor=CallingReactor())
    db.start()
    try:
        failed = wait(db.run_core_then(lambda s: s.execute(text("SELECT 1/0")), lambda r: None))
        assert isinstance(failed, Failure)
        assert db.run_core_sync(lambda s: s.execute(text("SELECT 2")).scalar()) == 2
        assert db.run_read_sync(lambda s: s.execute(
            text("SELECT txid_current_if_assigned()")).scalar()) is None
    finally:
        db.stop()


def test_run_core_then_first_statement_a_prepared_one_on_the_driver_cursor(database_url,
                                                                          clean_db):
    # issue 23, round 5: a Prepared that is the transaction's first statement sends its
    # BEGIN in front on the driver's cursor too: one transaction, SQLAlchemy's error
    # classes, a rollback after a failure, and a connection found dead retried once
    from sqlalchemy import exc

    from postroom.store.prepared import Prepared

    current = Prepared("test_core_first_txid", "SELECT txid_current() + %(z)s")
    divide = Prepared("test_core_first_divide", "SELECT 1 / %(z)s")
    db = Database(database_url, pool_size=1, reactor=CallingReactor())
    db.start()
    try:
        def work(session):
            first = current.execute(session.connection(), {"z": 0}).scalar()
            return first, session.execute(text("SELECT txid_current_if_assigned()")).scalar()

        for _ in range(2):  # PREPARE alone the first time, then EXECUTE only
            (first, last), _ = wait(db.run_core_then(work, lambda r: None))
            assert first == last is not None
        failed = wait(db.run_core_then(
            lambda s: divide.execute(s.connection(), {"z": 0}).scalar(), lambda r: None))
        assert isinstance(failed, Failure) and failed.check(exc.DataError)
        assert db.run_read_sync(lambda s: s.execute(
            text("SELECT txid_current_if_assigned()")).scalar()) is None
        pid = db.run_read_sync(lambda s: s.execute(text("SELECT pg_backend_pid()")).scalar())
        terminate_backend(database_url, pid)
        (again, _), _ = wait(db.run_core_then(work, lambda r: None))
        assert again is not None
    finally:
        db.stop()
