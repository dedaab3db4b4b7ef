"""TLS reports (RFC 8460) between two whole instances: one.test's relay records its TLS session
to two.test's MX, its dmarc service sends the report to the rua two.test publishes in
_smtp._tls, and two.test's dmarc service reads it from its report mailbox."""

from __future__ import annotations

import gzip
import json
import secrets
import time
from collections.abc import Iterator
from email import message_from_bytes
from email import policy as email_policy

import pytest

from postroom.mailauth import tlsrpt
from tests.support.dns import DNSServer
from tests.support.instance import Instance, fresh_user, shared_free_port

pytestmark = pytest.mark.slow

ONE, TWO = "127.0.0.84", "127.0.0.85"
INTERVAL = 15  # seconds: one.test's report period
REPORTS = "tlsrpt@two.test"


@pytest.fixture(scope="module")
def pair(redis_url: str, dns_server_session: DNSServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Instance, Instance]]:
    port = shared_free_port(ONE, TWO)
    base = tmp_path_factory.mktemp("tlsrpt")
    with Instance("one.test", ONE, redis_url, base / "one", smtp_port=port,
                  dns=dns_server_session,
                  env={"POSTROOM_DMARC_REPORT_INTERVAL": f"{INTERVAL}s"}) as one, \
         Instance("two.test", TWO, redis_url, base / "two", smtp_port=port,
                  dns=dns_server_session,
                  env={"POSTROOM_DMARC_REPORT_MAILBOX": REPORTS,
                       "POSTROOM_DMARC_REPORT_SCAN_INTERVAL": "1s"}) as two:
        one.spawn()
        two.spawn()
        one.setup_domain()
        two.setup_domain()
        two.add_user(REPORTS)
        one.wait()
        two.wait()
        yield one, two


@pytest.fixture(autouse=True)
def zones(pair: tuple[Instance, Instance], dns_server: DNSServer) -> None:
    one, two = pair
    one.publish()
    two.publish()
    dns_server.set_records("_smtp._tls.two.test", "TXT", [f"v=TLSRPTv1; rua=mailto:{REPORTS}"])


def test_a_tls_report_is_sent_for_a_session_and_read_by_the_receiver(
        pair: tuple[Instance, Instance]) -> None:
    one, two = pair
    alice, bob = fresh_user(one, "alice"), fresh_user(two, "bob")
    subject = f"over tls {secrets.token_hex(4)}"
    one.submit(alice, [bob], (f"From: <{alice}>\r\nTo: <{bob}>\r\nSubject: {subject}\r\n\r\n"
                              "hi\r\n").encode())
    two.wait_for_mail(bob)
    # the session was recorded as a success (STARTTLS to two.test's MX)
    deadline = time.monotonic() + 30
    while not one.query("SELECT 1 FROM tls_results WHERE policy_domain = 'two.test'"):
        assert time.monotonic() < deadline, "no TLS result recorded"
        time.sleep(0.5)
    # after the period ends, the report arrives in two.test's report mailbox ...
    # (the report's own delivery is a session too: a later period may bring a second report)
    raw = two.wait_for_mail(REPORTS, timeout=4 * INTERVAL + 60)[0]
    msg = message_from_bytes(raw, policy=email_policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg["TLS-Report-Domain"] == "two.test"
    assert msg["TLS-Report-Submitter"] == one.hostname
    [part] = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    doc = json.loads(gzip.decompress(part.get_payload(decode=True)))
    [policy] = doc["policies"]
    assert policy["policy"] == {"policy-type": "no-policy-found", "policy-domain": "two.test"}
    assert policy["summary"]["total-successful-session-count"] >= 1
    assert policy["summary"]["total-failure-session-count"] == 0
    assert tlsrpt.parse_report_message(raw).report_id == doc["report-id"]
    # ... signed by one.test, and two.test's dmarc service stores it
    assert "DKIM-Signature" in msg
    deadline = time.monotonic() + 30
    while True:
        rows = two.query("SELECT org_name, status, domains FROM tls_incoming_reports")
        if rows:
            break
        assert time.monotonic() < deadline, "the report was not read"
        time.sleep(0.5)
    org, status, domains = rows[0]
    assert (status, list(domains)) == ("stored", ["two.test"])
    assert org == one.hostname
