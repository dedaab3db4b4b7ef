"""DKIM signature flood (issue 16): messages with 40 signatures whose keys are never answered.

Each signature used to cost its own key lookup with no cap and no budget, and
the `policy` thread went on after the API had answered "tempfail": sixteen
such messages (one per thread) stalled every inbound check for minutes. Now at
most POSTROOM_DKIM_MAX_SIGNATURES are verified, those aligned with From:
first, within POSTROOM_DKIM_BUDGET (1.5 s here, see LIMITS), and a normal
message sent meanwhile still gets its verdict at once.

Live: the mta on port 25 in front of the real dmarc service, the loopback
DNS server dropping every query for the flood's selectors.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from postroom.mailauth import dkimsign
from postroom_dmarc.main import POLICY_THREADS
from tests.support.hostile import LEDGER, LIMITS, Suite, address, no_traceback, smtp_session

FLOOD_MESSAGES = POLICY_THREADS  # one per thread of the dmarc service's `policy` pool
DROPPED = 37  # signatures of relay.example, whose key lookups are never answered
ALIGNED = 3  # signatures of the From domain, flood.example (keys answered), last in the header
CAP = int(LIMITS["POSTROOM_DKIM_MAX_SIGNATURES"])
BUDGET = float(LIMITS["POSTROOM_DKIM_BUDGET"].removesuffix("s"))
SLACK = 2.5  # under the check's 5 s deadline, which each flood check took without the budget
PRIVATE, PUBLIC_TXT = dkimsign.generate_keys("ed25519-sha256")
SELECTOR = re.compile(rb"header\.s=([\w-]+)")


def zone(dns_server) -> None:
    dns_server.set_records("flood.example", "TXT", ["v=spf1 -all"])
    dns_server.set_records("_dmarc.flood.example", "TXT", ["v=DMARC1; p=reject"])
    for j in range(ALIGNED):
        dns_server.set_records(f"a{j}._domainkey.flood.example", "TXT", [PUBLIC_TXT])
    for i in range(DROPPED):
        dns_server.timeout(f"s{i}._domainkey.relay.example")


def flood_message(marker: bytes) -> bytes:
    base = (b"From: news@flood.example\r\nTo: " + address("carol").encode() + b"\r\n"
            b"Subject: " + marker + b"\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\n"
            b"forty signatures\r\n")
    signers = [("relay.example", f"s{i}") for i in range(DROPPED)]
    signers += [("flood.example", f"a{j}") for j in range(ALIGNED)]
    fields = b"".join(dkimsign.sign(base, d, s, PRIVATE, "ed25519-sha256") for d, s in signers)
    assert max(len(line) for line in fields.split(b"\r\n")) < 998
    return fields + base


def send(suite: Suite, sender: str, message: bytes, source: str,
         ready: threading.Barrier | None = None) -> tuple[int, bytes, float]:
    """(reply code to DATA, its text, seconds from the final dot to that reply)."""
    with smtp_session(suite, "smtp-25", source=source) as conn:
        conn.send(f"MAIL FROM:<{sender}>\r\n".encode())
        assert conn.smtp()[0] == 250
        conn.send(b"RCPT TO:<" + address("carol").encode() + b">\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"DATA\r\n")
        assert conn.smtp()[0] == 354
        conn.send(message)
        if ready is not None:
            ready.wait(30)
        started = time.monotonic()
        conn.send(b".\r\n")
        code, text = conn.smtp()
        elapsed = time.monotonic() - started
        conn.send(b"QUIT\r\n")
        conn.smtp()
        no_traceback(conn)
    return code, text, elapsed


def metric(suite: Suite, name: str) -> float:
    status, body = suite.processes["dmarc"].get("/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_dkim_flood_is_answered_within_the_budget_and_mail_keeps_flowing(hostile_suite,
                                                                         dns_server):
    suite = hostile_suite
    zone(dns_server)
    cap_skips = 'postroom_dkim_signatures_skipped_total{reason="cap"}'
    before = (metric(suite, cap_skips), metric(suite, "postroom_dkim_budget_exhausted_total"))
    markers = [f"flood-{secrets.token_hex(6)}".encode() for _ in range(FLOOD_MESSAGES)]
    messages = [flood_message(m) for m in markers]
    ready = threading.Barrier(FLOOD_MESSAGES + 1)
    with ThreadPoolExecutor(FLOOD_MESSAGES) as pool:
        floods = [pool.submit(send, suite, "news@flood.example", m, "127.0.0.77", ready)
                  for m in messages]
        ready.wait(30)
        time.sleep(0.2)  # every policy thread is now busy with a flood check
        normal = f"normal-{secrets.token_hex(6)}".encode()
        code, text, normal_seconds = send(
            suite, "someone@sender.example",
            b"From: someone@sender.example\r\nSubject: " + normal + b"\r\n\r\nhello\r\n",
            "127.0.0.1")
        results = [f.result() for f in floods]
    LEDGER.tried_on("smtp-25", FLOOD_MESSAGES)

    # mail keeps flowing: the normal message waited for one flood check at most
    assert (code, normal_seconds < BUDGET + SLACK) == (250, True), (code, text, normal_seconds)
    LEDGER.check_lost("smtp-25", 1, suite.spool_count(normal), "normal message during a flood")
    # each flood check answered within the budget, with the verdict of its aligned signatures
    for code, text, seconds in results:
        assert (code, seconds < BUDGET + SLACK) == (250, True), (code, text, seconds)
    for marker in markers:
        blobs = suite.spooled_blobs(marker)
        LEDGER.check_lost("smtp-25", 1, len(blobs), "DKIM-flooded message")
        results_field = blobs[0].split(b"\r\n\r\n", 1)[0].split(b"DKIM-Signature:", 1)[0]
        assert b"dmarc=pass" in results_field
        # the aligned ones first, then the first of the others up to the cap; none beyond it
        reported = SELECTOR.findall(results_field)
        assert sorted(reported) == sorted(
            [f"a{j}".encode() for j in range(ALIGNED)]
            + [f"s{i}".encode() for i in range(CAP - ALIGNED)]), results_field
        assert results_field.count(b"dkim=pass") == ALIGNED

    # the flood's DNS cost is bounded by the cap: no query for a signature beyond it
    asked = dns_server.queries("relay.example")
    assert set(asked) <= {f"s{i}._domainkey.relay.example" for i in range(CAP - ALIGNED)}
    assert 0 < sum(asked.values()) <= FLOOD_MESSAGES * (CAP - ALIGNED)
    # operators see both limits trip: metrics and one log event each per message
    assert metric(suite, cap_skips) - before[0] == FLOOD_MESSAGES * (DROPPED + ALIGNED - CAP)
    assert metric(suite, "postroom_dkim_budget_exhausted_total") - before[1] == FLOOD_MESSAGES
    events = suite.processes["dmarc"].log_events()
    for event in ("dkim signature cap reached", "dkim time budget exhausted"):
        assert sum(e.get("event") == event for e in events) >= FLOOD_MESSAGES, event
