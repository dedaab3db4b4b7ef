"""The outbound relay of a whole instance against a scripted remote MX (issue 5).

one.test runs its six services on 127.0.0.2; alice submits through one's msa
(smtplib, STARTTLS + AUTH) and reads her bounces over IMAP. The remote MX of
sink.test is :class:`tests.support.smtpsink.SMTPSink` on 127.0.0.1, on the port
number one's relay uses (POSTROOM_SMTP_OUTBOUND_PORT). The local part of each
recipient chooses the sink's behaviour: ``tempfail-*`` gets one 451 then 250,
``reject-*`` 550, ``hang-*`` no answer to its first final dot.
"""

from __future__ import annotations

import email
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from email import policy
from email.message import Message
from typing import Any

import pytest

from postroom.store import spool
from tests.support.dns import DNSServer
from tests.support.instance import Instance, fresh_user, queue_id_of, settle, shared_free_port
from tests.support.redisdb import wait_until
from tests.support.smtpsink import Received, SinkConfig, SMTPSink

pytestmark = pytest.mark.slow

ONE, SINK = "127.0.0.2", "127.0.0.1"
UNREACHABLE = "127.0.0.9"  # loopback, and nothing listens there
LIFETIME = 12.0


class Script:
    """The sink's replies by recipient local part, and how often each was asked."""

    def __init__(self) -> None:
        self.rcpt_calls: Counter[str] = Counter()

    def rcpt(self, address: str) -> bytes:
        self.rcpt_calls[address] += 1
        if address.startswith("tempfail-") and self.rcpt_calls[address] == 1:
            return b"451 4.7.1 try again later"
        if address.startswith("reject-"):
            return b"550 5.1.1 no such user here"
        return b"250 2.1.5 ok"

    def data(self, received: Received) -> bytes | None:
        hang = [a for a in received.rcpts if a.startswith("hang-")]
        if hang and not any(set(h.rcpts) & set(hang) for h in self.sink.hung):
            return None  # a remote that stalls after the dot: the worker is killed meanwhile
        return b"250 2.0.0 queued"

    sink: SMTPSink


@pytest.fixture(scope="module")
def script(twisted_reactor: Any) -> Iterator[Script]:
    yield Script()


@pytest.fixture(scope="module")
def one(redis_url: str, dns_server_session: DNSServer, script: Script,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    port = shared_free_port(ONE, SINK)
    sink = SMTPSink(SinkConfig(rcpt=script.rcpt, data=script.data), port=port)
    script.sink = sink
    try:
        with Instance("one.test", ONE, redis_url, tmp_path_factory.mktemp("relay"),
                      smtp_port=port, dns=dns_server_session,
                      env={"POSTROOM_QUEUE_LIFETIME": f"{LIFETIME:g}s"}) as instance:
            # no mail comes in over port 25 here, so no dmarc; no POP3 either
            instance.spawn(("mda", "mta", "msa", "imap"))
            instance.setup_domain()  # while the services start
            instance.wait()
            yield instance
    finally:
        sink.stop()


@pytest.fixture(autouse=True)
def zones(one: Instance, dns_server: DNSServer) -> DNSServer:
    one.publish("p=reject")
    dns_server.load({"sink.test": {"MX": [(10, "mx.sink.test")]},
                     "mx.sink.test": {"A": [SINK]},
                     "nullmx.test": {"MX": [(0, ".")]},
                     "gone.test": {"MX": [(10, "mx.gone.test")]},
                     "mx.gone.test": {"A": [UNREACHABLE]}})
    return dns_server


@pytest.fixture
def alice(one: Instance) -> str:
    return fresh_user(one, "alice")


def submit(one: Instance, alice: str, rcpt: str, mail_from: str | None = None) -> str:
    message = (f"From: {alice}\r\nTo: {rcpt}\r\nSubject: to {rcpt}\r\n\r\n"
               f"token {secrets.token_hex(6)}\r\n").encode()
    return queue_id_of(one.submit(alice, [rcpt], message, mail_from=mail_from))


def sink_copies(script: Script, rcpt: str) -> int:
    return sum(rcpt in r.rcpts for r in script.sink.received)


def delivery_status(raw: bytes) -> tuple[Message, str]:
    """The DSN as parsed, and its message/delivery-status part as text."""
    dsn = email.message_from_bytes(raw, policy=policy.compat32)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    [part] = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"]
    blocks = part.get_payload()
    text = "\n".join(str(b) for b in blocks) if isinstance(blocks, list) else str(blocks)
    return dsn, text


def field(text: str, name: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.lower().startswith(name.lower() + ":")]


def test_a_4xx_is_retried_on_schedule_and_delivered_later(
        one: Instance, alice: str, script: Script) -> None:
    rcpt = f"tempfail-{secrets.token_hex(3)}@sink.test"
    started = time.monotonic()
    queue_id = submit(one, alice, rcpt)
    wait_until(lambda: one.spool_states(queue_id) == ["delivered"], timeout=30, interval=0.1)
    took = time.monotonic() - started
    print(f"\n4xx then 250: delivered {took:.2f}s after submission (retry initial 1s)")
    [recipient] = one.db.run_sync(spool.get_spool, queue_id).recipients
    assert recipient.attempts == 1
    assert script.rcpt_calls[rcpt] == 2
    assert sink_copies(script, rcpt) == 1
    assert took >= 1.0  # not retried before the back-off said so
    events = [e for e in one.log_events("mta") if e.get("queue_id") == queue_id
              and e.get("recipient") == rcpt]
    [deferred] = [e for e in events if e.get("result") == "deferred"]
    [delivered] = [e for e in events if e.get("result") == "delivered"]
    due = datetime.fromisoformat(deferred["next_attempt_at"])
    first = datetime.fromisoformat(deferred["ts"].replace("Z", "+00:00"))
    done = datetime.fromisoformat(delivered["ts"].replace("Z", "+00:00"))
    print(f"retry due {(due - first).total_seconds():.2f}s after the 451, "
          f"delivered {(done - first).total_seconds():.2f}s after it")
    # the deferral is logged after its commit, a moment after next_attempt_at was set to
    # now + POSTROOM_RETRY_INITIAL (1s): a busy machine eats into the gap, never past half
    assert due - first >= timedelta(seconds=0.5)
    assert done >= due - timedelta(milliseconds=50)  # on schedule: never early
    assert done - due < timedelta(seconds=10)  # and not forgotten


def test_a_5xx_produces_exactly_one_dsn_to_the_sender(
        one: Instance, alice: str, script: Script) -> None:
    rcpt = f"reject-{secrets.token_hex(3)}@sink.test"
    started = time.monotonic()
    submit(one, alice, rcpt)
    [raw] = one.wait_for_mail(alice)
    print(f"\n5xx: DSN in the sender's INBOX {time.monotonic() - started:.2f}s after submission")
    dsn, status = delivery_status(raw)
    assert dsn["From"].lower().startswith("mail delivery system <mailer-daemon@")
    assert field(status, "Action") == ["failed"]
    assert field(status, "Status") == ["5.1.1"], status
    assert field(status, "Final-Recipient") == [f"rfc822; {rcpt}"], status
    assert "550 5.1.1" in field(status, "Diagnostic-Code")[0]
    settle(3.0)
    assert len(one.fetch_all(alice)) == 1, "a second DSN"


def test_a_null_mx_bounces_at_once(one: Instance, alice: str, script: Script) -> None:
    rcpt = f"anyone-{secrets.token_hex(3)}@nullmx.test"
    started = time.monotonic()
    queue_id = submit(one, alice, rcpt)
    [raw] = one.wait_for_mail(alice, timeout=20)
    print(f"\nnull MX: DSN after {time.monotonic() - started:.2f}s")
    _dsn, status = delivery_status(raw)
    assert field(status, "Status") == ["5.1.10"], status
    assert one.spool_states(queue_id) == ["bounced"]
    [(attempts,)] = one.query("SELECT attempts FROM spool_recipients WHERE address = :a", a=rcpt)
    assert attempts <= 1  # no retry was scheduled


def test_an_unreachable_destination_expires_into_a_bounce_after_the_lifetime(
        one: Instance, alice: str) -> None:
    rcpt = f"someone-{secrets.token_hex(3)}@gone.test"
    started = time.monotonic()
    queue_id = submit(one, alice, rcpt)
    [raw] = one.wait_for_mail(alice, timeout=LIFETIME + 30)
    took = time.monotonic() - started
    print(f"\nunreachable MX: expired into a DSN after {took:.2f}s (lifetime {LIFETIME:g}s)")
    assert took >= LIFETIME - 1
    _dsn, status = delivery_status(raw)
    assert field(status, "Action") == ["failed"]
    assert "expired" in status, status
    [(attempts,)] = one.query("SELECT attempts FROM spool_recipients WHERE address = :a", a=rcpt)
    assert attempts >= 2, "it was retried before it expired"
    assert one.spool_states(queue_id) == ["bounced"]


def test_a_failure_for_the_null_sender_never_generates_a_bounce(
        one: Instance, alice: str, script: Script) -> None:
    rcpt = f"reject-{secrets.token_hex(3)}@sink.test"
    bounces_before = one.query("SELECT count(*) FROM spool_messages WHERE kind = 'bounce'")
    queue_id = submit(one, alice, rcpt, mail_from="")
    wait_until(lambda: one.spool_states(queue_id) in (["bounced"], ["failed"]), timeout=30)
    wait_until(lambda: any(e.get("event") == "bounce not sent" and e.get("queue_id") == queue_id
                           for e in one.log_events("mta")), timeout=10)
    settle(2.0)
    assert one.query("SELECT count(*) FROM spool_messages WHERE kind = 'bounce'") == \
        bounces_before
    assert one.fetch_all(alice) == []


def test_a_worker_killed_mid_send_is_replaced_and_the_message_never_lost(
        one: Instance, alice: str, script: Script) -> None:
    rcpt = f"hang-{secrets.token_hex(3)}@sink.test"
    queue_id = submit(one, alice, rcpt)
    wait_until(lambda: any(rcpt in h.rcpts for h in script.sink.hung), timeout=30)
    one.kill("mta")  # SIGKILL while the remote holds the final dot unanswered
    assert one.spool_states(queue_id) == ["pending"]
    started = time.monotonic()
    one.start(["mta"])
    wait_until(lambda: one.spool_states(queue_id) == ["delivered"], timeout=60, interval=0.1)
    print(f"\nkilled worker: delivered by its replacement {time.monotonic() - started:.2f}s "
          "after the restart began")
    assert sink_copies(script, rcpt) == 1  # the hung copy was never acknowledged
