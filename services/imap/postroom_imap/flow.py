"""Write-side backpressure for long responses: wait while the peer is not reading.

A ``FETCH 1:*`` on a big mailbox produces megabytes; written all at once they
sit in the transport's buffer (memory per session) however slowly the client
reads. :class:`WriteGate` is registered on the transport as a streaming
producer for the length of such a response: the transport pauses it when its
buffer passes its high-water mark and resumes it once drained, and the
command awaits :meth:`WriteGate.drained` between batches.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class WriteGate:
    """A push producer whose only product is permission to write the next batch."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self._waiting: list[Deferred[None]] = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def stopProducing(self) -> None:
        # the connection is gone: release the writer, which then sees the session closing
        self.stopped = True
        self.resumeProducing()

    def drained(self) -> Deferred[None]:
        """Fires at once unless the transport asked to pause, then when it resumes."""
        if not self.paused or self.stopped:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d


def attach(transport: Any) -> WriteGate | None:
    """A gate registered on ``transport``, or None when it already has a producer."""
    if transport is None:
        return None
    gate = WriteGate()
    try:
        transport.registerProducer(gate, True)
    except RuntimeError:  # another producer is registered: write without backpressure
        return None
    return gate


def detach(transport: Any, gate: WriteGate | None) -> None:
    """Unregister ``gate`` if it is still the transport's producer."""
    if gate is None or transport is None:
        return
    if getattr(transport, "producer", gate) is gate and not gate.stopped:
        transport.unregisterProducer()
