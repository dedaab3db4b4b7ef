"""The content checks of one ``/v1/check``: run the configured scanners, fold them into the verdict.

The virus scan starts as soon as the request is read (it needs only the
message) and runs while SPF/DKIM/DMARC are evaluated; rspamd is asked once
their results are known, so it is given them instead of redoing them. A
message DMARC already rejects is not scanned further. The verdict JSON gets
``content`` (each check's result, for ``postroom trace``) and ``headers`` (to
add to the stored message), and its ``disposition`` becomes the strictest of
DMARC's and the content checks' (reject > tempfail > junk > inbox).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer

from postroom_dmarc.content import ContentResult, combine
from postroom_dmarc.content.clamd import ClamdCheck
from postroom_dmarc.content.rspamd import RspamdClient, ScanRequest
from postroom_dmarc.verdict import CheckRequest, Verdict

# content action -> verdict disposition, and the order in which dispositions win
DISPOSITION = {"accept": "inbox", "quarantine": "junk", "tempfail": "tempfail",
               "reject": "reject"}
_SEVERITY = {"inbox": 0, "junk": 1, "tempfail": 2, "reject": 3}

# another check of the same package (the attachment policy) plugs in as a callable
ExtraCheck = Callable[[CheckRequest], "defer.Deferred[ContentResult] | ContentResult"]


def scan_request(check: CheckRequest, body: dict[str, Any]) -> ScanRequest:
    """What rspamd is told: the envelope and our SPF/DKIM/DMARC results from the verdict."""
    spf = body.get("spf") or {}
    dkim = [(str(d.get("result", "")), str(d.get("domain", "")))
            for d in body.get("dkim") or [] if isinstance(d, dict)]
    dmarc = body.get("dmarc") or {}
    dmarc_result = dmarc.get("result")
    if dmarc_result == "fail":
        dmarc_result = dmarc.get("applied_policy") if dmarc.get("applied_policy") in (
            "reject", "quarantine") else "fail"
    return ScanRequest(message=check.message, queue_id=check.queue_id,
                       client_ip=check.client_ip, helo=check.helo, mail_from=check.mail_from,
                       recipients=check.recipients,
                       spf=spf.get("result") if isinstance(spf, dict) else None,
                       dkim=dkim, dmarc=dmarc_result if isinstance(dmarc_result, str) else None)


def merge(body: dict[str, Any], results: Sequence[ContentResult]) -> dict[str, Any]:
    """``body`` with ``content``, ``headers`` and the strictest disposition and its reason."""
    body = dict(body)
    body["content"] = [r.to_json() for r in results]
    combined = combine(results)
    body["headers"] = [[name, value] for name, value in combined.headers]
    ours = DISPOSITION[combined.action]
    theirs = body.get("disposition") or "inbox"
    if _SEVERITY[ours] > _SEVERITY.get(theirs, 0):
        body["disposition"] = ours
        body["reason"] = combined.reason
        body["decided_by"] = combined.check
    return body


def _call(extra: ExtraCheck, check: CheckRequest) -> Any:
    return extra(check)


class ContentChecks:
    """The configured scanners (each optional) for the dmarc API."""

    def __init__(self, *, rspamd: RspamdClient | None = None, clamd: ClamdCheck | None = None,
                 extra: Sequence[ExtraCheck] = ()) -> None:
        self.rspamd = rspamd
        self.clamd = clamd
        self.extra = list(extra)

    @property
    def configured(self) -> bool:
        return self.rspamd is not None or self.clamd is not None or bool(self.extra)

    def start(self, check: CheckRequest) -> Started:
        """Begin the checks that need only the message (while DMARC is evaluated)."""
        early: list[defer.Deferred[ContentResult]] = []
        if self.clamd is not None:
            early.append(defer.Deferred.fromCoroutine(
                self.clamd.check(check.message, queue_id=check.queue_id)))
        for extra in self.extra:
            early.append(defer.maybeDeferred(_call, extra, check))
        return Started(self, check, early)

    async def close(self) -> None:
        if self.rspamd is not None:
            await self.rspamd.close()


class Started:
    """Content checks under way for one request; :meth:`finish` folds them into the verdict."""

    def __init__(self, checks: ContentChecks, check: CheckRequest,
                 early: list[defer.Deferred[ContentResult]]) -> None:
        self.checks = checks
        self.check = check
        self.early = early
        self.verdict: Verdict | None = None  # DMARC's, once evaluated (for the stored row)

    async def finish(self, body: dict[str, Any]) -> dict[str, Any]:
        """The verdict with the content results; the scanners never raise."""
        results: list[ContentResult] = []
        late: list[defer.Deferred[ContentResult]] = []
        if body.get("disposition") != "reject" and self.checks.rspamd is not None:
            late.append(defer.Deferred.fromCoroutine(
                self.checks.rspamd.check(scan_request(self.check, body))))
        for d in [*self.early, *late]:
            results.append(await d)
        if body.get("disposition") == "reject":
            # DMARC already refuses it; what the scanners said is still shown in the trace
            return {**body, "content": [r.to_json() for r in results], "headers": []}
        return merge(body, results)
