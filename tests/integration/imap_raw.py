"""A raw IMAP client over TLS for tests that stdlib clients cannot drive (literal8, COMPRESS)."""

from __future__ import annotations

import socket
import ssl
import zlib

from tests.integration.test_imap_service import PASSWORD, Account, Server, unverified


class RawClient:
    """Sends lines as given; reads replies up to a tagged line; optional RFC 4978 deflate."""

    def __init__(self, server: Server, account: Account | None = None) -> None:
        sock = socket.create_connection((server.host, server.tls_port), timeout=30)
        self.sock: ssl.SSLSocket = unverified().wrap_socket(sock)
        self.buf = b""
        self.deflate: zlib._Compress | None = None
        self.inflate: zlib._Decompress | None = None
        self.raw_received = 0  # bytes off the wire (compressed when compressing)
        self.read_line()  # greeting
        if account is not None:
            reply = self.command(b"l LOGIN \"%s\" \"%s\"" % (account.address.encode(),
                                                           PASSWORD.encode()))
            assert b"l OK" in reply, reply

    def send(self, data: bytes) -> None:
        if self.deflate is not None:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, self.buf
        self.raw_received += len(chunk)
        if self.inflate is not None:
            chunk = self.inflate.decompress(chunk)
        self.buf += chunk

    def read_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._recv()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def read_until_tagged(self, tag: bytes) -> bytes:
        """Everything up to and including the line tagged ``tag``."""
        marker = b"\r\n" + tag + b" "
        while True:
            seen = b"\r\n" + self.buf
            at = seen.find(marker)
            if at >= 0:
                end = seen.find(b"\r\n", at + len(marker))
                if end >= 0:
                    out = seen[2:end + 2]
                    self.buf = seen[end + 2:]
                    return out
            self._recv()

    def command(self, line: bytes) -> bytes:
        tag = line.split(b" ", 1)[0]
        self.send(line + b"\r\n")
        return self.read_until_tagged(tag)

    def start_compression(self) -> bytes:
        reply = self.command(b"z COMPRESS DEFLATE")
        if reply.endswith(b"z OK DEFLATE active\r\n"):
            self.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
            self.inflate = zlib.decompressobj(-15)
            # anything after the OK already read was compressed
            rest, self.buf = self.buf, b""
            if rest:
                self.buf = self.inflate.decompress(rest)
        return reply

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
