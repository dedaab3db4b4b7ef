"""Hostile messages through a real mda process, read back over a real imap process.

Each message is spooled and put on the `deliver` stream, delivered by the mda,
then fetched with imaplib: BODYSTRUCTURE and ENVELOPE answer OK, BODY[] is the
stored bytes exactly, and both services are still alive and responsive.
"""

from __future__ import annotations

import imaplib
import re
import secrets
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.suite import PASSWORD, Running, Suite

pytestmark = pytest.mark.slow

DOMAIN = "hostile.example.test"
MARKER_DIR = Path("/tmp")  # a shell would have created a file here


class Hostile:
    """One mda and one imap over a suite of the module's own."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.mda, self.imap = suite.start_all("mda", "imap")

    def deliver_and_read(self, data: bytes, timeout: float = 60.0) -> tuple[bytes, bytes]:
        """Deliver ``data`` to a new account; (BODYSTRUCTURE+ENVELOPE response, BODY[])."""
        address = f"h{secrets.token_hex(4)}@{DOMAIN}"
        self.suite.add_user(address)
        started = time.monotonic()
        self.suite.deliver_and_wait(address, data, timeout=timeout)
        delivered = time.monotonic()
        client = imaps(self.imap, address)
        try:
            assert client.select("INBOX") == ("OK", [b"1"])
            typ, meta = client.uid("FETCH", "1", "(BODYSTRUCTURE ENVELOPE)")
            assert typ == "OK", meta
            typ, body = client.uid("FETCH", "1", "(BODY.PEEK[])")
            assert typ == "OK", body
            assert client.noop()[0] == "OK"
        finally:
            client.logout()
        print(f"\n{len(data)} bytes: mda {delivered - started:.2f} s, "
              f"imap read {time.monotonic() - delivered:.2f} s")
        self.assert_alive()
        return flatten(meta), literal(body)

    def assert_alive(self) -> None:
        for running in (self.mda, self.imap):
            status, _ = running.process.healthz()
            assert status == 200, running.process.output[-3000:]
            assert "Traceback" not in running.process.output, running.process.output[-3000:]


@pytest.fixture(scope="module")
def hostile(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    with Suite(redis_url, tmp_path_factory.mktemp("hostile")) as suite:
        yield Hostile(suite)


def imaps(running: Running, address: str) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the suite's self-signed certificate
    client = imaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=context, timeout=120)
    client.login(address, PASSWORD)
    return client


def flatten(response: list[object]) -> bytes:
    """imaplib's FETCH response (lines and literal tuples) as one byte string."""
    out = b""
    for item in response:
        if isinstance(item, tuple):
            out += item[0] + item[1]
        elif isinstance(item, bytes):
            out += item
    return out


def literal(response: list[object]) -> bytes:
    [found] = [item[1] for item in response if isinstance(item, tuple)]
    assert isinstance(found, bytes)
    return found


HEAD = (b"From: Mallory <mallory@remote.test>\r\nTo: victim@" + DOMAIN.encode() + b"\r\n"
        b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <h@remote.test>\r\n")


def test_thousand_level_nested_multiparts(hostile: Hostile) -> None:
    depth = 1000
    opening = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
                       for i in range(depth))
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth + 1)))
    data = (HEAD + b"Subject: deep\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + opening
            + b"--b1000\r\nContent-Type: text/plain\r\n\r\nbottom" + closing)
    meta, body = hostile.deliver_and_read(data)
    assert body == data
    assert b"BODYSTRUCTURE (" in meta and b'"deep"' in meta


def test_hundred_thousand_parts(hostile: Hostile) -> None:
    parts = b"".join(b"--p\r\nContent-Type: text/plain\r\n\r\n%d\r\n" % i for i in range(100_000))
    data = (HEAD + b"Subject: many parts\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=p\r\n\r\n" + parts + b"--p--\r\n")
    meta, body = hostile.deliver_and_read(data)
    assert body == data
    assert b"BODYSTRUCTURE (" in meta


def test_fifty_megabyte_single_line(hostile: Hostile) -> None:
    data = HEAD + b"Subject: one long line\r\n\r\n" + b"A" * (50 * 1024 * 1024) + b"\r\n"
    meta, body = hostile.deliver_and_read(data, timeout=180)
    assert len(body) == len(data) and body == data
    assert b"BODYSTRUCTURE (" in meta


def test_malformed_mime_boundaries(hostile: Hostile) -> None:
    data = (HEAD + b"Subject: broken boundaries\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="never-used"\r\n\r\n'
            b"--wrong\r\nContent-Type: text/plain\r\n\r\nno delimiter matches\r\n"
            b"--never-used\r\nContent-Type: multipart/alternative\r\n\r\n"  # no boundary param
            b"inner without boundary\r\n--never-usedX\r\n"
            b"--never-used\r\nContent-Type: text/plain\r\n\r\nunterminated last part")
    meta, body = hostile.deliver_and_read(data)
    assert body == data
    assert b"BODYSTRUCTURE (" in meta


def test_invalid_charsets_and_raw_eight_bit_headers(hostile: Hostile) -> None:
    data = (b"From: =?x-bogus?Q?M=FCller?= <m@remote.test>\r\n"
            b"To: J\xc3\xbcrgen <victim@" + DOMAIN.encode() + b">\r\n"
            b"Subject: caf\xc3\xa9 \xff\xfe raw latin \xe9 =?utf-8?B?!!!invalid?=\r\n"
            b"X-Raw: \x80\x81\x82\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: text/plain; charset="x-\xff-invalid"\r\n\r\n'
            b"body \xe9\xff\xc3\x28\r\n")
    meta, body = hostile.deliver_and_read(data)
    assert body == data
    assert b"ENVELOPE (" in meta


def test_prototype_pollution_header_names(hostile: Hostile) -> None:
    data = (HEAD + b"__proto__: {\"polluted\": true}\r\nconstructor: prototype\r\n"
            b"prototype: x\r\n__defineGetter__: y\r\nhasOwnProperty: z\r\n"
            b"Subject: proto\r\nContent-Type: text/plain; __proto__=evil\r\n\r\nbody\r\n")
    meta, body = hostile.deliver_and_read(data)
    assert body == data
    assert b'"proto"' in meta


def test_attachment_names_with_shell_metacharacters(hostile: Hostile) -> None:
    token = secrets.token_hex(6)
    names = [f"a;touch {MARKER_DIR}/pwn-{token}-1;.zip",
             f"$(touch {MARKER_DIR}/pwn-{token}-2).tar.gz",
             f"`touch {MARKER_DIR}/pwn-{token}-3`.rar",
             f"../../../../tmp/pwn-{token}-4.7z"]
    parts = b"".join(
        b"--s\r\nContent-Type: application/zip; name=\"" + n.encode() + b"\"\r\n"
        b"Content-Disposition: attachment; filename=\"" + n.encode() + b"\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nUEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==\r\n"
        for n in names)
    data = (HEAD + b"Subject: archives\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=s\r\n\r\n" + parts + b"--s--\r\n")
    meta, body = hostile.deliver_and_read(data)
    assert body == data
    for name in names:
        # the names come back as data, quoted, in BODYSTRUCTURE
        assert name.encode() in meta or re.escape(name).encode() in meta, meta[:2000]
    assert not list(MARKER_DIR.glob(f"pwn-{token}-*"))
