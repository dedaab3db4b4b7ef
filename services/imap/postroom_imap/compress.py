"""COMPRESS=DEFLATE (RFC 4978): raw deflate both ways, inflating in bounded steps."""

from __future__ import annotations

import zlib

# decompressed bytes handed on per step: a deflate bomb (1 KiB inflating to 1 MiB) never
# becomes more than this at once; the session decides between steps whether to go on
INFLATE_STEP = 64 * 1024
# steps per reactor turn before yielding, so one inflating peer cannot starve the others
STEPS_PER_TURN = 16


class Deflate:
    """One connection's compressor and decompressor (RFC 1951 raw deflate, no zlib header).

    ``feed`` keeps compressed input; ``inflate`` returns at most ``INFLATE_STEP``
    bytes of its decompressed form, keeping the rest compressed (zlib's
    ``unconsumed_tail``): what is held stays the size of what was received,
    however much it would expand to.
    """

    __slots__ = ("_compress", "_decompress", "_pending", "broken")

    def __init__(self, level: int = 6) -> None:
        self._compress = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._decompress = zlib.decompressobj(-15)
        self._pending = b""
        self.broken = False  # the peer sent something that is not deflate

    def compress(self, data: bytes) -> bytes:
        """``data`` compressed and flushed (Z_SYNC_FLUSH): the peer can read it at once."""
        return self._compress.compress(data) + self._compress.flush(zlib.Z_SYNC_FLUSH)

    def feed(self, data: bytes) -> None:
        self._pending += data

    @property
    def backlog(self) -> int:
        """Compressed bytes received and not yet inflated."""
        return len(self._pending)

    def inflate(self, limit: int = INFLATE_STEP) -> bytes:
        """Up to ``limit`` decompressed bytes of what was fed; b"" once all is inflated."""
        if not self._pending or self.broken:
            return b""
        try:
            out = self._decompress.decompress(self._pending, limit)
        except zlib.error:
            self.broken = True
            self._pending = b""
            return b""
        self._pending = self._decompress.unconsumed_tail
        if self._decompress.eof:  # a final block: nothing may follow it on this stream
            self._pending = b""
        return out
