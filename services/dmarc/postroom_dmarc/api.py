"""The internal HTTP API: ``POST /v1/check`` (JSON in, verdict JSON out) on twisted.web.

``POST /v1/check-raw`` is the same check with the message as raw bytes after a
one-line JSON envelope (what the mta sends: no base64 on either side).

A check whose DNS answers are all in the resolver's cache is answered at once
on the reactor thread (:class:`postroom_dmarc.verdict.PendingCheck`): no
lookup, so nothing blocks, and no thread hand-off costs more than the check.
Otherwise the evaluation blocks on DNS, so it runs in the service's bounded
`policy` thread pool (never the reactor's default pool), with at most
``max_inflight`` checks at once (a DeferredSemaphore; the rest wait their
turn). Each check
has a deadline: past it, the answer is a ``tempfail`` verdict so the MTA
replies 451 rather than making its client wait; a slow DNS never becomes a
rejection. The evaluation is given the same deadline and stops its own work
there, so a thread is not kept busy for an answer nobody waits for. Bodies
are bounded; errors are JSON with no traceback.

The content checks (:class:`postroom_dmarc.content.checks.ContentChecks`:
attachments, clamd, rspamd) run once the DMARC verdict is known, outside the
semaphore; a message DMARC already rejects is not scanned. A verdict from the
DNS cache stays on the reactor when every check answers at once (a message
with no attachment and no scanner configured). A check that fails gives
``tempfail`` (451): configured scanning never lets unscanned mail through.
The verdict's row is stored with the checks' results for ``postroom trace``,
except for a message the checks told to retry (tempfail), which is checked
again on its next attempt.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import http, resource, server

from postroom.interfaces import ReactorThreads, defer_to_pool, twisted_clock
from postroom.internalauth import authorized
from postroom.logs import get_logger
from postroom.mailauth import authres
from postroom.metrics import Metrics, dmarc_results_total
from postroom.net.dns import Resolver
from postroom_dmarc.content.checks import ContentChecks
from postroom_dmarc.results import ResultRecorder
from postroom_dmarc.verdict import CheckRequest, Options, PendingCheck, Verdict, with_content

log = get_logger("dmarc-api")

MAX_RECIPIENTS = 10_000


class BadRequest(ValueError):
    """The request JSON is unusable; the message goes back to the client."""


def parse_check(body: bytes) -> CheckRequest:
    """A CheckRequest from the JSON body of ``/v1/check`` (see docs/dmarc-api.md)."""
    data = _json_object(body)
    value = data.get("message_b64")
    if not isinstance(value, str):
        raise BadRequest("message_b64 must be a string")
    try:
        message = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise BadRequest("message_b64 is not base64") from exc
    return _check_request(data, message)


def parse_raw_check(body: bytes) -> CheckRequest:
    """A CheckRequest from the body of ``/v1/check-raw``: the envelope as one line of JSON
    (the fields of ``/v1/check`` but ``message_b64``), LF, then the message's own bytes.

    JSON as ``json.dumps`` writes it has no raw line break, so the first LF ends the
    envelope; the message after it is taken as is (no base64 to encode, escape, parse
    and decode on either side). The whole body is bounded as ``/v1/check``'s is.
    """
    end = body.find(b"\n")
    if end < 0:
        raise BadRequest("no line break after the envelope")
    return _check_request(_json_object(body[:end]), body[end + 1:])


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("body is not JSON") from exc
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def _check_request(data: dict[str, Any], message: bytes) -> CheckRequest:
    def text(name: str, required: bool = True) -> str:
        value = data.get(name, None if required else "")
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string")
        return value

    recipients = data.get("recipients", [])
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients) \
            or len(recipients) > MAX_RECIPIENTS:
        raise BadRequest("recipients must be a list of strings")
    queue_id = data.get("queue_id")
    return CheckRequest(client_ip=text("client_ip"), helo=text("helo", False),
                        mail_from=text("mail_from", False), recipients=tuple(recipients),
                        message=message, queue_id=queue_id if isinstance(queue_id, str) else None,
                        short=data.get("verdict") == "mta")


def tempfail_verdict(request: CheckRequest, authserv_id: str, why: str) -> dict[str, Any]:
    """The answer when no verdict could be had in time: try again later, never reject."""
    return {
        "spf": None, "spf_helo": None, "dkim": [], "arc": None,
        "dmarc": {"result": "temperror", "from_domain": "", "reason": why},
        "disposition": "tempfail", "reason": why,
        "authentication_results": authres.header_value(
            authserv_id, [authres.resinfo("dmarc", "temperror", note=why)]),
    }


class BoundedRequest(server.Request):
    """A request that stops storing its body past ``max_body`` bytes (answered 413)."""

    max_body = 64 * 1024 * 1024
    too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.too_large = True
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.max_body:
            self.too_large = True
        if not self.too_large:
            super().handleContentChunk(data)


class CheckResource(resource.Resource):
    """``/v1/check``: POST a message's envelope and content, get the verdict."""

    isLeaf = True

    def __init__(self, resolver: Resolver, options: Options, pool: ThreadPool,
                 reactor: ReactorThreads, *,
                 max_inflight: int, deadline: float,
                 recorder: ResultRecorder | None = None, metrics: Metrics | None = None,
                 token: str | None = None, content: ContentChecks | None = None) -> None:
        super().__init__()
        # the content checks (attachments, clamd, rspamd); None or none configured: off
        self.content = content if content is not None and content.configured else None
        self.token = token  # POSTROOM_INTERNAL_TOKEN: a bearer token every request must carry
        self.recorder = recorder
        self._results = dmarc_results_total(metrics) if metrics is not None else None
        self._result_children: dict[tuple[str, str], Any] = {}
        self._skipped: Counter | None = None
        self._exhausted: Counter | None = None
        if metrics is not None:
            self._skipped = metrics.counter(
                "dkim_signatures_skipped",
                "DKIM signatures not verified: beyond the cap (cap) or not reached in time "
                "(budget).", ["reason"])
            self._exhausted = metrics.counter(
                "dkim_budget_exhausted", "Checks whose DKIM step ran out of time.")
        self.resolver = resolver
        self.options = options
        self.pool = pool
        self.reactor = reactor
        self.deadline = deadline
        self.semaphore = defer.DeferredSemaphore(max_inflight)

    def render_POST(self, request: server.Request) -> Any:
        return self.render_check(request, parse_check)

    def render_check(self, request: server.Request,
                     parse: Callable[[bytes], CheckRequest]) -> Any:
        """Answer a check whose body ``parse`` reads (``/v1/check`` or ``/v1/check-raw``)."""
        if not authorized(request, self.token):
            return _json(request, 401, {"error": "unauthorized"})
        if getattr(request, "too_large", False):
            return _json(request, 413, {"error": "request body too large"})
        assert request.content is not None
        request.content.seek(0)
        try:
            check = parse(request.content.read())
        except BadRequest as exc:
            return _json(request, 400, {"error": str(exc)})
        pending = PendingCheck(check, self.resolver, self.options)
        verdict = pending.from_cache()
        if verdict is not None:
            self._count_limits(verdict)
            if self.content is None:
                # no content check: answered in this call, with no coroutine or Deferred
                # around it (40 of the 970 Python calls per check; scripts/measure_dmarc_http.py)
                try:
                    body = self._stored(check, verdict)
                except Exception:  # noqa: BLE001 - as the Deferred path: a tempfail, logged
                    self._failed(Failure(), request, check)
                else:
                    _finish(request, 200, self._counted(body))
                return server.NOT_DONE_YET
            # answered in this call when every content check answers at once
            finished = defer.Deferred.fromCoroutine(self._scanned(check, verdict))
        else:
            finished = defer.Deferred.fromCoroutine(self._answer(check, pending))
        finished.addCallback(lambda body: _finish(request, 200, self._counted(body)))
        finished.addErrback(self._failed, request, check)
        return server.NOT_DONE_YET

    async def _answer(self, check: CheckRequest, pending: PendingCheck) -> dict[str, Any]:
        await self.semaphore.acquire()
        try:
            deadline = time.monotonic() + self.deadline
            work = defer_to_pool(self.reactor, self.pool, self._evaluate, pending, deadline)
            work.addTimeout(self.deadline, twisted_clock(self.reactor))
            try:
                verdict = await work
            except defer.TimeoutError:
                # the thread stops at the same deadline; its late result is dropped
                log.warning("dmarc check deadline passed", queue_id=check.queue_id,
                            deadline=self.deadline)
                return tempfail_verdict(check, self.options.authserv_id,
                                        "policy check did not finish in time")
        finally:
            self.semaphore.release()
        return await self._scanned(check, verdict)

    async def _scanned(self, check: CheckRequest, verdict: Verdict) -> dict[str, Any]:
        """The verdict with the content checks' results, stored, as JSON.

        A message DMARC rejects is not scanned. Its row is stored (in the background;
        never raises) unless the content checks told the message to retry.
        """
        if self.content is not None and verdict.disposition != "reject":
            results = await self.content.run(check, verdict)
            verdict = with_content(verdict, results)
            log.info("content verdict", queue_id=check.queue_id,
                     disposition=verdict.disposition, decided_by=verdict.decided_by,
                     reason=verdict.reason or None,
                     checks=[{"check": r.check, "action": r.action, "category": r.category}
                             for r in results])
        return self._stored(check, verdict)

    def _stored(self, check: CheckRequest, verdict: Verdict) -> dict[str, Any]:
        """The verdict's row stored (unless the content checks said retry), its JSON."""
        if self.recorder is not None and not (verdict.content
                                              and verdict.disposition == "tempfail"):
            self.recorder.record(check, verdict)
        return verdict.to_json(short=check.short)

    def _evaluate(self, pending: PendingCheck, deadline: float) -> Verdict:
        """In the `policy` pool: the verdict, its limits counted even when it comes too late."""
        verdict = pending.evaluate(deadline)
        self._count_limits(verdict)
        return verdict

    def _count_limits(self, verdict: Verdict) -> None:
        run = verdict.dkim_run
        if run is None or self._skipped is None or self._exhausted is None:
            return
        if run.skipped:
            self._skipped.labels(reason="cap").inc(run.skipped)
        if run.unfinished:
            self._skipped.labels(reason="budget").inc(run.unfinished)
        if run.out_of_time:
            self._exhausted.inc()

    def _counted(self, body: dict[str, Any]) -> dict[str, Any]:
        """Count the verdict by DMARC result and disposition (both from small fixed sets)."""
        if self._results is not None:
            dmarc = body.get("dmarc") or {}
            key = (str(dmarc.get("result") or "none"), str(body.get("disposition") or "none"))
            # the labelled child once per pair (labels() locks and hashes on every check);
            # bounded: both come from the verdict's small fixed sets, never from the request
            child = self._result_children.get(key)
            if child is None:
                child = self._result_children[key] = self._results.labels(
                    result=key[0], disposition=key[1])
            child.inc()
        return body

    def _failed(self, failure: Failure, request: server.Request, check: CheckRequest) -> None:
        log.error("dmarc check failed", queue_id=check.queue_id,
                  error=failure.getErrorMessage(), traceback=failure.getTraceback())
        _finish(request, 200, self._counted(tempfail_verdict(check, self.options.authserv_id,
                                                             "policy check failed")))

    def render_GET(self, request: server.Request) -> bytes:
        if not authorized(request, self.token):
            return _json(request, 401, {"error": "unauthorized"})
        return _json(request, 405, {"error": "use POST"})


class RawCheckResource(resource.Resource):
    """``/v1/check-raw``: the check of ``/v1/check`` with the message as raw bytes
    (:func:`parse_raw_check`), the verdict the same."""

    isLeaf = True

    def __init__(self, check: CheckResource) -> None:
        super().__init__()
        self.check = check

    def render_POST(self, request: server.Request) -> Any:
        return self.check.render_check(request, parse_raw_check)

    def render_GET(self, request: server.Request) -> bytes:
        return self.check.render_GET(request)


def _json(request: server.Request, code: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode()


def _finish(request: server.Request, code: int, body: dict[str, Any]) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    data = _json(request, code, body)
    # a length, not chunked encoding: the mta's client parses one body, no chunk framing
    request.setHeader(b"content-length", str(len(data)).encode("ascii"))
    request.write(data)
    request.finish()


class _Channel(http.HTTPChannel):
    """twisted.web's HTTP/1.1 connection, the local address read once per connection.

    Every Request asks its channel for the local address (a getsockname system
    call each time); an accepted socket's address does not change. The channel
    is served as is, not inside twisted.web's generic wrapper, which only
    switches to HTTP/2 when TLS negotiates it (ALPN): the API listens on plain TCP.
    """

    _host: Any = None

    def getHost(self) -> Any:
        if self._host is None:
            transport: Any = self.transport  # zope interfaces are invisible to mypy
            self._host = transport.getHost()
        return self._host


class _Site(server.Site):
    protocol = _Channel  # type: ignore[assignment]

    # the exact paths of the API, found without walking the resource tree
    routes: dict[bytes, resource.Resource]

    # no access log line: every check logs "dmarc verdict" with its queue id, and formatting
    # the combined log line cost as much CPU as encoding the verdict
    def log(self, request: Any) -> None:
        pass

    def getResourceFor(self, request: Any) -> Any:
        found = self.routes.get(request.path)
        if found is None:  # any other path (a trailing slash, a 404): the tree, as before
            return super().getResourceFor(request)
        # what the walk leaves on a request that ends at a leaf resource
        request.site = self
        request.sitepath = []
        request.prepath, request.postpath = request.postpath, []
        return found


def build_site(check: CheckResource, max_body: int) -> server.Site:
    """The Site serving /v1/check, with request bodies bounded to ``max_body``."""
    root = resource.Resource()
    v1: Any = resource.Resource()  # zope interfaces are invisible to mypy
    root.putChild(b"v1", v1)
    raw = RawCheckResource(check)
    v1.putChild(b"check", check)
    v1.putChild(b"check-raw", raw)

    class Request(BoundedRequest):
        pass

    Request.max_body = max_body
    site = _Site(root)
    site.routes = {b"/v1/check": check, b"/v1/check-raw": raw}
    site.requestFactory = Request
    site.displayTracebacks = False
    return site
