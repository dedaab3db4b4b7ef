"""Group commit: the spool rows of messages that finish DATA together, in one transaction.

Leader/follower batching (docs/decisions/0018): when no commit is in flight, a
message is committed at once, alone (no added latency when idle); messages that
arrive while a commit is in flight wait for it and then go together, in one
transaction (one COMMIT, one WAL flush), up to ``max_messages`` and
``max_bytes``. Each caller's Deferred fires only after the commit that holds
its own rows succeeded. A batch that fails for another reason than an
unreachable database (a constraint, a value PostgreSQL refuses) is not the
members' common fate: each member is then committed alone, and only the bad
one fails. The database unreachable, or the COMMIT's outcome unknown, fails
every member (the front door answers 451; nothing is retried whose commit
may have happened). After the commit, ``after`` runs once for the committed
members in the same pool thread (the front doors' XADDs, pipelined).

Used by both front doors (mta inbound, msa) and by the mda for the fast path of
its deliveries (docs/decisions/0022: ``batch`` does a group's work, ``kind``
names its metrics); ``max_messages`` 1 turns it off: each message in its own
transaction, as many at once as the `db` pool runs.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from postroom.logs import get_logger
from postroom.metrics import Metrics
from postroom.store.db import UNAVAILABLE, Database, StoreSession, connection_lost, driver_message

K = TypeVar("K")
T = TypeVar("T")
U = TypeVar("U")

log = get_logger("store")

# messages per group commit, for the histogram
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class _Member(Generic[K, T, U]):
    tag: K
    size: int
    kwargs: dict[str, Any]
    deferred: Deferred[tuple[T, U | Exception]] = field(default_factory=Deferred)

    @property
    def queue_id(self) -> str | None:
        value = self.kwargs.get("queue_id")
        return value if isinstance(value, str) else None


@dataclass
class _Outcome(Generic[T, U]):
    """One member's end: its result and what ``after`` made of it, or its error."""

    result: T | None = None
    published: U | Exception | None = None
    error: BaseException | None = None


def _each(work: Callable[..., T]) -> Callable[[StoreSession, Sequence[dict[str, Any]]], list[T]]:
    def run_all(session: StoreSession, members: Sequence[dict[str, Any]]) -> list[T]:
        return [work(session, **kwargs) for kwargs in members]
    return run_all


def _checked(session: StoreSession,
             batch: Callable[[StoreSession, Sequence[dict[str, Any]]], list[T]],
             members: Sequence[dict[str, Any]]) -> list[T]:
    results = batch(session, members)
    if len(results) != len(members):
        # inside the transaction: it rolls back rather than commit results nobody hears of
        raise ValueError(f"batch returned {len(results)} results for {len(members)} members")
    return results


def unavailable(error: BaseException) -> bool:
    """The database unreachable or the connection lost (a COMMIT's outcome unknown)."""
    return isinstance(error, UNAVAILABLE) or connection_lost(error)


class GroupCommit(Generic[K, T, U]):
    """``work(session, **kwargs)`` for each member, several members per transaction.

    ``after(committed)`` gets the ``(tag, result)`` of each committed member of a
    batch, in the pool thread right after the COMMIT, and returns one outcome per
    member (an exception in place of a value is that member's own); it must not
    raise (if it does, every member gets that exception as its outcome: the rows
    are committed whatever ``after`` does).

    ``batch(session, members)``, when given, does a whole group's work in its transaction
    (one result per member, in order) instead of ``work`` for each in turn; a member
    retried alone still runs ``work``. ``kind`` names the metrics (``<kind>_commits``).
    """

    def __init__(self, database: Database, work: Callable[..., T],
                 after: Callable[[Sequence[tuple[K, T]]], Sequence[U | Exception]], *,
                 max_messages: int = 64, max_bytes: int = 16 * 1024 * 1024,
                 metrics: Metrics | None = None, crash_file: str | None = None,
                 batch: Callable[[StoreSession, Sequence[dict[str, Any]]], list[T]] | None = None,
                 kind: str = "spool") -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be positive")
        self.database = database
        self.work = work
        self.after = after
        self.batch = batch
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        # fault injection (tests only, POSTROOM_FAULT_CRASH_AFTER_SPOOL_COMMIT)
        self.crash_file = crash_file
        self._waiting: deque[_Member[K, T, U]] = deque()
        self._busy = False
        self._sizes = self._commits = None
        if metrics is not None:
            self._sizes = metrics.histogram(
                f"{kind}_commit_messages", f"Messages whose {kind} rows one commit held.",
                buckets=SIZE_BUCKETS)
            self._commits = metrics.counter(
                f"{kind}_commits", f"{kind.capitalize()} group commits, by result.", ["result"])

    @property
    def enabled(self) -> bool:
        return self.max_messages > 1

    @property
    def waiting(self) -> int:
        """Members waiting for the commit in flight to finish."""
        return len(self._waiting)

    def submit(self, tag: K, nbytes: int, /,
               **kwargs: Any) -> Deferred[tuple[T, U | Exception]]:
        """Commit ``work(session, **kwargs)`` (``nbytes``: the message's size, for the batch's
        bound); fires with ``(result, after's outcome)`` once committed, or fails with the
        member's error (nothing of it committed, or the outcome of its COMMIT unknown
        when the database went away)."""
        member: _Member[K, T, U] = _Member(tag, nbytes, kwargs)
        if not self.enabled:
            self._launch([member], grouped=False)
        else:
            self._waiting.append(member)
            if not self._busy:
                self._next()
        return member.deferred

    # --- on the reactor

    def _next(self) -> None:
        if not self._waiting or len(self._waiting) < self._fault_hold():
            self._busy = False
            return
        batch = [self._waiting.popleft()]
        size = batch[0].size
        while (self._waiting and len(batch) < self.max_messages
               and size + self._waiting[0].size <= self.max_bytes):
            member = self._waiting.popleft()
            size += member.size
            batch.append(member)
        self._busy = True
        self._launch(batch, grouped=True)

    def _launch(self, batch: list[_Member[K, T, U]], *, grouped: bool) -> None:
        try:
            d = self.database.in_pool(self._commit, batch)
        except Exception:  # noqa: BLE001 - the pool is stopped: every member learns it
            d = Deferred()
            d.errback(Failure())
        d.addCallbacks(self._done, self._broken, callbackArgs=(batch, grouped),
                       errbackArgs=(batch, grouped))

    def _done(self, outcomes: list[_Outcome[T, U]], batch: list[_Member[K, T, U]],
              grouped: bool) -> None:
        if grouped:
            self._next()  # the next batch's SQL runs while these replies are written
        for member, outcome in zip(batch, outcomes, strict=True):
            if outcome.error is not None:
                member.deferred.errback(Failure(outcome.error))
            else:
                member.deferred.callback((outcome.result,  # type: ignore[arg-type]
                                          outcome.published))  # type: ignore[arg-type]

    def _broken(self, failure: Failure, batch: list[_Member[K, T, U]], grouped: bool) -> None:
        # not expected: _commit reports each member's error; this is a bug or a stopped pool
        log.error("spool group commit broken", error=failure.getErrorMessage(),
                  queue_ids=[m.queue_id for m in batch][:50])
        if grouped:
            self._next()
        for member in batch:
            member.deferred.errback(failure)

    # --- in a `db` pool thread

    def _commit(self, batch: list[_Member[K, T, U]]) -> list[_Outcome[T, U]]:
        outcomes: list[_Outcome[T, U]]
        try:
            results = self.database.run_sync(_checked, self.batch or _each(self.work),
                                             [m.kwargs for m in batch])
            outcomes = [_Outcome(result=r) for r in results]
            self._count(len(batch), "ok")
        except Exception as error:  # noqa: BLE001 - each member gets its own outcome below
            if len(batch) == 1 or unavailable(error):
                # nothing committed, or a COMMIT whose outcome is unknown: never run again
                self._count(len(batch), "failed")
                log.warning("spool commit failed", error=driver_message(error)[:300],
                            messages=len(batch), queue_ids=[m.queue_id for m in batch][:50])
                return [_Outcome(error=error) for _ in batch]
            # one bad message must not fail the others: each alone, in its own transaction
            self._count(len(batch), "split")
            log.warning("spool group commit failed; its messages committed one by one",
                        error=driver_message(error)[:300], messages=len(batch),
                        queue_ids=[m.queue_id for m in batch][:50])
            outcomes = [self._alone(member) for member in batch]
        self._fault_after_commit()
        committed = [(m, o) for m, o in zip(batch, outcomes, strict=True) if o.error is None]
        if committed:
            published: Sequence[U | Exception]
            try:
                published = self.after([(m.tag, o.result) for m, o in committed])  # type: ignore[misc]
                if len(published) != len(committed):
                    raise ValueError(f"after returned {len(published)} outcomes "
                                     f"for {len(committed)} members")
            except Exception as error:  # noqa: BLE001 - committed: each caller decides
                published = [error] * len(committed)
            for (_member, outcome), value in zip(committed, published, strict=True):
                outcome.published = value
        return outcomes

    def _alone(self, member: _Member[K, T, U]) -> _Outcome[T, U]:
        try:
            return _Outcome(result=self.database.run_sync(self.work, **member.kwargs))
        except Exception as error:  # noqa: BLE001 - this member's own failure
            log.warning("spool commit failed", error=driver_message(error)[:300],
                        queue_id=member.queue_id)
            return _Outcome(error=error)

    def _count(self, messages: int, result: str) -> None:
        if self._sizes is not None and self._commits is not None:
            self._sizes.observe(messages)
            self._commits.labels(result=result).inc()

    # --- fault injection (tests only): tests/e2e/test_group_commit_e2e.py

    def _fault_hold(self) -> int:
        """With the crash file holding a number N: batches wait until N messages are waiting,
        so the crash hits a commit of N messages whatever the timing (else 1: no wait)."""
        if not self.crash_file:
            return 1
        try:
            with open(self.crash_file) as file:
                return max(1, int(file.read().strip() or 1))
        except (OSError, ValueError):
            return 1

    def _fault_after_commit(self) -> None:
        """A crash between the COMMIT and the replies (and the XADDs), while the crash file
        exists: what must lose nothing."""
        if self.crash_file and os.path.exists(self.crash_file):
            log.warning("fault injected: crash after spool commit")
            os.kill(os.getpid(), signal.SIGKILL)
