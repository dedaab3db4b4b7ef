"""The Database: a bounded SQLAlchemy engine and the `db` thread pool that runs store work.

Stale connections (PostgreSQL restarted, an idle timeout on the way) are found
two ways, see docs/decisions/0005:

* a connection idle for more than PING_AFTER_IDLE seconds is pinged when it is
  checked out (``SELECT 1``; a dead one is replaced before use). This is
  SQLAlchemy's ``pool_pre_ping`` for idle connections only: under load the
  connections are busy and the ping, a round trip per transaction, is skipped;
* a transaction whose connection turns out dead before COMMIT was sent is run
  once more on a fresh connection (nothing of it was committed, so this is
  safe). A failure during COMMIT itself is never retried: its outcome is
  unknown, and the caller's own error handling (a 451, a queue entry claimed
  again) decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from psycopg2 import Error as DriverError
from psycopg2.extensions import STATUS_READY, TRANSACTION_STATUS_IDLE
from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom.config import ConfigError, normalise_database_url
from postroom.interfaces import ReactorEvents, defer_to_pool, global_reactor
from postroom.logs import get_logger
from postroom.mime.fulltext import DEFAULT_MAX_BYTES
from postroom.store.prepared import CORE_TX_KEY, driver_error

P = ParamSpec("P")
T = TypeVar("T")
U = TypeVar("U")

log = get_logger("store")

# What services see of SQLAlchemy (they import neither it nor the models: pyproject.toml's
# import-linter contract): the session their store work receives from Database.run, and
# the base of every error the database or a statement raises.
StoreSession = Session
DatabaseError = exc.SQLAlchemyError

# a pooled connection idle longer than this is pinged before use (seconds)
PING_AFTER_IDLE = 2.0


def make_engine(url: str, *, fts_config: str = "simple", **options: Any) -> Engine:
    """The one way Postroom makes an SQLAlchemy engine (services, CLI, migrations, `up`).

    ``url`` in any form POSTROOM_DATABASE_URL accepts (``postgresql://``,
    ``postgres://``, ``postgresql+psycopg2://``); a bad URL or a driver that
    cannot be loaded is a one-line ConfigError naming the variable, never an
    ImportError with a traceback. Every connection's ``default_text_search_config``
    is ``fts_config`` (POSTROOM_FTS_CONFIG): the full-text index's writers and
    searches use that one (postroom.store.fts), never the server's own default.
    """
    try:
        normalised = normalise_database_url(url)
    except ValueError as exc:
        raise ConfigError(f"POSTROOM_DATABASE_URL: {exc}") from None
    connect_args = dict(options.pop("connect_args", {}))
    if normalised.startswith("postgresql") and "options" not in connect_args:
        # a validated name (postroom.config): letters, digits, _ and one dot
        connect_args["options"] = f"-c default_text_search_config={fts_config}"
    if connect_args:
        options["connect_args"] = connect_args
    try:
        return create_engine(normalised, **options)
    except (ImportError, NoSuchModuleError) as exc:
        raise ConfigError(f"POSTROOM_DATABASE_URL: cannot load the database driver: {exc} "
                          "(reinstall Postroom with its dependencies)") from None


class Database:
    """An engine of ``pool_size`` connections and a thread pool of the same size.

    The thread pool never has more threads than the engine has connections, so a
    thread never waits for a connection, and the reactor never blocks on SQL.
    """

    def __init__(self, url: str, pool_size: int = 5, *,
                 reactor: ReactorEvents | None = None, fts_config: str = "simple",
                 fts_max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.pool_size = pool_size
        #: the decoded text indexed per message (POSTROOM_FTS_MAX_BYTES; postroom.store.fts)
        self.fts_max_bytes = fts_max_bytes
        self.engine: Engine = make_engine(
            url, fts_config=fts_config, pool_size=pool_size, max_overflow=0,
            # a connection older than this is replaced: survives server-side idle timeouts
            pool_recycle=1800)
        _ping_when_idle(self.engine, PING_AFTER_IDLE)
        _begin_with_first_statement(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._threadpool = ThreadPool(minthreads=0, maxthreads=pool_size, name="db")
        self._reactor = reactor
        self._shutdown_trigger: Any = None

    @property
    def reactor(self) -> ReactorEvents:
        if self._reactor is None:
            self._reactor = global_reactor()
        return self._reactor

    @property
    def url(self) -> str:
        """The URL with any password hidden (for logs)."""
        return self.engine.url.render_as_string(hide_password=True)

    def start(self) -> None:
        """Start the `db` thread pool; it stops by itself when the reactor shuts down."""
        if self._threadpool.started:
            return
        self._threadpool.start()
        self._shutdown_trigger = self.reactor.addSystemEventTrigger(
            "during", "shutdown", self.stop)
        log.info("database pool started", pool_size=self.pool_size, url=self.url)

    def stop(self) -> None:
        """Stop the thread pool (waiting for running work) and close every connection."""
        if self._shutdown_trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except (ValueError, KeyError):
                pass  # already fired: we are being called by it
            self._shutdown_trigger = None
        if self._threadpool.started:
            self._threadpool.stop()
            log.info("database pool stopped")
        self.dispose()

    def dispose(self) -> None:
        """Close the engine's pooled connections."""
        self.engine.dispose()

    def _transaction(self, fn: Callable[Concatenate[Session, P], T],
                     *args: P.args, **kwargs: P.kwargs) -> T:
        return self._retried(self._attempt, fn, *args, **kwargs)

    @staticmethod
    def _retried(attempt: Callable[..., T], fn: Callable[Concatenate[Session, P], T],
                 *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return attempt(fn, *args, **kwargs)
        except _DeadBeforeCommit as dead:
            log.warning("database connection lost, transaction retried",
                        error=str(dead.__cause__)[:200])
            try:
                return attempt(fn, *args, **kwargs)
            except _DeadBeforeCommit as again:
                raise again.original from None

    def _attempt(self, fn: Callable[Concatenate[Session, P], T],
                 *args: P.args, **kwargs: P.kwargs) -> T:
        session = self._sessions()
        try:
            with session.begin():
                result = _before_commit(fn, session, *args, **kwargs)
        finally:
            session.close()
        _check_plain(result)
        return result

    def _attempt_autocommit(self, fn: Callable[Concatenate[Session, P], T],
                            *args: P.args, **kwargs: P.kwargs) -> T:
        with self.engine.connect() as connection:
            # psycopg2's own autocommit flag, set and cleared on the client: SQLAlchemy's
            # isolation_level="AUTOCOMMIT" does the same at checkout but, at checkin, resets
            # the level with a `SET default_transaction_isolation TO DEFAULT` round trip,
            # one more than the read itself (issue 23: seen on the wire, bench/imap_wire.py)
            _enter_autocommit(connection)
            try:
                # no ORM Session: the reads use its execute() and connection() only
                result = _before_commit(fn, cast(Session, _Reads(connection)), *args, **kwargs)
            finally:
                _leave_autocommit(connection)
        _check_plain(result)
        return result

    def _attempt_core(self, fn: Callable[Concatenate[Session, P], T],
                      *args: P.args, **kwargs: P.kwargs) -> T:
        # one transaction on a pooled Connection (BEGIN ... COMMIT), without an ORM Session;
        # psycopg2 in autocommit, BEGIN sent in the same message as the first statement
        # (_begin_with_first_statement) and COMMIT by hand: one round trip fewer (decision 0036)
        with self.engine.connect() as connection:
            fairy = connection.connection
            _enter_autocommit(connection)
            fairy.info[CORE_TX_KEY] = "begin"
            try:
                result = _before_commit(fn, cast(Session, _Reads(connection)), *args, **kwargs)
                if fairy.info[CORE_TX_KEY] == "open":
                    _commit(connection)
            finally:
                fairy.info.pop(CORE_TX_KEY, None)
                _leave_autocommit(connection)
        _check_plain(result)
        return result

    def run_read(self, fn: Callable[Concatenate[Session, P], T],
                 *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """:meth:`run` for reads that need no transaction: each statement commits by itself.

        ``fn`` receives a stand-in for the Session with its ``execute`` and
        ``connection`` only (Core statements and :class:`~postroom.store.prepared.Prepared`
        ones on the pooled connection): no ORM Session is made and closed per call, which
        was a tenth of a one-statement read's CPU in the imap process (issue 23). A
        function that needs the ORM (``get``, ``scalars`` of entities, ``add``) runs
        with :meth:`run`.

        psycopg2 then sends neither BEGIN nor COMMIT: two round trips fewer for
        a read of one statement (IMAP's FETCH, SELECT, SEARCH), and, since its
        autocommit flag is set and cleared on the client (decision 0034), no
        isolation reset at checkin either: a read is its statements, nothing
        more, on the wire. Only for work
        that holds no lock across statements and needs no common snapshot
        (READ COMMITTED gives each statement its own anyway); a statement that
        writes commits on its own. A connection found dead is retried once, as
        :meth:`run` does: so ``fn`` must be safe to run again after some of its
        statements committed (a read is; IMAP's SELECT may move the recent
        mark, and a retry after a commit whose reply was lost only leaves those
        messages \\Recent in no session, never in two).
        """
        if not self._threadpool.started:
            raise RuntimeError("Database.run_read before Database.start")
        return defer_to_pool(self.reactor, self._threadpool, lambda: self._retried(
            self._attempt_autocommit, fn, *args, **kwargs))

    def run_read_sync(self, fn: Callable[Concatenate[Session, P], T],
                      *args: P.args, **kwargs: P.kwargs) -> T:
        """Like :meth:`run_read`, in the calling thread (CLI and tests; never on the reactor)."""
        return self._retried(self._attempt_autocommit, fn, *args, **kwargs)

    def run(self, fn: Callable[Concatenate[Session, P], T],
            *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """Run ``fn(session, *args, **kwargs)`` in one transaction on the `db` pool.

        Commits when ``fn`` returns, rolls back when it raises (the Deferred then
        fails with that exception). ``fn`` must return plain data, not ORM objects.
        """
        if not self._threadpool.started:
            raise RuntimeError("Database.run before Database.start")
        return defer_to_pool(self.reactor, self._threadpool,
                             lambda: self._transaction(fn, *args, **kwargs))

    def run_then(self, fn: Callable[Concatenate[Session, P], T], then: Callable[[T], U],
                 *args: P.args, **kwargs: P.kwargs) -> Deferred[tuple[T, U | Exception]]:
        """:meth:`run`, then ``then(result)`` in the same pool thread once committed.

        For a blocking call that must follow the COMMIT (a front door's XADD): one
        thread hop instead of two. The Deferred fails only as :meth:`run` would;
        an exception of ``then`` is returned in place of its result, because the
        transaction has committed whatever ``then`` does.
        """
        if not self._threadpool.started:
            raise RuntimeError("Database.run_then before Database.start")

        def work() -> tuple[T, U | Exception]:
            result = self._transaction(fn, *args, **kwargs)
            try:
                return result, then(result)
            except Exception as error:  # noqa: BLE001 - committed: the caller decides
                return result, error

        return defer_to_pool(self.reactor, self._threadpool, work)

    def run_core_then(self, fn: Callable[Concatenate[Session, P], T], then: Callable[[T], U],
                      *args: P.args, **kwargs: P.kwargs) -> Deferred[tuple[T, U | Exception]]:
        """:meth:`run_then` for a transaction that needs no ORM Session.

        ``fn`` receives the same stand-in as :meth:`run_read` (``execute`` and
        ``connection`` only) on a pooled Connection inside BEGIN ... COMMIT: the
        same transaction, locks and retry of a connection found dead before
        COMMIT as :meth:`run`, without making and closing a Session per call
        (IMAP's STORE, issue 23).
        """
        if not self._threadpool.started:
            raise RuntimeError("Database.run_core_then before Database.start")

        def work() -> tuple[T, U | Exception]:
            result = self._retried(self._attempt_core, fn, *args, **kwargs)
            try:
                return result, then(result)
            except Exception as error:  # noqa: BLE001 - committed: the caller decides
                return result, error

        return defer_to_pool(self.reactor, self._threadpool, work)

    def run_core_sync(self, fn: Callable[Concatenate[Session, P], T],
                      *args: P.args, **kwargs: P.kwargs) -> T:
        """:meth:`run_core_then`'s transaction in the calling thread (tests; never on the
        reactor)."""
        return self._retried(self._attempt_core, fn, *args, **kwargs)

    def in_pool(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """``fn(*args, **kwargs)`` on the `db` pool, outside any transaction: for store code
        that runs its own transactions there with :meth:`run_sync` (a group commit and the
        retries of its members, postroom.store.groupcommit), one thread hop for all."""
        if not self._threadpool.started:
            raise RuntimeError("Database.in_pool before Database.start")
        return defer_to_pool(self.reactor, self._threadpool, fn, *args, **kwargs)

    def run_sync(self, fn: Callable[Concatenate[Session, P], T],
                 *args: P.args, **kwargs: P.kwargs) -> T:
        """Like :meth:`run`, in the calling thread (CLI and tests; never on the reactor)."""
        return self._transaction(fn, *args, **kwargs)

    def ping(self) -> Deferred[bool]:
        """True when a connection answers ``SELECT 1``; False (logged) when it does not."""
        def probe(session: Session) -> bool:
            return session.execute(text("SELECT 1")).scalar() == 1

        def failed(failure: Failure) -> bool:
            log.warning("database ping failed", error=failure.getErrorMessage())
            return False

        try:
            d = self.run(probe)
        except RuntimeError as exc:
            log.warning("database ping failed", error=str(exc))
            return succeed(False)
        return d.addErrback(failed)


class _Reads:
    """What :meth:`Database.run_read` hands its function in place of a Session: the
    Session's ``execute`` and ``connection`` on one autocommit connection, nothing else
    (an ORM use fails loudly with AttributeError rather than half-working)."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def connection(self) -> Connection:
        return self._connection

    def execute(self, statement: Any, params: Any = None) -> Any:
        return self._connection.execute(statement, params)


class _DeadBeforeCommit(Exception):
    """The connection died while ``fn`` ran: nothing was committed, the work may run again."""

    def __init__(self, original: exc.DBAPIError) -> None:
        super().__init__(str(original))
        self.original = original


def _before_commit(fn: Callable[Concatenate[Session, P], T], session: Session,
                   *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(session, ...)`` with a dead connection told apart: a DBAPIError that
    invalidated the connection while ``fn`` ran (before COMMIT was sent) becomes
    :class:`_DeadBeforeCommit`, which :meth:`Database._retried` runs once more. Called
    inside the transaction, so a failure during COMMIT itself is never translated."""
    try:
        return fn(session, *args, **kwargs)
    except exc.DBAPIError as error:
        if error.connection_invalidated:
            raise _DeadBeforeCommit(error) from error
        raise


def _commit(connection: Connection) -> None:
    """COMMIT a transaction that ``_attempt_core`` began by hand, on the driver's cursor (the
    statement through SQLAlchemy costs more Python than the round trip); a driver error
    becomes SQLAlchemy's, the connection invalidated when it is a disconnect, as
    ``Connection.commit`` would do. Never retried: the COMMIT may have been applied."""
    dbapi: Any = connection.connection.dbapi_connection
    try:
        _send(dbapi, "COMMIT")
    except DriverError as error:
        raise driver_error(connection, "COMMIT", None, error) from error


def _begin_with_first_statement(engine: Engine) -> None:
    """Send ``_attempt_core``'s BEGIN in the message of its first statement (``BEGIN;`` in
    front of it: PostgreSQL runs both, psycopg2 returns the statement's result), so a
    transaction costs no round trip of its own. A PREPARE goes alone, before it: it is
    not transactional."""

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def before(conn: Connection, cursor: Any, statement: str, parameters: Any,
               context: Any, executemany: bool) -> tuple[str, Any]:
        info = conn.connection.info
        if info.get(CORE_TX_KEY) == "begin" and not statement.startswith("PREPARE "):
            info[CORE_TX_KEY] = "open"
            return "BEGIN; " + statement, parameters
        return statement, parameters


def _enter_autocommit(connection: Connection) -> None:
    """psycopg2's autocommit flag on ``connection``'s driver connection (set on the client,
    nothing sent), as :meth:`Database._attempt_autocommit` and ``_attempt_core`` start;
    :func:`_leave_autocommit` clears it."""
    dbapi = connection.connection.dbapi_connection
    assert dbapi is not None
    if dbapi.status != STATUS_READY:
        dbapi.rollback()  # a transaction some hook left open: never the case today
    dbapi.autocommit = True


def _send(dbapi: Any, statement: str) -> None:
    """One statement without parameters on the driver's own cursor (no SQLAlchemy around
    it): the hand-made COMMIT and ROLLBACK, and the idle ping."""
    cursor = dbapi.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


def _leave_autocommit(connection: Connection) -> None:
    """Back to psycopg2's transactions before ``connection`` returns to the pool (no round
    trip when no transaction is open: a ROLLBACK when ``_attempt_core``'s is, after an
    error). A connection that cannot be put back (closed under us) is invalidated, so none
    goes back to the pool in autocommit or inside a transaction."""
    if connection.invalidated:
        return
    dbapi = connection.connection.dbapi_connection
    if dbapi is not None:
        try:
            if dbapi.info.transaction_status != TRANSACTION_STATUS_IDLE:
                # psycopg2 does not know of a transaction begun in autocommit: its
                # rollback() at checkin would send nothing
                _send(dbapi, "ROLLBACK")
            dbapi.autocommit = False
            return
        except Exception as error:  # noqa: BLE001 - closed or broken: never reuse it
            log.warning("database connection dropped", error=str(error)[:200])
    connection.invalidate()


def _ping_when_idle(engine: Engine, idle: float) -> None:
    """``pool_pre_ping`` for connections idle more than ``idle`` seconds only."""

    @event.listens_for(engine, "checkin")
    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle:
            return
        try:
            # in autocommit (set and cleared on the client), so the ping leaves no
            # transaction open for the caller: run_read's autocommit could not be set then
            dbapi_connection.autocommit = True
            try:
                _send(dbapi_connection, "SELECT 1")
            finally:
                dbapi_connection.autocommit = False
        except Exception as error:
            # the pool discards this connection and checks out (or opens) another
            raise exc.DisconnectionError(f"stale pooled connection: {error}") from error


def _check_plain(result: Any) -> None:
    """Refuse ORM objects crossing to the reactor: their lazy loads would run SQL there."""
    items = result if isinstance(result, (list, tuple)) else (result,)
    # by type, in C: a FETCH of 100,000 flags returns 10,000-row lists to check
    for kind in set(map(type, items)):
        if issubclass(kind, DeclarativeBase):
            raise TypeError(f"store functions must return plain data, not {kind.__name__}")


# --- how a service tells the database's errors apart (it imports no SQLAlchemy)

# PostgreSQL unreachable or the connection lost: a temporary condition, not a bug
UNAVAILABLE: tuple[type[Exception], ...] = (exc.OperationalError, exc.InterfaceError,
                                            exc.DisconnectionError)
# PostgreSQL refused a value (e.g. jsonb that holds what it cannot store)
DataError = exc.DataError
# SQLSTATEs worth an immediate retry: serialization failure, deadlock
_RETRYABLE = ("40001", "40P01")


def retryable(error: BaseException) -> bool:
    """Whether ``error`` is a serialization failure or deadlock: run the transaction again."""
    return isinstance(error, exc.DBAPIError) and getattr(error.orig, "pgcode", None) in _RETRYABLE


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` invalidated its connection (the database went away)."""
    return isinstance(error, exc.DBAPIError) and bool(error.connection_invalidated)


def driver_message(error: BaseException) -> str:
    """The driver's own text of a database error (without SQLAlchemy's statement dump)."""
    orig = getattr(error, "orig", None)
    return str(orig if orig is not None else error).strip()
