"""The HTTP client of the dmarc service's ``POST /v1/check`` (docs/dmarc-api.md).

It runs on the reactor (never a blocking call) with a deadline. Whatever goes
wrong (connection refused, timeout, a non-200 answer, a body that is not the
documented verdict) the result is a ``tempfail`` verdict: the SMTP client is
told 451 and retries, and a broken policy service never turns into a
rejection or an unchecked acceptance.

The client speaks the small part of HTTP/1.1 this one internal API needs, over
persistent connections of its own (up to ``MAX_CONNECTIONS`` kept idle): a
POST with Content-Length, and an answer with Content-Length (or ending at
close). twisted.web's Agent cost a sixth of the mta's CPU per message for the
same exchange (bench/README.md). A request on a reused connection that the
server closed before any byte of the answer (it times idle connections out) is
sent once more on a new connection; nothing else is retried.

The message travels as raw bytes after a one-line JSON envelope
(``/v1/check-raw``): base64 inside JSON cost an encode and an escape here and a
parse and a decode in the dmarc service, linear in the message's size. A
service without that endpoint (404: an older release during an upgrade) is
asked ``/v1/check`` with JSON from then on.

Both requests ask for the verdict's short form (``"verdict": "mta"``): only the
fields :func:`parse_verdict` reads, so less JSON to encode there and to parse
here. A dmarc service older than that form ignores the field and answers the
full verdict, which reads the same (a rolling upgrade in either order works).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from postroom.interfaces import ReactorThreads, global_reactor
from postroom.internalauth import authorization_header
from postroom.logs import get_logger

_log = get_logger("dmarcclient")

DISPOSITIONS = ("inbox", "junk", "reject", "tempfail")
# a verdict body is a few KiB; anything far bigger is not a verdict
MAX_RESPONSE = 1024 * 1024
# persistent connections kept to the dmarc service
MAX_CONNECTIONS = 64


@dataclass(frozen=True)
class Verdict:
    """What the dmarc service decided; ``unavailable`` when it could not be asked."""

    disposition: str
    reason: str = ""
    authentication_results: str = ""
    dmarc_result: str | None = None
    unavailable: bool = False
    # fields the content checks add to the stored message (X-Spamd-Result...), in order
    headers: tuple[tuple[str, str], ...] = ()
    # the check that decided, when a content check (attachments, clamd, rspamd) did
    decided_by: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def tempfail(reason: str) -> Verdict:
    """The verdict used when the dmarc service could not give one."""
    return Verdict(disposition="tempfail", reason=reason, unavailable=True)


def parse_verdict(body: bytes) -> Verdict:
    """A Verdict from a ``/v1/check`` 200 body; ValueError when it is not one."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("verdict is not a JSON object")
    disposition = data.get("disposition")
    if disposition not in DISPOSITIONS:
        raise ValueError(f"unknown disposition {disposition!r}")
    reason = data.get("reason") or ""
    results = data.get("authentication_results") or ""
    if not isinstance(reason, str) or not isinstance(results, str):
        raise ValueError("reason and authentication_results must be strings")
    dmarc = data.get("dmarc")
    dmarc_result = dmarc.get("result") if isinstance(dmarc, dict) else None
    decided_by = data.get("decided_by")
    return Verdict(disposition=disposition, reason=reason, authentication_results=results,
                   dmarc_result=dmarc_result if isinstance(dmarc_result, str) else None,
                   headers=content_headers(data.get("headers")),
                   decided_by=decided_by if isinstance(decided_by, str) else None,
                   raw=data)


MAX_HEADERS = 16
MAX_HEADER_VALUE = 8192
_FIELD_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")


def content_headers(raw: Any) -> tuple[tuple[str, str], ...]:
    """The verdict's ``headers`` (the content checks' fields) that are safe to add.

    A pair is kept when its name is letters, digits and hyphens (at most 64)
    and its value a string of at most MAX_HEADER_VALUE characters; at most
    MAX_HEADERS are kept; anything else is left out (the message is still
    accepted: a field we cannot add safely is not worth a 451). The value's
    line breaks and control characters are made safe where the field is
    written (:func:`postroom_mta.inbound.added_field`).
    """
    found: list[tuple[str, str]] = []
    for pair in raw if isinstance(raw, list) else []:
        if len(found) >= MAX_HEADERS:
            break
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(p, str) for p in pair)):
            continue
        name, value = pair
        if _FIELD_NAME.fullmatch(name) and len(value) <= MAX_HEADER_VALUE:
            found.append((name, value))
    return tuple(found)


def request_body(*, client_ip: str, helo: str | None, mail_from: str,
                 recipients: Sequence[str], message: bytes, queue_id: str) -> bytes:
    """The JSON request of ``/v1/check``."""
    return json.dumps({
        "client_ip": client_ip, "helo": helo or "", "mail_from": mail_from,
        "recipients": list(recipients), "queue_id": queue_id, "verdict": "mta",
        "message_b64": base64.b64encode(message).decode("ascii"),
    }).encode("utf-8")


def raw_request_body(*, client_ip: str, helo: str | None, mail_from: str,
                     recipients: Sequence[str], message: bytes, queue_id: str) -> bytes:
    """The request of ``/v1/check-raw``: the envelope as one line of JSON, LF, the message.

    ``json.dumps`` escapes every line break inside strings, so the envelope is one line.
    """
    return json.dumps({
        "client_ip": client_ip, "helo": helo or "", "mail_from": mail_from,
        "recipients": list(recipients), "queue_id": queue_id, "verdict": "mta",
    }).encode("utf-8") + b"\n" + message


class DMARCClient:
    """Asks the dmarc service for verdicts over persistent HTTP/1.1 connections."""

    def __init__(self, url: str, timeout: float, *, reactor: ReactorThreads | None = None,
                 token: str | None = None, endpoint: Any = None) -> None:
        if reactor is None:
            reactor = global_reactor()
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            # POSTROOM_DMARC_URL is checked by postroom.config; this guards other callers
            raise ValueError(f"{url!r} is not an http:// URL")
        self.url = url.rstrip("/") + "/v1/check"
        self.timeout = timeout
        self.reactor = reactor
        self.host = parts.hostname
        self.port = parts.port or 80
        # an IStreamClientEndpoint (tests pass their own)
        self.endpoint = endpoint or HostnameEndpoint(reactor, self.host, self.port,
                                                     timeout=min(timeout, 10.0))
        host = self.host if ":" not in self.host else f"[{self.host}]"
        base = parts.path.rstrip("/")
        # No Content-Type: the API reads its own bodies, and twisted.web parses any
        # Content-Type with the email package (a tenth of the dmarc service's CPU per check)
        fields = [f"Host: {host}:{self.port}".encode("idna")]
        if token is not None:  # POSTROOM_INTERNAL_TOKEN; never logged
            fields.append(b"Authorization: " + authorization_header(token))
        self._head, self._raw_head = (
            b"\r\n".join([f"POST {base}{path} HTTP/1.1".encode("ascii"), *fields])
            + b"\r\nContent-Length: " for path in ("/v1/check", "/v1/check-raw"))
        # the message goes as raw bytes (/v1/check-raw) until a dmarc service without that
        # endpoint (an older release, during an upgrade) answers 404: JSON from then on
        self.raw = True
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._closing = False

    def check(self, *, client_ip: str, helo: str | None, mail_from: str,
              recipients: Sequence[str], message: bytes, queue_id: str) -> Deferred[Verdict]:
        """The verdict for one message; never fails (problems give a tempfail verdict)."""
        envelope = {"client_ip": client_ip, "helo": helo, "mail_from": mail_from,
                    "recipients": recipients, "message": message, "queue_id": queue_id}
        d: Deferred[Any] = Deferred.fromCoroutine(self._ask(envelope))
        # the deadline: a plain timer (Deferred.addTimeout's wrapping cost 3% of the mta's CPU)
        timer = self.reactor.callLater(self.timeout, d.cancel)

        def settled(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(settled)
        d.addCallback(self._verdict)
        return d.addErrback(self._failed, queue_id)

    async def _ask(self, envelope: dict[str, Any]) -> tuple[int, bytes]:
        if self.raw:
            body = raw_request_body(**envelope)
            answer = await self._exchange(
                self._raw_head + str(len(body)).encode("ascii") + b"\r\n\r\n" + body)
            if answer[0] != 404:
                return answer
            if self.raw:
                self.raw = False
                _log.warning("dmarc service has no raw check endpoint, sending JSON",
                             url=self.url)
        body = request_body(**envelope)
        return await self._exchange(self._head + str(len(body)).encode("ascii")
                                    + b"\r\n\r\n" + body)

    async def _exchange(self, data: bytes) -> tuple[int, bytes]:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                try:
                    return await self._send(conn, data)
                except _ClosedBeforeAnswer:
                    break  # the server had closed it: once more on a new connection
        factory: Any = _ConnectionFactory()  # an IProtocolFactory (zope, opaque to mypy)
        conn = await self.endpoint.connect(factory)
        return await self._send(conn, data)

    async def _send(self, conn: _Connection, data: bytes) -> tuple[int, bytes]:
        self._busy.add(conn)
        try:
            status, body, keep = await conn.request(data)
        except BaseException:
            conn.abort()
            raise
        finally:
            self._busy.discard(conn)
        if keep and not self._closing and len(self._idle) < MAX_CONNECTIONS:
            self._idle.append(conn)
        else:
            conn.close()
        return status, body

    @staticmethod
    def _verdict(answer: tuple[int, bytes]) -> Verdict:
        status, body = answer
        if status != 200:
            raise ValueError(f"dmarc service answered HTTP {status}")
        return parse_verdict(body)

    def _failed(self, failure: Failure, queue_id: str) -> Verdict:
        if failure.check(CancelledError):  # the deadline's timer cancelled it
            error = f"no answer within {self.timeout:g}s"
        else:
            error = failure.getErrorMessage() or (failure.type.__name__ if failure.type
                                                  else "error")
        _log.warning("dmarc check failed", queue_id=queue_id, url=self.url, error=error,
                     error_type=getattr(failure.type, "__name__", None))
        return tempfail("policy service unavailable")

    def close(self) -> Deferred[Any]:
        """Close the idle connections (service stop, test teardown); busy ones close after."""
        self._closing = True
        closed = [conn.closed for conn in self._idle]
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        return DeferredList(closed, consumeErrors=True)


class _ClosedBeforeAnswer(Exception):
    """A reused connection closed before any byte of the answer: safe to send again."""


class _BadAnswer(Exception):
    """The bytes from the dmarc service are not an HTTP answer we accept."""


MAX_HEAD = 64 * 1024


class _Connection(Protocol):
    """One HTTP/1.1 connection to the dmarc service: one request at a time, answers parsed here."""

    transport: Any

    def __init__(self) -> None:
        self.usable = True
        self.used = False
        self.closed: Deferred[None] = Deferred()
        self._waiting: Deferred[tuple[int, bytes, bool]] | None = None
        self._buffer = b""
        self._status = 0
        self._length: int | None = None  # of the body; None: until the connection closes
        self._keep = True
        self._in_body = False
        self._got_bytes = False
        self._reused = False

    def request(self, data: bytes) -> Deferred[tuple[int, bytes, bool]]:
        reused, self.used = self.used, True
        self._reused = reused
        self._buffer, self._in_body, self._got_bytes = b"", False, False
        self._waiting = Deferred(self._cancel)
        self.transport.write(data)
        return self._waiting

    def _cancel(self, d: Deferred[Any]) -> None:
        # the deadline passed: the answer will never be read, the connection is dropped
        self._waiting = None
        self.abort()

    def dataReceived(self, data: bytes) -> None:
        if self._waiting is None:  # nothing asked: the server is not speaking HTTP to us
            self.abort()
            return
        self._got_bytes = True
        self._buffer += data
        try:
            while not self._in_body:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_HEAD:
                        raise _BadAnswer("answer head too long")
                    return
                self._head(self._buffer[:end])
                self._buffer = self._buffer[end + 4:]
                # an interim 1xx answer is skipped (we send no Expect, but may get one)
                self._in_body = not 100 <= self._status < 200
            if len(self._buffer) > MAX_RESPONSE:
                raise _BadAnswer("verdict too large")
            if self._length is not None and len(self._buffer) >= self._length:
                if len(self._buffer) > self._length:
                    raise _BadAnswer("bytes after the answer")
                self._answer(self._keep)
        except _BadAnswer as exc:
            self._fail(Failure(exc))

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") \
                or not status_line[1].isdigit():
            raise _BadAnswer("not an HTTP/1.x status line")
        self._status = int(status_line[1])
        self._length, self._keep = None, status_line[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise _BadAnswer("malformed header line")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                if not value.isdigit() or self._length is not None:
                    raise _BadAnswer("bad Content-Length")
                self._length = int(value)
            elif name == b"transfer-encoding":
                raise _BadAnswer("Transfer-Encoding is not expected from the dmarc service")
            elif name == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")}
                if b"close" in tokens:
                    self._keep = False
                elif b"keep-alive" in tokens:
                    self._keep = True
        if self._status in (204, 304) or 100 <= self._status < 200:
            self._length = 0  # no body, whatever the header says
        if self._length is None:
            self._keep = False  # the body ends when the connection does

    def _answer(self, keep: bool) -> None:
        waiting, self._waiting = self._waiting, None
        body, self._buffer = self._buffer, b""
        self._in_body = False
        if waiting is not None:
            waiting.callback((self._status, body, keep))

    def _fail(self, failure: Failure) -> None:
        self.abort()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(failure)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.usable = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            if self._in_body and self._length is None:
                waiting.callback((self._status, self._buffer, False))
            elif self._reused and not self._got_bytes:
                waiting.errback(_ClosedBeforeAnswer())
            else:
                waiting.errback(_BadAnswer("connection closed before the whole answer"))
        if not self.closed.called:
            self.closed.callback(None)

    def close(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.abortConnection()


class _ConnectionFactory(Factory):
    protocol = _Connection
    noisy = False
