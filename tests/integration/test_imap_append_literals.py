"""APPEND through the imap service process after the literal limits: large, multi, pipelined."""

from __future__ import annotations

import hashlib
import socket
import ssl

# the service process and account fixtures of test_imap_service, requested by name below
from tests.integration.test_imap_service import (  # noqa: F401
    PASSWORD,
    Account,
    Server,
    account,
    certs,
    domain,
    imaps,
    server,
    unverified,
)


def big_message(size: int) -> bytes:
    header = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: big\r\n\r\n"
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    return header + line * ((size - len(header)) // len(line))


def raw_session(imap: Server) -> ssl.SSLSocket:
    sock = socket.create_connection((imap.host, imap.tls_port), timeout=30)
    return unverified().wrap_socket(sock)


def read_tagged(sock: ssl.SSLSocket, tag: bytes) -> bytes:
    data = b""
    while not any(line.startswith(tag + b" ") for line in data.split(b"\r\n")):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def test_append_of_20_mb_is_stored_byte_exact(server: Server,  # noqa: F811
                                              account: Account) -> None:  # noqa: F811
    message = big_message(20 * 1024 * 1024)
    client = imaps(server, account)
    try:
        typ, data = client.append("INBOX", None, None, message)
        assert typ == "OK" and b"APPENDUID" in data[0]
        client.select("INBOX", readonly=True)
        typ, data = client.uid("FETCH", "1:*", "(RFC822.SIZE BODY.PEEK[])")
        assert typ == "OK"
        assert f"RFC822.SIZE {len(message)}".encode() in data[0][0]
        assert hashlib.sha256(data[0][1]).digest() == hashlib.sha256(message).digest()
    finally:
        client.logout()


def test_multiappend_and_pipelined_login_with_literals(server: Server,  # noqa: F811
                                                       account: Account) -> None:  # noqa: F811
    first = b"Subject: one\r\n\r\nfirst\r\n"
    second = big_message(3 * 1024 * 1024)  # past the 1M in-memory threshold: spooled
    user, password = account.address.encode(), PASSWORD.encode()
    sock = raw_session(server)
    try:
        assert sock.recv(65536).startswith(b"* OK")
        # LOGIN with literal+ arguments and an APPEND of two messages, all in one write
        sock.sendall(b"a LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(user), user, len(password),
                                                                  password)
                     + b"b APPEND INBOX {%d+}\r\n%s (\\Seen) {%d+}\r\n%s\r\n"
                     % (len(first), first, len(second), second))
        replies = read_tagged(sock, b"b")
        assert b"a OK" in replies, replies
        assert b"b OK [APPENDUID" in replies, replies
        sock.sendall(b"c SELECT INBOX\r\n")
        assert b"* 2 EXISTS" in read_tagged(sock, b"c")
        sock.sendall(b"d FETCH 1:2 (FLAGS RFC822.SIZE)\r\n")
        fetched = read_tagged(sock, b"d")
        assert f"RFC822.SIZE {len(first)}".encode() in fetched
        assert f"RFC822.SIZE {len(second)}".encode() in fetched
        assert b"\\Seen" in fetched
        sock.sendall(b"e LOGOUT\r\n")
        read_tagged(sock, b"e")
    finally:
        sock.close()
