"""COMPRESS=DEFLATE (RFC 4978) through the imap service process, inside TLS."""

from __future__ import annotations

import threading
import time
import zlib
from pathlib import Path

import pytest

from tests.integration.imap_raw import RawClient

# the service process and account fixtures of test_imap_service, requested by name below
from tests.integration.test_imap_service import (  # noqa: F401
    MESSAGE,
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


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """The process's resident memory; ``VmHWM``: its peak, however briefly it was reached."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def test_rfc4978_example_then_a_second_compress_is_refused(server: Server,  # noqa: F811
                                                           account: Account) -> None:  # noqa: F811
    client = RawClient(server, account)
    try:
        assert b"COMPRESS=DEFLATE" in client.command(b"c CAPABILITY")
        # RFC 4978 section 3's example, inside TLS (implicit TLS port)
        assert client.start_compression() == b"z OK DEFLATE active\r\n"
        assert client.command(b"c COMPRESS DEFLATE") == (
            b"c NO [COMPRESSIONACTIVE] DEFLATE active via COMPRESS\r\n")
        reply = client.command(b"s SELECT INBOX")
        assert reply.endswith(b"s OK [READ-WRITE] SELECT completed\r\n"), reply
        reply = client.command(b"a APPEND INBOX {%d+}\r\n%s" % (len(MESSAGE), MESSAGE))
        assert b"a OK [APPENDUID" in reply
        reply = client.command(b"f FETCH 1 (BODY.PEEK[])")
        assert b"BODY[] {%d}\r\n%s)" % (len(MESSAGE), MESSAGE) in reply
        assert client.command(b"q LOGOUT").endswith(b"q OK LOGOUT completed\r\n")
    finally:
        client.close()


def test_compress_before_login_is_refused_and_unknown_mechanisms_are_bad(
        server: Server, account: Account) -> None:  # noqa: F811
    client = RawClient(server)
    try:
        assert client.command(b"a COMPRESS DEFLATE").startswith(b"a BAD")
        reply = client.command(b'l LOGIN "%s" "%s"' % (account.address.encode(),
                                                     PASSWORD.encode()))
        assert b"l OK" in reply
        assert client.command(b"b COMPRESS LZ4").startswith(b"b BAD")
        assert client.start_compression() == b"z OK DEFLATE active\r\n"
        assert client.command(b"n NOOP") == b"n OK NOOP completed\r\n"
    finally:
        client.close()


def test_compressed_session_sees_another_devices_append_in_idle(
        server: Server, account: Account) -> None:  # noqa: F811
    phone = RawClient(server, account)
    laptop = imaps(server, account)
    try:
        assert phone.start_compression() == b"z OK DEFLATE active\r\n"
        phone.command(b"s SELECT INBOX")
        phone.send(b"i IDLE\r\n")
        assert phone.read_line().startswith(b"+")
        laptop.append("INBOX", None, None, MESSAGE)
        assert phone.read_line() == b"* 1 EXISTS\r\n"
        phone.send(b"DONE\r\n")
        assert phone.read_until_tagged(b"i").endswith(b"i OK IDLE terminated\r\n")
        reply = phone.command(b"f FETCH 1 (RFC822.SIZE)")
        assert b"RFC822.SIZE %d" % len(MESSAGE) in reply
        # and the phone's change reaches the laptop
        phone.command(b"t STORE 1 +FLAGS (\\Flagged)")
        laptop.select("INBOX")
        assert b"\\Flagged" in laptop.fetch("1", "(FLAGS)")[1][0]
    finally:
        phone.close()
        laptop.logout()


@pytest.mark.slow
def test_a_deflate_bomb_keeps_memory_bounded_and_others_served(
        server: Server, account: Account) -> None:  # noqa: F811
    """512 MiB of one endless line, sent as ~0.5 MiB of deflate: the process does not grow
    by anything like that, the bomber's session survives it, and another client is served
    while it inflates."""
    pid = server.process.pid
    bomber = RawClient(server, account)
    bystander = RawClient(server, account)
    try:
        assert bomber.start_compression() == b"z OK DEFLATE active\r\n"
        bystander.command(b"s SELECT INBOX")
        before = rss_kib(pid, "VmHWM")
        squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
        block = b"A" * (1024 * 1024)
        bomb = b"".join(squeeze.compress(block) for _ in range(512))
        bomb += squeeze.flush(zlib.Z_SYNC_FLUSH)
        assert len(bomb) < 1024 * 1024

        replies: list[bytes] = []

        def throw() -> None:
            bomber.sock.sendall(bomb)
            # the line ends; the bomber's session goes on, its garbage answered BAD once
            bomber.send(b"\r\nn NOOP\r\n")
            replies.append(bomber.read_until_tagged(b"n"))

        sender = threading.Thread(target=throw)
        started_bomb = time.monotonic()
        sender.start()
        peak = before
        answered = []
        deadline = time.monotonic() + 120
        # while the server inflates the bomb (until the bomber's NOOP is answered)
        while sender.is_alive() and time.monotonic() < deadline:
            started = time.monotonic()
            assert bystander.command(b"n NOOP").endswith(b"n OK NOOP completed\r\n")
            answered.append(time.monotonic() - started)
            peak = max(peak, rss_kib(pid))
            time.sleep(0.02)
        sender.join(timeout=5)
        took = time.monotonic() - started_bomb
        assert replies and replies[0].endswith(b"n OK NOOP completed\r\n"), replies
        assert b"BAD line too long" in replies[0]
        peak = rss_kib(pid, "VmHWM")
        # measured: +0 KiB and NOOPs in 0.13 s at most; inflating whole reads instead took
        # the peak up 16 MiB (one TLS record inflates to that) and a NOOP waited 2.4 s
        assert peak - before < 8 * 1024, (before, peak)
        assert len(answered) >= 3 and max(answered) < 1.5, (took, answered)
        started = time.monotonic()
        assert bystander.command(b"m NOOP").endswith(b"m OK NOOP completed\r\n")
        assert time.monotonic() - started < 5.0
    finally:
        bomber.close()
        bystander.close()
