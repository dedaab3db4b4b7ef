"""The content checks of one ``/v1/check``: every configured check, run together, never raising.

:class:`ContentChecks` is the one framework the API runs once the DMARC
verdict is known (a message DMARC already rejects is not scanned). Its
entries are asynchronous: the scanners (clamd, rspamd) are network clients on
the reactor; a blocking check such as the attachment policy becomes an entry
through :class:`PooledCheck`, which answers on the reactor when the check can
(``inline``: a message with no attachment) and otherwise runs it in the
`policy` thread pool by a deadline. When every entry answers at once the
whole verdict is still given on the reactor, in the same call.

All checks start together; rspamd is given our SPF/DKIM/DMARC results so it
does not redo them. An entry that fails or cannot be reached gives
``tempfail`` (451 4.7.0): configured scanning never lets unscanned mail
through. Each result is counted (``postroom_content_results_total``, with the
time it took); :func:`postroom_dmarc.verdict.with_content` folds them into
the verdict, which the API logs once (``content verdict``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, defer_to_pool, twisted_clock
from postroom.logs import get_logger
from postroom.metrics import Metrics
from postroom_dmarc.content import ContentCheck, ContentResult
from postroom_dmarc.content.clamd import ClamdCheck
from postroom_dmarc.content.rspamd import RspamdClient, ScanRequest
from postroom_dmarc.verdict import CheckRequest, Verdict

log = get_logger("dmarc-content")

# an entry: a request in, its result now or a Deferred of it
Entry = Callable[[CheckRequest], "defer.Deferred[ContentResult] | ContentResult"]


def scan_request(check: CheckRequest, verdict: Verdict) -> ScanRequest:
    """What rspamd is told: the envelope and our SPF/DKIM/DMARC results."""
    dmarc: str | None = verdict.dmarc.result
    if dmarc == "fail" and verdict.dmarc.applied_policy in ("reject", "quarantine"):
        dmarc = verdict.dmarc.applied_policy
    return ScanRequest(message=check.message, queue_id=check.queue_id,
                       client_ip=check.client_ip, helo=check.helo, mail_from=check.mail_from,
                       recipients=check.recipients, spf=verdict.spf.result,
                       dkim=[(d.result, d.domain) for d in verdict.dkim], dmarc=dmarc)


class PooledCheck:
    """A blocking :class:`ContentCheck` as an entry: inline when it can, else in the pool.

    At most ``max_inflight`` runs are queued on the pool at once; each stops at
    ``deadline`` seconds, and one that has not answered by then is a tempfail.
    """

    def __init__(self, check: ContentCheck, pool: ThreadPool, reactor: ReactorThreads, *,
                 deadline: float, max_inflight: int = 64) -> None:
        self.check = check
        self.name = check.name
        self.pool = pool
        self.reactor = reactor
        self.deadline = deadline
        self.semaphore = defer.DeferredSemaphore(max_inflight)

    def __call__(self, request: CheckRequest) -> defer.Deferred[ContentResult] | ContentResult:
        try:
            result = self.check.inline(request)
        except Exception:  # noqa: BLE001 - the pool runs it again and reports its failure
            result = None
        if result is not None:
            return result
        return defer.Deferred.fromCoroutine(self._pooled(request))

    async def _pooled(self, request: CheckRequest) -> ContentResult:
        await self.semaphore.acquire()
        try:
            deadline = time.monotonic() + self.deadline
            work = defer_to_pool(self.reactor, self.pool, self.check.run, request, deadline)
            # the check stops at its deadline itself; a little grace, then give up on it
            work.addTimeout(self.deadline + 1.0, twisted_clock(self.reactor))
            return await work
        finally:
            self.semaphore.release()


class ContentChecks:
    """The configured content checks (each optional) for the dmarc API."""

    def __init__(self, *, rspamd: RspamdClient | None = None, clamd: ClamdCheck | None = None,
                 extra: Sequence[Entry] = (), metrics: Metrics | None = None) -> None:
        self.rspamd = rspamd
        self.clamd = clamd
        self.extra = list(extra)  # in-process checks (PooledCheck(AttachmentCheck)), run first
        self._results: Any = None
        self._seconds: Any = None
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        if metrics is not None:
            self._results = metrics.counter(
                "content_results",
                "Content check results by check (attachments, clamd, rspamd), action and "
                "reason category (a small fixed set per check, docs/content-filtering.md).",
                ["check", "action", "category"])
            self._seconds = metrics.histogram(
                "content_check_seconds", "Time one content check took for one message.",
                ["check"])

    @property
    def configured(self) -> bool:
        return self.rspamd is not None or self.clamd is not None or bool(self.extra)

    def _entries(self, check: CheckRequest, verdict: Verdict) -> list[tuple[str, Entry]]:
        entries: list[tuple[str, Entry]] = [
            (str(getattr(e, "name", getattr(e, "__name__", "content"))), e) for e in self.extra]
        clamd, rspamd = self.clamd, self.rspamd
        if clamd is not None:
            entries.append(("clamd", lambda c: defer.Deferred.fromCoroutine(
                clamd.check(c.message, queue_id=c.queue_id))))
        if rspamd is not None:
            scan = scan_request(check, verdict)
            entries.append(("rspamd", lambda _c: defer.Deferred.fromCoroutine(
                rspamd.check(scan))))
        return entries

    async def run(self, check: CheckRequest, verdict: Verdict) -> list[ContentResult]:
        """Every check's result for ``check`` (DMARC's ``verdict`` known), in order; never raises.

        Entries that answer at once never leave the calling thread (the reactor).
        """
        started = time.monotonic()
        pending: list[tuple[str, defer.Deferred[ContentResult] | ContentResult]] = []
        for name, entry in self._entries(check, verdict):
            try:
                answer = entry(check)
            except Exception as exc:  # noqa: BLE001 - a failed check is a 451, never a pass
                answer = self._failed(Failure(exc), name, check)
            if isinstance(answer, defer.Deferred):
                answer.addErrback(self._failed, name, check)
                answer.addCallback(self._timed, started)
            else:
                self._timed(answer, started)
            pending.append((name, answer))
        return [a if isinstance(a, ContentResult) else await a for _, a in pending]

    def _timed(self, result: ContentResult, started: float) -> ContentResult:
        if self._results is not None:
            # the labelled children once per label set (small fixed sets per check,
            # docs/content-filtering.md): labels() locks and hashes on every message
            key = (result.check, result.action, result.category)
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    self._results.labels(check=result.check, action=result.action,
                                         category=result.category),
                    self._seconds.labels(check=result.check))
            children[0].inc()
            children[1].observe(time.monotonic() - started)
        return result

    def _failed(self, failure: Failure, name: str, check: CheckRequest) -> ContentResult:
        timed_out = failure.check(defer.TimeoutError, defer.CancelledError) is not None
        error_type = type(failure.value).__name__
        error = "no answer in time" if timed_out else (failure.getErrorMessage() or error_type)
        log.error("content check failed", queue_id=check.queue_id, check=name, error=error,
                  error_type=error_type)
        return ContentResult(name, "tempfail", f"{name} check failed",
                             details={"category": "error"})

    async def close(self) -> None:
        if self.rspamd is not None:
            await self.rspamd.close()
