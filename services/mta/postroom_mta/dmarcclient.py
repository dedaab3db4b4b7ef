"""The HTTP client of the dmarc service's ``POST /v1/check`` (docs/dmarc-api.md).

It runs on the reactor (twisted.web Agent, never a blocking call) with a
deadline. Whatever goes wrong — connection refused, timeout, a non-200
answer, a body that is not the documented verdict — the result is a
``tempfail`` verdict: the SMTP client is told 451 and retries, and a broken
policy service never turns into a rejection or an unchecked acceptance.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

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
    return Verdict(disposition=disposition, reason=reason, authentication_results=results,
                   dmarc_result=dmarc_result if isinstance(dmarc_result, str) else None,
                   raw=data)


def request_body(*, client_ip: str, helo: str | None, mail_from: str,
                 recipients: Sequence[str], message: bytes, queue_id: str) -> bytes:
    """The JSON request of ``/v1/check``."""
    return json.dumps({
        "client_ip": client_ip, "helo": helo or "", "mail_from": mail_from,
        "recipients": list(recipients), "queue_id": queue_id,
        "message_b64": base64.b64encode(message).decode("ascii"),
    }).encode("utf-8")


class DMARCClient:
    """Asks the dmarc service for verdicts over persistent HTTP connections."""

    def __init__(self, url: str, timeout: float, *, reactor: Any = None,
                 token: str | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.url = url.rstrip("/") + "/v1/check"
        self.timeout = timeout
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        # above the checks in flight at once (one per SMTP session at end of DATA): a request
        # beyond the cached connections opens a new one, a handshake and a lookup each time
        self.pool.maxPersistentPerHost = MAX_CONNECTIONS
        self.agent = Agent(reactor, pool=self.pool, connectTimeout=min(timeout, 10.0))
        # No Content-Type: the API takes only JSON, and twisted.web parses any Content-Type
        # with the email package (a tenth of the dmarc service's CPU per check)
        self._headers: dict[bytes, list[bytes]] = {}
        if token is not None:  # POSTROOM_INTERNAL_TOKEN; never logged
            self._headers[b"Authorization"] = [authorization_header(token)]

    def check(self, *, client_ip: str, helo: str | None, mail_from: str,
              recipients: Sequence[str], message: bytes, queue_id: str) -> Deferred[Verdict]:
        """The verdict for one message; never fails (problems give a tempfail verdict)."""
        body = request_body(client_ip=client_ip, helo=helo, mail_from=mail_from,
                            recipients=recipients, message=message, queue_id=queue_id)
        producer: Any = FileBodyProducer(BytesIO(body))  # an IBodyProducer (zope, opaque to mypy)
        d: Deferred[Any] = self.agent.request(
            b"POST", self.url.encode("ascii"),
            Headers(self._headers), producer)
        d.addCallback(self._response)
        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(self._failed, queue_id)

    def _response(self, response: Any) -> Deferred[Verdict]:
        status = response.code

        def read(body: bytes) -> Verdict:
            if status != 200:
                raise ValueError(f"dmarc service answered HTTP {status}")
            return parse_verdict(body)

        finished: Deferred[bytes] = Deferred()
        response.deliverBody(_BoundedBody(finished, MAX_RESPONSE))
        return finished.addCallback(read)

    def _failed(self, failure: Failure, queue_id: str) -> Verdict:
        error = failure.getErrorMessage() or (failure.type.__name__ if failure.type else "error")
        _log.warning("dmarc check failed", queue_id=queue_id, url=self.url, error=error,
                     error_type=getattr(failure.type, "__name__", None))
        return tempfail("policy service unavailable")

    def close(self) -> Deferred[Any]:
        """Close the cached connections (service stop, test teardown)."""
        return self.pool.closeCachedConnections()



class _BoundedBody(Protocol):
    """Collects a response body, giving up (and dropping the connection) past ``limit`` bytes."""

    transport: Any

    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self.finished = finished
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.too_big = False

    def dataReceived(self, data: bytes) -> None:
        if self.too_big:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.too_big = True
            self.transport.stopProducing()
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.too_big:
            self.finished.errback(ValueError("verdict too large"))
        elif reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)
