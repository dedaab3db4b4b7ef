"""Each service's /metrics moves with real traffic, with the labels docs/metrics.md promises.

One whole instance (six real processes on 127.0.0.61, started once for the
module) and a remote MX (:class:`tests.support.smtpsink.SMTPSink` on
127.0.0.1, same port number). Counters are shared by the module's tests, so
each test compares a value before and after its own action.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import secrets
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.dns import DNSServer
from tests.support.instance import (
    PASSWORD,
    SERVICES,
    Instance,
    fresh_user,
    shared_free_port,
    unverified_tls,
)
from tests.support.redisdb import wait_until
from tests.support.smtpsink import SMTPSink

ADDRESS, SINK = "127.0.0.61", "127.0.0.1"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def inst(redis_url: str, dns_server_session: DNSServer, twisted_reactor: Any,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    port = shared_free_port(ADDRESS, SINK)
    sink = SMTPSink(port=port)
    try:
        with Instance("metrics.test", ADDRESS, redis_url, tmp_path_factory.mktemp("metrics"),
                      smtp_port=port, dns=dns_server_session) as instance:
            instance.spawn()
            instance.setup_domain()  # while the services start
            instance.wait()
            yield instance
    finally:
        sink.stop()


@pytest.fixture(autouse=True)
def zones(inst: Instance, dns_server: DNSServer) -> None:
    inst.publish("p=none")
    dns_server.load({"sink.test": {"MX": [(10, "mx.sink.test")]},
                     "mx.sink.test": {"A": [SINK]}})


def scrape(inst: Instance, service: str) -> Samples:
    status, body = inst.processes[service].get("/metrics")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(inst: Instance, service: str, before: Samples, name: str, by: float = 1,
          **labels: str) -> float:
    """Wait until ``name{labels}`` of ``service`` has grown by at least ``by``; the growth."""
    start = value(before, name, **labels)
    grown = wait_until(lambda: value(scrape(inst, service), name, **labels) - start >= by,
                       timeout=30, interval=0.1)
    assert grown
    return value(scrape(inst, service), name, **labels) - start


def message(sender: str, rcpt: str) -> bytes:
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: metrics\r\n\r\n"
            f"token {secrets.token_hex(6)}\r\n").encode()


# --- msa


def test_msa_counts_the_connection_commands_and_accepted_message(inst: Instance):
    alice, bob = fresh_user(inst, "alice"), fresh_user(inst, "bob")
    before = scrape(inst, "msa")
    inst.submit(alice, [bob], message(alice, bob))
    after = scrape(inst, "msa")
    assert value(after, "postroom_messages_total", outcome="accepted") - \
        value(before, "postroom_messages_total", outcome="accepted") == 1
    assert value(after, "postroom_connections_total", listener="submission") - \
        value(before, "postroom_connections_total", listener="submission") == 1
    for verb in ("EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA"):
        assert value(after, "postroom_commands_total", command=verb) > \
            value(before, "postroom_commands_total", command=verb), verb


def test_msa_counts_a_failed_login_by_mechanism(inst: Instance):
    alice = fresh_user(inst, "alice")
    before = scrape(inst, "msa")
    with smtplib.SMTP(inst.address, inst.ports["msa"], timeout=30) as client:
        client.starttls(context=unverified_tls())
        client.ehlo()
        client.user, client.password = alice, "wrong password"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.auth("PLAIN", client.auth_plain)
    moved(inst, "msa", before, "postroom_auth_failures_total", mechanism="PLAIN")


def test_msa_counts_a_refused_message_by_reason(inst: Instance):
    alice, bob = fresh_user(inst, "alice"), fresh_user(inst, "bob")
    before = scrape(inst, "msa")
    with smtplib.SMTP(inst.address, inst.ports["msa"], timeout=30) as client:
        client.starttls(context=unverified_tls())
        client.login(alice, PASSWORD)
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail(alice, [bob], message(f"someone-else@{inst.domain}", bob))
    moved(inst, "msa", before, "postroom_messages_total", outcome="rejected_from_not_owned")


# --- mta inbound, dmarc, mda and the queue


def test_inbound_message_moves_mta_dmarc_and_mda_metrics(inst: Instance):
    bob = fresh_user(inst, "bob")
    mta, dmarc, mda = (scrape(inst, name) for name in ("mta", "dmarc", "mda"))
    client = inst.smtp()
    try:
        client.sendmail("carol@sink.test", [bob], message("carol@sink.test", bob))
    finally:
        client.quit()
    after = scrape(inst, "mta")
    assert value(after, "postroom_messages_total", outcome="inbound_accepted") - \
        value(mta, "postroom_messages_total", outcome="inbound_accepted") == 1
    assert value(after, "postroom_connections_total", listener="smtp") > \
        value(mta, "postroom_connections_total", listener="smtp")
    assert value(after, "postroom_commands_total", command="MAIL") > \
        value(mta, "postroom_commands_total", command="MAIL")
    moved(inst, "dmarc", dmarc, "postroom_dmarc_results_total", result="none",
          disposition="inbox")
    moved(inst, "mda", mda, "postroom_messages_total", outcome="delivered")
    moved(inst, "mda", mda, "postroom_queue_latency_seconds_count", queue="deliver")


def test_mta_counts_an_unknown_recipient_as_a_rejection_by_reason(inst: Instance):
    before = scrape(inst, "mta")
    client = inst.smtp()
    try:
        client.mail("carol@sink.test")
        code, _ = client.rcpt(f"nobody-{secrets.token_hex(3)}@{inst.domain}")
        assert code == 550
    finally:
        client.quit()
    moved(inst, "mta", before, "postroom_messages_total", outcome="inbound_rejected_unknown_user")


def test_relay_counts_a_delivery_attempt_by_result(inst: Instance):
    alice = fresh_user(inst, "alice")
    before = scrape(inst, "mta")
    inst.submit(alice, ["dave@sink.test"], message(alice, "dave@sink.test"))
    moved(inst, "mta", before, "postroom_delivery_attempts_total", result="delivered")
    moved(inst, "mta", before, "postroom_queue_latency_seconds_count", queue="outbound")


@pytest.mark.parametrize(("service", "stream"), [("mta", "outbound"), ("mda", "deliver")])
def test_consumers_export_queue_depth_and_oldest_age_of_their_stream(inst: Instance,
                                                                      service: str, stream: str):
    samples = scrape(inst, service)
    assert ("postroom_queue_depth", frozenset({("queue", stream)})) in samples
    assert value(samples, "postroom_queue_oldest_seconds", queue=stream) >= 0


# --- imap


def test_imap_counts_sessions_commands_and_idle(inst: Instance):
    bob = fresh_user(inst, "bob")
    before = scrape(inst, "imap")
    client = inst.imap(bob)
    try:
        client.select("INBOX")
        during = scrape(inst, "imap")
        assert value(during, "postroom_connections_open", listener="imaps") >= 1
        tag = client._new_tag()  # imaplib has no IDLE before Python 3.14
        client.send(tag + b" IDLE\r\n")
        assert client.readline().startswith(b"+")
        wait_until(lambda: value(scrape(inst, "imap"), "postroom_imap_idle_sessions") == 1,
                   timeout=10, interval=0.05)
        client.send(b"DONE\r\n")
        assert client.readline().startswith(tag + b" OK")
        wait_until(lambda: value(scrape(inst, "imap"), "postroom_imap_idle_sessions") == 0,
                   timeout=10, interval=0.05)
    finally:
        client.logout()
    after = scrape(inst, "imap")
    for verb in ("LOGIN", "SELECT", "IDLE", "LOGOUT"):
        assert value(after, "postroom_commands_total", command=verb) > \
            value(before, "postroom_commands_total", command=verb), verb
    moved(inst, "imap", before, "postroom_connections_total", listener="imaps")


def test_imap_counts_a_failed_login(inst: Instance):
    before = scrape(inst, "imap")
    client = imaplib.IMAP4_SSL(inst.address, inst.ports["imap_tls"],
                               ssl_context=unverified_tls(), timeout=30)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            client.login(f"nobody@{inst.domain}", "wrong password")
    finally:
        client.shutdown()
    moved(inst, "imap", before, "postroom_auth_failures_total", mechanism="LOGIN")


# --- pop3


def test_pop3_counts_sessions_and_commands(inst: Instance):
    bob = fresh_user(inst, "bob")
    before = scrape(inst, "pop3")
    client = inst.pop3(bob)
    client.stat()
    client.quit()
    after = scrape(inst, "pop3")
    for verb in ("STLS", "USER", "PASS", "STAT", "QUIT"):
        assert value(after, "postroom_commands_total", command=verb) > \
            value(before, "postroom_commands_total", command=verb), verb
    assert value(after, "postroom_connections_total", listener="pop3") > \
        value(before, "postroom_connections_total", listener="pop3")


def test_pop3_counts_a_failed_login(inst: Instance):
    before = scrape(inst, "pop3")
    client = poplib.POP3(inst.address, inst.ports["pop3"], timeout=30)
    try:
        client.stls(context=unverified_tls())
        client.user(f"nobody@{inst.domain}")
        with pytest.raises(poplib.error_proto):
            client.pass_("wrong password")
    finally:
        client.close()
    moved(inst, "pop3", before, "postroom_auth_failures_total", mechanism="USER")


# --- the contract


def test_every_metric_named_in_the_docs_is_exported_by_some_service(inst: Instance):
    documented = set(re.findall(r"postroom_[a-z_]+", DOCS.read_text()))
    assert len(documented) >= 12
    # the web service is not part of this instance: test_web_service.py checks its own, and
    # the rows whose only source is the web service (ACME's, with POSTROOM_ACME) are its
    web_only = {cols[1].strip(" `") for line in DOCS.read_text().splitlines()
                if line.startswith("| `postroom_")
                for cols in [line.split("|")] if cols[4].strip().startswith("web")}
    documented = {n for n in documented if not n.startswith("postroom_web")} - web_only
    exported: set[str] = set()
    for name in SERVICES:
        _status, body = inst.processes[name].get("/metrics")
        exported.update(re.findall(r"^# TYPE (\S+) ", body.decode(), flags=re.MULTILINE))
    assert documented <= exported, sorted(documented - exported)
