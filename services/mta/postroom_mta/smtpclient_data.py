"""The DATA phase of the outbound client: whole-line dot-stuffing and a streaming producer.

twisted.mail's client stuffs dots per 16 KiB chunk, so a ``.`` line that
starts exactly on a chunk boundary goes out unstuffed and ends the message
early (the rest then runs as commands). :class:`DotStuffer` keeps the line
state across chunks, so however the message is cut every line that starts
with ``.`` gets a second one. It also turns bare LF and bare CR into CRLF:
RFC 5321 section 2.3.8 forbids them on the wire, and a receiver that reads
``\\n.\\n`` as the end of data would otherwise let a message smuggle commands.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from twisted.internet.interfaces import IConsumer, IPullProducer
from zope.interface import implementer

DEFAULT_CHUNK_SIZE = 64 * 1024
_EOL_RE = re.compile(rb"\r\n|\r|\n")


class DotStuffer:
    """Message bytes in, DATA wire bytes out; feed chunks in order, then call finish().

    ``stuff_dots=False`` only normalises line ends: the form BDAT sends (RFC 3030
    chunks are counted octets, so no dot is special).
    """

    def __init__(self, stuff_dots: bool = True) -> None:
        self._stuff_dots = stuff_dots
        self._line_start = True
        self._pending_cr = False

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        if self._pending_cr:
            # the previous chunk ended in CR, already sent as CRLF; an LF here is its pair
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return b""
        self._pending_cr = chunk.endswith(b"\r")
        out = _EOL_RE.sub(b"\r\n", chunk) if b"\r" in chunk else chunk.replace(b"\n", b"\r\n")
        if self._stuff_dots:
            out = out.replace(b"\r\n.", b"\r\n..")
            if self._line_start and out[:1] == b".":
                out = b"." + out
        self._line_start = out.endswith(b"\r\n")
        return out

    def finish(self) -> bytes:
        """The end of data: a CRLF if the last line lacked one, then ``.CRLF`` (DATA only)."""
        end = b".\r\n" if self._stuff_dots else b""
        return end if self._line_start else b"\r\n" + end


def stuff(message: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    """The whole DATA wire form of ``message`` (for tests and small messages)."""
    stuffer = DotStuffer()
    parts = [stuffer.feed(chunk) for chunk in iter_chunks(message, chunk_size)]
    return b"".join([*parts, stuffer.finish()])


def unstuff(wire: bytes) -> bytes:
    """The inverse of :func:`stuff` for a CRLF message: what a correct server stores."""
    assert wire.endswith(b".\r\n")
    body = wire[:-3]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


MessageSource = bytes | BinaryIO


def iter_chunks(message: MessageSource, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
    """The message in chunks of ``chunk_size``; a file is read from its start each time."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        view = memoryview(message)
        for start in range(0, len(view), chunk_size):
            yield bytes(view[start:start + chunk_size])
        return
    message.seek(0)
    while chunk := message.read(chunk_size):
        yield chunk


def iter_bdat(message: MessageSource, chunk_size: int = DEFAULT_CHUNK_SIZE
              ) -> Iterator[tuple[bytes, bool]]:
    """``(data, last)`` BDAT chunks: CRLF line ends, no dot-stuffing, the final one flagged."""
    normaliser = DotStuffer(stuff_dots=False)
    previous: bytes | None = None
    for chunk in iter_chunks(message, chunk_size):
        data = normaliser.feed(chunk)
        if not data:
            continue
        if previous is not None:
            yield previous, False
        previous = data
    tail = normaliser.finish()
    yield (previous or b"") + tail, True


@implementer(IPullProducer)
class DataProducer:
    """Writes the stuffed message to a consumer one chunk each time it asks for more.

    ``on_block`` runs after every chunk written (the protocol re-arms its
    data-block timeout there); ``on_done`` runs once the final ``.`` is written.
    """

    def __init__(self, message: MessageSource, consumer: IConsumer, *,
                 on_block: Callable[[], None], on_done: Callable[[], None],
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self._chunks = iter_chunks(message, chunk_size)
        self._consumer: Any = consumer
        self._stuffer = DotStuffer()
        self._on_block = on_block
        self._on_done = on_done
        self._finished = False

    def start(self) -> None:
        self._consumer.registerProducer(self, False)

    def resumeProducing(self) -> None:
        # loop until something is written: a pull producer that writes nothing is never asked again
        while not self._finished:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._finished = True
                self._consumer.write(self._stuffer.finish())
                self._consumer.unregisterProducer()
                self._on_done()
                return
            data = self._stuffer.feed(chunk)
            if data:
                self._consumer.write(data)
                self._on_block()
                return

    def stopProducing(self) -> None:
        self._finished = True

    def cancel(self) -> None:
        """Stop mid-message and unregister: a registered producer keeps a transport open."""
        if not self._finished:
            self._finished = True
            self._consumer.unregisterProducer()

    @property
    def finished(self) -> bool:
        return self._finished
