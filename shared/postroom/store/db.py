"""The Database: a bounded SQLAlchemy engine and the `db` thread pool that runs store work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from postroom.logs import get_logger

P = ParamSpec("P")
T = TypeVar("T")

log = get_logger("store")


class Database:
    """An engine of ``pool_size`` connections and a thread pool of the same size.

    The thread pool never has more threads than the engine has connections, so a
    thread never waits for a connection, and the reactor never blocks on SQL.
    """

    def __init__(self, url: str, pool_size: int = 5, *, reactor: Any = None) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.pool_size = pool_size
        self.engine: Engine = create_engine(
            url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True,
            # a connection older than this is replaced: survives server-side idle timeouts
            pool_recycle=1800)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._threadpool = ThreadPool(minthreads=0, maxthreads=pool_size, name="db")
        self._reactor = reactor
        self._shutdown_trigger: Any = None

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
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
        with self._sessions() as session, session.begin():
            result = fn(session, *args, **kwargs)
        _check_plain(result)
        return result

    def run(self, fn: Callable[Concatenate[Session, P], T],
            *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """Run ``fn(session, *args, **kwargs)`` in one transaction on the `db` pool.

        Commits when ``fn`` returns, rolls back when it raises (the Deferred then
        fails with that exception). ``fn`` must return plain data, not ORM objects.
        """
        if not self._threadpool.started:
            raise RuntimeError("Database.run before Database.start")
        return deferToThreadPool(self.reactor, self._threadpool,
                                 lambda: self._transaction(fn, *args, **kwargs))

    def run_sync(self, fn: Callable[Concatenate[Session, P], T],
                 *args: P.args, **kwargs: P.kwargs) -> T:
        """Like :meth:`run`, in the calling thread (CLI and tests; never on the reactor)."""
        return self._transaction(fn, *args, **kwargs)

    def ping(self) -> Deferred[bool]:
        """True when a connection answers ``SELECT 1``; False (logged) when it does not."""
        def probe(session: Session) -> bool:
            return session.execute(text("SELECT 1")).scalar() == 1

        def failed(failure: Any) -> bool:
            log.warning("database ping failed", error=failure.getErrorMessage())
            return False

        try:
            d = self.run(probe)
        except RuntimeError as exc:
            log.warning("database ping failed", error=str(exc))
            return _succeed(False)
        return d.addErrback(failed)


def _succeed(value: bool) -> Deferred[bool]:
    d: Deferred[bool] = Deferred()
    d.callback(value)
    return d


def _check_plain(result: Any) -> None:
    """Refuse ORM objects crossing to the reactor: their lazy loads would run SQL there."""
    items = result if isinstance(result, (list, tuple)) else (result,)
    for item in items:
        if isinstance(item, DeclarativeBase):
            raise TypeError(f"store functions must return plain data, not {type(item).__name__}")
