"""The relay never follows a hostile MX into our own network (issue 16).

A domain's owner writes its DNS, so the MX of ``evil`` domains may point at
loopback, where the campaign's SMTP sink listens on the port the real mta
relays to (POSTROOM_SMTP_OUTBOUND_PORT). Alice submits through the real msa;
the real mta (as shipped: POSTROOM_RELAY_ALLOWED_NETWORKS empty) must not
connect, must fail the recipients at once like a null MX (556 5.1.10) and must
tell Alice why in a DSN; the log and /metrics show the refusal.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from postroom.store import messages, spool
from tests.support.hostile import LEDGER, PASSWORD, Conn, Suite, address, no_traceback, wait_for
from tests.support.smtpsink import SMTPSink

LISTENER = "mta-relay"
# every way an attacker's DNS can say "loopback": MX A, MX AAAA (v6 and IPv4-mapped), no MX
ZONES = {
    "mx-a.evil.test": {"MX": [(10, "mx.mx-a.evil.test")]},
    "mx.mx-a.evil.test": {"A": ["127.0.0.1"]},
    "mx-mapped.evil.test": {"MX": [(10, "mx.mx-mapped.evil.test")]},
    "mx.mx-mapped.evil.test": {"AAAA": ["::ffff:127.0.0.1", "::1"]},
    "implicit.evil.test": {"A": ["127.0.0.1"]},
}
VICTIMS = ["postmaster@mx-a.evil.test", "root@mx-mapped.evil.test", "admin@implicit.evil.test"]


@pytest.fixture
def sink(hostile_suite: Suite, dns_server_session: Any, twisted_reactor: Any) -> Iterator[SMTPSink]:
    dns_server_session.load(ZONES)
    server = SMTPSink(port=hostile_suite.ports["relay-sink"])
    yield server
    server.stop()


def submit(suite: Suite, recipients: list[str], marker: bytes) -> str:
    """Alice sends over smtps-465; the queue id from the 250."""
    with Conn(suite.ports["smtps-465"], tls=True) as conn:
        assert conn.smtp()[0] == 220
        conn.send(b"EHLO client.example\r\n")
        assert conn.smtp()[0] == 250
        token = base64.b64encode(f"\0{address('alice')}\0{PASSWORD}".encode())
        conn.send(b"AUTH PLAIN " + token + b"\r\n")
        assert conn.smtp()[0] == 235
        conn.send(f"MAIL FROM:<{address('alice')}>\r\n".encode())
        assert conn.smtp()[0] == 250
        for rcpt in recipients:
            conn.send(f"RCPT TO:<{rcpt}>\r\n".encode())
            assert conn.smtp()[0] == 250
        conn.send(b"DATA\r\n")
        assert conn.smtp()[0] == 354
        conn.send(b"From: " + address("alice").encode() + b"\r\nSubject: " + marker
                  + b"\r\n\r\nhello\r\n.\r\n")
        code, text = conn.smtp()
        assert code == 250, text
        conn.send(b"QUIT\r\n")
        conn.smtp()
        no_traceback(conn)
    match = re.search(rb"queued as (\S+)", text)
    assert match, text
    return match.group(1).decode()


def final_states(suite: Suite, qid: str) -> dict[str, str] | None:
    """{recipient: state} once no recipient is pending any more."""
    info = suite.database.run_sync(spool.get_spool, qid)
    states = {r.address: str(r.state) for r in info.recipients}
    return states if states and "pending" not in states.values() else None


def dsns_for(suite: Suite, marker: bytes) -> list[email.message.EmailMessage]:
    """The DSNs spooled about the message whose Subject is ``marker`` (they return headers)."""
    return [email.message_from_bytes(blob, policy=email.policy.default)
            for blob in suite.spooled_blobs(marker) if b"message/delivery-status" in blob]


def status_blocks(dsn: email.message.EmailMessage) -> dict[str, Any]:
    """{final recipient: its per-recipient block} of one DSN, which must go to Alice."""
    assert dsn["To"] is not None and address("alice") in dsn["To"]
    report = dsn.get_payload()[1]
    assert report.get_content_type() == "message/delivery-status"
    return {b["Final-Recipient"].split(";", 1)[1].strip(): b for b in report.get_payload()[1:]}


def test_an_mx_on_loopback_is_never_connected_and_the_sender_learns_why(
        hostile_suite: Suite, sink: SMTPSink) -> None:
    marker = f"internal-mx-probe-{secrets.token_hex(6)}".encode()
    qid = submit(hostile_suite, VICTIMS, marker)
    LEDGER.tried_on(LISTENER, len(VICTIMS))
    states = wait_for(lambda: final_states(hostile_suite, qid), timeout=30)
    assert states, "the relay did not finish the message within 30 s"
    # the sink listens where the attacker's MX points: not one connection may reach it
    LEDGER.check(LISTENER, sink.sessions == [] and sink.received == [],
                 f"relay connected to an internal MX: {[r.rcpts for r in sink.received]}")
    assert states == {victim: "bounced" for victim in VICTIMS}

    info = hostile_suite.database.run_sync(spool.get_spool, qid)
    for rcpt in info.recipients:
        assert "556 5.1.10" in rcpt.last_error and "internal address" in rcpt.last_error

    # one DSN per destination domain, each recorded with that domain's results
    def every_dsn() -> list[email.message.EmailMessage] | None:
        found = dsns_for(hostile_suite, marker)
        return found if len(found) == len(VICTIMS) else None

    dsns = wait_for(every_dsn, timeout=10)
    assert dsns, "no DSN for the sender"
    diagnostics = {rcpt: block for dsn in dsns for rcpt, block in status_blocks(dsn).items()}
    assert set(diagnostics) == set(VICTIMS)
    for block in diagnostics.values():
        assert (block["Action"], block["Status"]) == ("failed", "5.1.10")
        assert "points to an internal address" in block["Diagnostic-Code"]
    assert "MX mx.mx-a.evil.test of mx-a.evil.test points to an internal address (127.0.0.1)" \
        in diagnostics["postmaster@mx-a.evil.test"]["Diagnostic-Code"]
    assert "has no MX and its address points to an internal address" in (
        diagnostics["admin@implicit.evil.test"]["Diagnostic-Code"])

    mta = hostile_suite.processes["mta"]
    refused = {(e.get("mx"), e.get("address")) for e in mta.log_events()
               if e.get("event") == "mx address refused, internal network"}
    assert {("mx.mx-a.evil.test", "127.0.0.1"), ("mx.mx-mapped.evil.test", "::ffff:127.0.0.1"),
            ("mx.mx-mapped.evil.test", "::1"), ("implicit.evil.test", "127.0.0.1")} <= refused
    status, body = mta.get("/metrics")
    assert status == 200
    count = re.search(rb"^postroom_relay_internal_mx_refused_total (\S+)$", body, re.M)
    assert count and float(count.group(1)) >= 4
    # the message itself is kept (for trace) and nothing else is lost
    assert hostile_suite.database.run_sync(messages.get_message, info.message_id)
