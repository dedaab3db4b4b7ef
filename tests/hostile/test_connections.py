"""Slow and idle connections by the hundred, and a connection flood from one address.

Slow clients hold a socket and a half-sent line; they must not stop anyone
else (Twisted is event-driven: no thread per connection). A flood from one
address meets POSTROOM_MAX_CONNECTIONS_PER_IP (20 in the campaign).
"""

from __future__ import annotations

import socket

import pytest

from tests.support.hostile import LEDGER, Closed, Conn, Suite, still_serves

LISTENERS = ["smtp-25", "smtp-587", "smtps-465", "pop3-110", "pop3s-995", "imap-143",
             "imaps-993"]
SLOW_PER_LISTENER = 45  # 315 in all, spread over addresses so the per-IP limit is not what holds
PARTIAL = {"smtp": b"EHLO slow", "pop3": b"USER slo", "imap": b"a LOGIN slo"}


def test_hundreds_of_slow_and_idle_connections_do_not_stop_normal_clients(
        hostile_suite: Suite) -> None:
    held: list[socket.socket] = []
    try:
        for listener in LISTENERS:
            for i in range(SLOW_PER_LISTENER):
                sock = socket.create_connection(
                    ("127.0.0.1", hostile_suite.ports[listener]), timeout=10,
                    source_address=(f"127.0.4.{i % 15 + 1}", 0))
                if i % 2 and not listener.startswith(("smtps", "pop3s", "imaps")):
                    # half of them trickle a partial command and never finish it
                    sock.sendall(PARTIAL[listener.split("-")[0].rstrip("s")])
                held.append(sock)
            LEDGER.tried_on(listener, SLOW_PER_LISTENER)
        for listener in LISTENERS:
            still_serves(hostile_suite, listener)
    finally:
        for sock in held:
            sock.close()


def flood(suite: Suite, listener: str, source: str, count: int) -> list[bytes]:
    """Open ``count`` connections from ``source``; the first line each one got."""
    conns, firsts = [], []
    try:
        for _ in range(count):
            conn = Conn(suite.ports[listener], source=source)
            conns.append(conn)
            try:
                firsts.append(conn.line())
            except (Closed, OSError):
                firsts.append(b"")
    finally:
        for conn in conns:
            conn.close()
    LEDGER.tried_on(listener, count)
    return firsts


@pytest.mark.parametrize(("listener", "refusal"), [("smtp-25", b"421"), ("smtp-587", b"421"),
                                                   ("pop3-110", b"-ERR")])
def test_connection_flood_from_one_address_meets_the_per_ip_limit(
        hostile_suite: Suite, listener: str, refusal: bytes) -> None:
    firsts = flood(hostile_suite, listener, "127.0.5.1", 30)
    refused = [f for f in firsts if f.startswith(refusal) or f == b""]
    LEDGER.check(listener, len(refused) >= 10,
                 f"only {len(refused)} of 30 connections refused (limit 20)")
    assert len(firsts) - len(refused) <= 20
    still_serves(hostile_suite, listener)


def test_imap_connection_flood_from_one_address_meets_the_per_ip_limit(
        hostile_suite: Suite) -> None:
    firsts = flood(hostile_suite, "imap-143", "127.0.5.2", 30)
    refused = [f for f in firsts if f.startswith(b"* BYE") or f == b""]
    assert len(refused) >= 10, f"only {len(refused)} of 30 connections refused (limit 20)"


def test_imap_survives_a_connection_flood_from_one_address(hostile_suite: Suite) -> None:
    flood(hostile_suite, "imap-143", "127.0.5.3", 30)
    still_serves(hostile_suite, "imap-143")
