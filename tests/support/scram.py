"""A small SCRAM-SHA-256 client (RFC 5802, RFC 7677) for tests, and its SMTP and IMAP drivers.

Neither smtplib nor imaplib knows SCRAM, so the tests drive the exchange over
their real sockets: :func:`smtp_scram` through ``smtplib.SMTP.docmd``,
:func:`imaplib_scram` through ``imaplib.IMAP4.authenticate`` (continuations),
and :func:`imap_scram_sasl_ir` on a raw TLS socket with the initial response
on the command line (RFC 4959). The client is written from the RFC, not from
the server's code, so that the two check each other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import imaplib
import secrets
import smtplib
import socket
import ssl
import unicodedata


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


class ScramClient:
    """One client side of a SCRAM-SHA-256 exchange without channel binding."""

    def __init__(self, username: str, password: str, *, nonce: str | None = None) -> None:
        self.username = username
        self.password = password
        self.nonce = nonce or secrets.token_urlsafe(18)
        self.server_signature = b""

    def first(self) -> bytes:
        """The client-first-message."""
        name = self.username.replace("=", "=3D").replace(",", "=2C")
        self.client_first_bare = f"n={name},r={self.nonce}"
        return f"n,,{self.client_first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        """The client-final-message, with the proof for ``server_first``."""
        text = server_first.decode()
        attrs = dict(part.split("=", 1) for part in text.split(","))
        if not attrs["r"].startswith(self.nonce):
            raise ValueError("server nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac(
            "sha256", unicodedata.normalize("NFKC", self.password).encode(),
            base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c={base64.b64encode(b'n,,').decode()},r={attrs['r']}"
        auth_message = f"{self.client_first_bare},{text},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> bool:
        """Whether the server-final-message proves the server knew our secrets."""
        return server_final == b"v=" + base64.b64encode(self.server_signature)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def smtp_scram(smtp: smtplib.SMTP, username: str, password: str, *,
               initial: bool = True) -> tuple[int, bytes, ScramClient]:
    """Run AUTH SCRAM-SHA-256 on an EHLO'd connection: (final code, its text, the client).

    A bad server-final message raises AssertionError; the exchange is over when
    this returns (a 535/454 may come before the server-final one).
    """
    client = ScramClient(username, password)
    if initial:
        code, text = smtp.docmd("AUTH", "SCRAM-SHA-256 " + b64(client.first()))
    else:
        code, text = smtp.docmd("AUTH", "SCRAM-SHA-256")
        if code != 334:
            return code, text, client
        code, text = smtp.docmd(b64(client.first()))
    if code != 334:
        return code, text, client
    code, text = smtp.docmd(b64(client.final(base64.b64decode(text))))
    if code != 334:
        return code, text, client
    assert client.verify(base64.b64decode(text)), text
    code, text = smtp.docmd("")
    return code, text, client


def imaplib_scram(imap: imaplib.IMAP4, username: str, password: str) -> ScramClient:
    """``imap.authenticate("SCRAM-SHA-256", ...)``; raises imaplib.IMAP4.error on NO."""
    client = ScramClient(username, password)
    answers = iter([lambda _data: client.first(), client.final])

    def respond(challenge: bytes) -> bytes:
        step = next(answers, None)
        if step is None:
            assert client.verify(challenge), challenge
            return b""
        return step(challenge)

    imap.authenticate("SCRAM-SHA-256", respond)
    return client


def _read_line(stream: ssl.SSLSocket, buffer: bytearray) -> bytes:
    while b"\r\n" not in buffer:
        chunk = stream.recv(4096)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\r\n")
    buffer[:] = rest
    return line


def imap_scram_sasl_ir(port: int, username: str, password: str, context: ssl.SSLContext, *,
                       source: str = "127.0.0.1") -> list[bytes]:
    """AUTHENTICATE with SASL-IR over implicit TLS to 127.0.0.1:``port`` from ``source``;
    the lines after the greeting, in order."""
    client = ScramClient(username, password)
    buffer = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        _read_line(tls, buffer)
        tls.sendall(b"a AUTHENTICATE SCRAM-SHA-256 " + b64(client.first()).encode() + b"\r\n")
        lines = [_read_line(tls, buffer)]
        if lines[-1].startswith(b"+ "):
            tls.sendall(b64(client.final(base64.b64decode(lines[-1][2:]))).encode() + b"\r\n")
            lines.append(_read_line(tls, buffer))
            if lines[-1].startswith(b"+ "):
                assert client.verify(base64.b64decode(lines[-1][2:])), lines
                tls.sendall(b"\r\n")
                lines.append(_read_line(tls, buffer))
        tls.sendall(b"b LOGOUT\r\n")
    return lines
