"""A bounded HTTP POST on the reactor for the scanners (rspamd): twisted.web's Agent, a deadline.

The answer body is read up to ``max_body`` bytes (more is an error, never
buffered), and the whole exchange is cancelled at ``timeout``. Connections are
kept in a persistent pool per client.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from postroom.interfaces import twisted_clock

MAX_ANSWER = 4 * 1024 * 1024


class AnswerTooLarge(Exception):
    """The server's answer was larger than the client accepts."""


class _Collect(Protocol):
    def __init__(self, done: defer.Deferred[bytes], limit: int) -> None:
        self.done = done
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            if not self.done.called:
                self.done.errback(AnswerTooLarge(f"answer over {self.limit} bytes"))
            assert self.transport is not None
            self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is None:
            reason = Failure(ResponseDone())
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


class PostClient:
    """POSTs bytes and returns (status, body); one instance per scanner, connections pooled."""

    def __init__(self, reactor: Any, *, max_answer: int = MAX_ANSWER,
                 pool_size: int = 16) -> None:
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = pool_size
        self.pool.retryAutomatically = False  # a scan is not blindly sent twice
        self.agent = Agent(reactor, pool=self.pool, connectTimeout=10)
        self.max_answer = max_answer

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   timeout: float) -> tuple[int, bytes]:
        """The answer to one POST; defer.TimeoutError past ``timeout``."""
        raw = Headers({k.encode("ascii"): [v.encode("utf-8")] for k, v in headers.items()})
        work: defer.Deferred[Any] = defer.Deferred.fromCoroutine(
            self._exchange(url.encode("ascii"), raw, FileBodyProducer(io.BytesIO(body))))
        work.addTimeout(timeout, twisted_clock(self.reactor))
        result: tuple[int, bytes] = await work
        return result

    async def _exchange(self, url: bytes, headers: Headers,
                        producer: FileBodyProducer) -> tuple[int, bytes]:
        body_producer: Any = producer  # an IBodyProducer (zope interfaces are opaque to mypy)
        response: Any = await self.agent.request(b"POST", url, headers, body_producer)
        done: defer.Deferred[bytes] = defer.Deferred()
        response.deliverBody(_Collect(done, self.max_answer))
        body = await done
        return int(response.code), body

    def close(self) -> defer.Deferred[Any]:
        """Close the pooled connections (service stop, test teardown)."""
        return self.pool.closeCachedConnections()
