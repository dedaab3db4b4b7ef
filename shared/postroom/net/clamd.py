"""clamd's ``INSTREAM`` protocol over ``tcp:HOST:PORT`` or ``unix:PATH``: scan bytes, get a verdict.

The message is streamed in length-prefixed chunks (clamd protocol: a 4-byte
big-endian size, the chunk, a zero-length chunk at the end) on a fresh
connection, with a deadline. A message larger than ``max_stream`` (keep it
equal to clamd's StreamMaxLength) is not sent whole: clamd would answer
"INSTREAM size limit exceeded", so the first ``max_stream`` bytes are scanned
and the result says so. Answers: ``stream: OK`` -> accept; ``stream: NAME
FOUND`` -> reject naming the signature (554 5.7.1); anything else, an error or
no answer -> tempfail (451 4.7.0): a configured scanner never lets unscanned
mail through.

The dmarc service (inbound, ``postroom_dmarc.content.clamd``) and the msa
(outgoing mail) both scan through :meth:`ClamdClient.verdict`, which also
counts (latency, errors, results) and logs one event per scan.
"""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from postroom.interfaces import twisted_clock
from postroom.logs import get_logger
from postroom.metrics import Metrics

log = get_logger("clamd")

SCANNER = "clamd"
CHUNK = 64 * 1024
MAX_REPLY = 4096
# "stream: Eicar-Signature FOUND"; a signature name is printable without spaces
_FOUND = re.compile(rb"\Astream: ([\x21-\x7e]{1,200}) FOUND\Z")


class ClamdError(Exception):
    """clamd gave no usable answer."""


def parse_address(address: str) -> tuple[str, str, int]:
    """``tcp:HOST:PORT`` -> ("tcp", host, port); ``unix:PATH`` -> ("unix", path, 0)."""
    kind, sep, rest = address.strip().partition(":")
    if not sep or not rest:
        raise ValueError("must be tcp:HOST:PORT or unix:PATH")
    if kind == "unix":
        return "unix", rest, 0
    if kind == "tcp":
        host, colon, port = rest.rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be tcp:HOST:PORT or unix:PATH")
        return "tcp", host, int(port)
    raise ValueError("must be tcp:HOST:PORT or unix:PATH")


def instream_frames(message: bytes, max_stream: int) -> list[bytes]:
    """The INSTREAM request: command, chunks of at most CHUNK bytes, the zero terminator."""
    data = memoryview(message)[:max_stream]
    frames = [b"zINSTREAM\0"]
    for start in range(0, len(data), CHUNK):
        chunk = data[start:start + CHUNK]
        frames.append(struct.pack(">I", len(chunk)) + bytes(chunk))
    frames.append(struct.pack(">I", 0))
    return frames


def parse_reply(reply: bytes) -> tuple[str, str]:
    """("clean", "") / ("virus", signature) from clamd's answer; ClamdError otherwise."""
    text = reply.rstrip(b"\0").strip()
    if text == b"stream: OK":
        return "clean", ""
    match = _FOUND.match(text)
    if match:
        return "virus", match.group(1).decode("ascii")
    shown = text[:200].decode("ascii", "replace")
    raise ClamdError(f"clamd answered {shown!r}")


class _Instream(Protocol):
    """Sends the frames, collects the NUL-terminated answer (bounded)."""

    transport: Any

    def __init__(self, frames: list[bytes], done: defer.Deferred[bytes]) -> None:
        self.frames = frames
        self.done = done
        self.buffer = b""

    def connectionMade(self) -> None:
        self.transport.writeSequence(self.frames)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\0" in self.buffer or len(self.buffer) > MAX_REPLY:
            answer = self.buffer.split(b"\0", 1)[0][:MAX_REPLY]
            if not self.done.called:
                self.done.callback(answer)
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            if self.buffer:
                self.done.callback(self.buffer[:MAX_REPLY])
            else:
                self.done.errback(ClamdError("clamd closed the connection without an answer"))


@dataclass(frozen=True)
class ClamdVerdict:
    """One scan: ``clean``, ``virus`` (with the signature) or ``error`` (not scanned)."""

    outcome: str
    signature: str = ""
    error: str = ""
    truncated: bool = False  # only the first max_stream bytes were scanned


def clamd_metrics(metrics: Metrics) -> tuple[Histogram, Counter, Counter]:
    """clamd's metric families: latency, errors by kind, scans by outcome (declared by
    the services that may scan, configured or not, so dashboards read 0, not no data)."""
    return (metrics.histogram("content_scan_seconds", "Time a content scanner took per message.",
                              ["scanner"]),
            metrics.counter("content_scan_errors",
                            "Content scans that failed, by scanner and kind.",
                            ["scanner", "kind"]),
            metrics.counter("clamd_scans", "clamd scans by outcome (clean, virus, error).",
                            ["outcome"]))


class ClamdClient:
    """Scans bytes with clamd; one connection per scan (clamd's own session model)."""

    def __init__(self, address: str, *, reactor: Any, timeout: float = 30.0,
                 max_stream: int = 25 * 1024 * 1024, metrics: Metrics | None = None) -> None:
        self.address = address
        self.kind, self.host, self.port = parse_address(address)
        self.reactor = reactor
        self.timeout = timeout
        self.max_stream = max_stream
        self.latency: Histogram | None = None
        self.errors: Counter | None = None
        self.results: Counter | None = None
        if metrics is not None:
            self.latency, self.errors, self.results = clamd_metrics(metrics)

    def _endpoint(self) -> Any:
        connect_timeout = max(1, int(min(self.timeout, 10)))
        if self.kind == "unix":
            return UNIXClientEndpoint(self.reactor, self.host, timeout=connect_timeout)
        return TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=connect_timeout)

    async def _ask(self, message: bytes) -> bytes:
        done: defer.Deferred[bytes] = defer.Deferred()
        frames = instream_frames(message, self.max_stream)
        factory: Any = Factory.forProtocol(lambda: _Instream(frames, done))  # type: ignore[arg-type,return-value]
        protocol = await self._endpoint().connect(factory)
        try:
            return await done
        finally:
            if protocol.transport is not None:
                protocol.transport.loseConnection()

    async def scan(self, message: bytes) -> tuple[str, str]:
        """("clean"|"virus", signature); raises ClamdError, TimeoutError or a connect error."""
        work: defer.Deferred[bytes] = defer.Deferred.fromCoroutine(self._ask(message))
        work.addTimeout(self.timeout, twisted_clock(self.reactor))
        return parse_reply(await work)

    async def verdict(self, message: bytes, *, queue_id: str | None = None) -> ClamdVerdict:
        """Scan, count and log; never raises (a failure is an ``error`` verdict)."""
        started = time.monotonic()
        truncated = len(message) > self.max_stream
        try:
            outcome, signature = await self.scan(message)
            result = ClamdVerdict(outcome, signature, truncated=truncated)
        except Exception as exc:  # noqa: BLE001 - any failure is "not scanned"
            timed_out = isinstance(exc, defer.TimeoutError | defer.CancelledError)
            kind = "timeout" if timed_out else (
                "bad_answer" if isinstance(exc, ClamdError) else "unreachable")
            error = f"no answer within {self.timeout:g}s" if timed_out else \
                (str(exc) or type(exc).__name__)[:200]
            if self.errors is not None:
                self.errors.labels(scanner=SCANNER, kind=kind).inc()
            result = ClamdVerdict("error", error=error, truncated=truncated)
            log.warning("clamd scan failed", queue_id=queue_id, error=error, kind=kind,
                        address=self.address)
        elapsed = time.monotonic() - started
        if self.latency is not None:
            self.latency.labels(scanner=SCANNER).observe(elapsed)
        if self.results is not None:
            self.results.labels(outcome=result.outcome).inc()
        if result.outcome != "error":
            log.info("clamd verdict", queue_id=queue_id, outcome=result.outcome,
                     signature=result.signature or None, size=len(message),
                     truncated=truncated, elapsed=round(elapsed, 4))
        return result
