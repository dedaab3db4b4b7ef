"""A deflate bomb after COMPRESS=DEFLATE (RFC 4978): memory stays flat, other sessions are served.

After login a client turns on compression and sends one endless line that
inflates a thousandfold (512 MiB from ~0.5 MiB). The imap process must inflate
it in bounded steps under the connection's byte budget, yielding to other
connections, rather than expanding each read whole; its peak resident memory
(VmHWM) is compared before and after, while a bystander logs in and runs NOOP.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path

from tests.hostile.test_imap_literal_flood import Bystander
from tests.support.hostile import (
    LEDGER,
    PASSWORD,
    Closed,
    Conn,
    Suite,
    address,
    no_traceback,
    still_serves,
)

BOMB_MIB = 512
PEAK_GROWTH_LIMIT = 32 * 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


class DeflateConn(Conn):
    """Conn that compresses what it sends and inflates what it reads once ``deflate()`` is on."""

    compressing = False

    def deflate(self) -> None:
        self.compressing = True
        self._out = zlib.compressobj(9, zlib.DEFLATED, -15)
        self._in = zlib.decompressobj(-15)
        self.buffer = self._in.decompress(self.buffer)

    def send(self, data: bytes) -> None:
        if self.compressing:
            data = self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH)
        super().send(data)

    def send_raw(self, data: bytes) -> None:
        super().send(data)

    def _fill(self) -> None:
        if not self.compressing:
            super()._fill()
            return
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed(self.buffer.decode("latin-1"))
        data = self._in.decompress(chunk)
        self.buffer += data
        self.received += data


def test_deflate_bomb_after_compress_keeps_memory_flat(hostile_suite: Suite) -> None:
    pid = hostile_suite.processes["imap"].pid
    Bystander(hostile_suite).once()  # warm up before the baseline
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = b"A" * (1024 * 1024)
    bomb = b"".join(squeeze.compress(block) for _ in range(BOMB_MIB))
    bomb += squeeze.flush(zlib.Z_SYNC_FLUSH)
    with Bystander(hostile_suite).running() as bystander, \
            DeflateConn(hostile_suite.ports["imaps-993"], tls=True, timeout=60) as conn:
        assert conn.line().startswith(b"* OK")
        conn.send(f'l LOGIN "{address("alice")}" "{PASSWORD}"\r\n'.encode())
        assert conn.tagged(b"l")[1].startswith(b"l OK")
        conn.send(b"z COMPRESS DEFLATE\r\n")
        assert conn.tagged(b"z")[1] == b"z OK DEFLATE active"
        conn.deflate()
        before = peak_rss(pid)
        started = time.monotonic()
        conn.send_raw(bomb)
        conn.send(b"\r\nn NOOP\r\n")
        untagged, done = conn.tagged(b"n")
        took = time.monotonic() - started
        assert done == b"n OK NOOP completed", done
        assert any(b"line too long" in line for line in untagged), untagged
        growth = peak_rss(pid) - before
        no_traceback(conn)
    print(f"imap peak RSS grew {growth >> 10} KiB while inflating a {BOMB_MIB} MiB deflate "
          f"bomb of {len(bomb)} bytes in {took:.1f} s")
    LEDGER.tried_on("imaps-993")
    LEDGER.check("imaps-993", growth < PEAK_GROWTH_LIMIT,
                 f"a {BOMB_MIB} MiB deflate bomb grew imap's peak by {growth >> 20} MiB")
    bystander.check()
    still_serves(hostile_suite, "imaps-993")
