"""The mda's wiring: a `deliver` queue entry in, recipients delivered in transactions, events out.

Group delivery (docs/decisions/0022): the recipients the fast path takes
(postroom_mda.delivery.deliver_group) are delivered several per transaction
when several are ready, across queue entries: leader/follower batching
(postroom.store.groupcommit), so an idle mda delivers at once, alone. Each
entry is still acknowledged only after the commits holding all of its
recipients; a group that fails for one recipient's reason is retried one by
one, and whatever the fast path leaves (or a failed member) is delivered
alone as below. The change events of a group go out from the `db` thread
right after its COMMIT, in one pipelined round trip.

Each recipient delivered alone has its own transaction on the `db` pool (which
also stores the blob's IMAP metadata when it is still missing: the first
recipient's transaction parses it, later ones find it there); only after commit
are change events published (``<prefix>mailbox:<id>``, for IMAP IDLE and POP3)
and follow-up entries put on their streams. The handler's Deferred fires when
every recipient is settled, and only then does the consumer acknowledge the
entry.

The change event of a stored copy is published from the `db` thread that ran
the transaction, right after its COMMIT (``Database.run_then``): one thread hop
per recipient instead of two, with the same content and the same "only after
commit" rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, global_reactor
from postroom.logs import Logger, get_logger
from postroom.metrics import Metrics, messages_total, sieve_runs_total
from postroom.queue import events
from postroom.queue.consumer import QueueEntry
from postroom.queue.reconciler import enqueue_after_commit
from postroom.queue.redisclient import RedisError
from postroom.queue.streams import QueueClient
from postroom.store import spool
from postroom.store.db import (
    Database,
    DataError,
    StoreSession,
    connection_lost,
    driver_message,
    retryable,
)
from postroom.store.groupcommit import GroupCommit
from postroom_mda.delivery import (
    DELIVERED,
    MISSING,
    Options,
    Outcome,
    deliver_group,
    deliver_recipient,
)

ATTEMPTS = 3


def change_event(outcome: Outcome) -> events.ChangeEvent:
    """The event published when a message has been added to a mailbox."""
    assert outcome.mailbox_id is not None
    return events.ChangeEvent(events.EXISTS, outcome.mailbox_id, "mda", modseq=outcome.modseq,
                              uid=outcome.uid)


def change_events(outcome: Outcome) -> list[events.ChangeEvent]:
    """The events of every copy a delivery stored (Sieve may file one message in several)."""
    found = [change_event(outcome)]
    found += [events.ChangeEvent(events.EXISTS, box, "mda", modseq=modseq, uid=uid)
              for box, uid, modseq in outcome.copies]
    return found


def _deliver_one(session: StoreSession, **kwargs: Any) -> Outcome | None:
    """A group member retried alone (its group failed): the fast path, in its own transaction."""
    return deliver_group(session, [kwargs])[0]


def _defer_after_error(session: StoreSession, recipient_id: int, error: str, options: Options,
                       now: datetime) -> None:
    _info, rcpt = spool.get_recipient(session, recipient_id)
    if rcpt.state != "pending":
        return
    delay = spool.next_backoff(rcpt.attempts + 1, options.retry_initial, options.retry_max)
    spool.mark_deferred(session, recipient_id, error,
                        datetime.fromtimestamp(now.timestamp() + delay, UTC))


class Deliverer:
    """Handles `deliver` entries; ``handle`` is the StreamConsumer's handler."""

    def __init__(self, database: Database, queue: QueueClient, options: Options, *,
                 pool: ThreadPool, reactor: ReactorThreads | None = None, log: Logger | None = None,
                 metrics: Metrics | None = None, group_max: int = 64) -> None:
        if reactor is None:
            reactor = global_reactor()
        self.database = database
        self.queue = queue
        self.options = options
        self.pool = pool
        self.reactor = reactor
        self.log = log or get_logger("mda")
        self.delivered = 0
        self._outcomes = messages_total(metrics) if metrics is not None else None
        self._sieve_runs = sieve_runs_total(metrics) if metrics is not None else None
        self._outcome_counters: dict[str, Any] = {}
        # group_max 1: every recipient alone, as many at once as the `db` pool runs
        self.group: GroupCommit[int, Outcome | None, None] = GroupCommit(
            database, _deliver_one, self._publish_group, max_messages=group_max,
            metrics=metrics, batch=deliver_group, kind="delivery")

    def handle(self, entry: QueueEntry) -> Deferred[None]:
        return Deferred.fromCoroutine(self._handle(entry))

    async def _handle(self, entry: QueueEntry) -> None:
        envelope = entry.envelope
        work = list(envelope.recipient_ids)
        while work:
            # every recipient known now at once (they may share a group delivery); an
            # alias's children in the next round
            started = self.reactor.seconds()
            outcomes = await self._deliver_all(work)
            work = []
            for outcome in outcomes:
                work.extend(outcome.children)
                if outcome.result == DELIVERED and outcome.mailbox_id is not None:
                    self.delivered += 1  # its change event went out with the commit
                for follow_up in outcome.envelopes:
                    # failures are logged there; the reconciler enqueues it after
                    # queue_claim_idle
                    await enqueue_after_commit(self.queue, self.pool, follow_up,
                                               reactor=self.reactor)
                self._log(outcome, envelope.queue_id, self.reactor.seconds() - started,
                          claimed=entry.claimed)

    async def _deliver_all(self, recipient_ids: list[int]) -> list[Outcome]:
        """Each recipient's outcome, once committed: through a group delivery when on, else
        (and for what the group's fast path leaves) alone, one after the other."""
        if not self.group.enabled:
            return [await self._deliver(rid) for rid in recipient_ids]
        now = datetime.now(UTC)
        results = await DeferredList(
            [self.group.submit(rid, 1, recipient_id=rid, options=self.options, now=now)
             for rid in recipient_ids], consumeErrors=True)
        outcomes = []
        for rid, (ok, value) in zip(recipient_ids, results, strict=True):
            # a failed member (the group logged why) or one the fast path does not take:
            # alone, with the retries and fallbacks of _deliver (delivery is idempotent)
            outcome = value[0] if ok else None
            outcomes.append(outcome if outcome is not None else await self._deliver(rid))
        return outcomes

    async def _deliver(self, recipient_id: int) -> Outcome:
        store_metadata = True
        for attempt in range(1, ATTEMPTS + 1):
            try:
                # the change event goes out from the same thread, once committed
                result: Outcome
                result, _ = await self.database.run_then(
                    deliver_recipient, self._publish, recipient_id, self.options,
                    datetime.now(UTC), store_metadata=store_metadata)
                return result
            except Exception as exc:
                if retryable(exc) and attempt < ATTEMPTS:
                    continue
                if isinstance(exc, DataError) and store_metadata and attempt < ATTEMPTS:
                    # PostgreSQL refused the metadata written with the copy: mail is never
                    # held back for its metadata, so deliver without (readers re-analyze)
                    self.log.warning("message metadata not stored", recipient_id=recipient_id,
                                     error=driver_message(exc))
                    store_metadata = False
                    continue
                if connection_lost(exc):
                    raise  # the database is away: leave the entry unacknowledged
                # a bug or a broken row: park this recipient with back-off rather than
                # let one message block the entry forever; the lifetime ends it
                self.log.exception("recipient delivery failed", exc, recipient_id=recipient_id)
                await self.database.run(_defer_after_error, recipient_id,
                                        "451 4.3.0 internal error at delivery", self.options,
                                        datetime.now(UTC))
                return Outcome(recipient_id, "deferred", error="internal error")
        raise AssertionError("unreachable")

    def _publish_group(self, committed: Sequence[tuple[int, Outcome | None]]) -> list[None]:
        """The change events of a committed group, in one round trip (in its `db` thread)."""
        found = [event for _rid, outcome in committed
                 if outcome is not None and outcome.result == DELIVERED
                 and outcome.mailbox_id is not None for event in change_events(outcome)]
        if found:
            try:
                events.publish_many(self.queue.redis, self.queue.prefix, found)
            except RedisError as exc:
                # committed; IDLE clients see the copies at their next poll instead
                self.log.warning("change events not published", count=len(found),
                                 error=str(exc))
            except Exception as exc:
                # never let it look like a failed delivery: the copies are committed
                self.log.exception("change events not published", exc, count=len(found))
        return [None] * len(committed)

    def _publish(self, outcome: Outcome) -> None:
        """The change event of a committed copy (in the `db` thread, after its commit)."""
        if outcome.result != DELIVERED or outcome.mailbox_id is None:
            return
        try:
            for event in change_events(outcome):
                events.publish(self.queue.redis, self.queue.prefix, event)
        except RedisError as exc:
            # the copy is committed; IDLE clients see it at their next poll instead
            self.log.warning("change event not published", queue_id=outcome.queue_id,
                             mailbox_id=outcome.mailbox_id, error=str(exc))
        except Exception as exc:
            # never let it look like a failed delivery: the copy is committed
            self.log.exception("change event not published", exc, queue_id=outcome.queue_id,
                               mailbox_id=outcome.mailbox_id)

    def _log(self, outcome: Outcome, queue_id: str, elapsed: float, *, claimed: bool) -> None:
        fields: dict[str, Any] = {
            "queue_id": outcome.queue_id or queue_id, "recipient": outcome.address,
            "recipient_id": outcome.recipient_id, "result": outcome.result,
            "user_id": outcome.user_id, "mailbox": outcome.mailbox, "uid": outcome.uid,
            "size": outcome.size, "error": outcome.error, "ms": round(elapsed * 1000, 1),
            "children": len(outcome.children) or None, "claimed": claimed or None,
            "copies": len(outcome.copies) + 1 if outcome.copies else None,
            "sieve": outcome.sieve,
        }
        if self._outcomes is not None:
            counter = self._outcome_counters.get(outcome.result)
            if counter is None:
                counter = self._outcome_counters[outcome.result] = self._outcomes.labels(
                    outcome=outcome.result)
            counter.inc()
        if self._sieve_runs is not None and outcome.sieve is not None:
            self._sieve_runs.labels(result=outcome.sieve).inc()
        if outcome.result == MISSING:
            # the spool row is gone (deleted by an operator): nothing to deliver
            self.log.warning("queue entry for unknown message", **fields)
        elif outcome.result in ("failed", "deferred"):
            self.log.warning("recipient not delivered", **fields)
        else:
            self.log.info("recipient done", **fields)
