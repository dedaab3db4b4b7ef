"""The DMARC verdict path through a whole instance's mta (issue 4, "What it must show").

two.test runs its six services on 127.0.0.3; senders' domains are published
on the test DNS server and a plain smtplib client on 127.0.0.1 talks to
two's port 25 directly: a p=reject failure is refused at DATA with 554 5.7.1,
a p=quarantine failure lands in Junk, a pass lands in INBOX with our
Authentication-Results (and no forged one), and a DNS timeout gives 451,
never a reject.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest

from tests.support.dns import DNSServer
from tests.support.instance import (
    Instance,
    authentication_results,
    fresh_user,
    methods,
    shared_free_port,
)

pytestmark = pytest.mark.slow

TWO = "127.0.0.3"
CLIENT = "127.0.0.1"


@pytest.fixture(scope="module")
def two(redis_url: str, dns_server_session: DNSServer,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    with Instance("two.test", TWO, redis_url, tmp_path_factory.mktemp("verdict"),
                  smtp_port=shared_free_port(TWO), dns=dns_server_session) as instance:
        instance.spawn(("dmarc", "mda", "mta", "imap"))  # no submission or POP3 here
        instance.setup_domain()  # while the services start
        instance.wait()
        yield instance


def sender_domain(dns: DNSServer, domain: str, spf_ip: str, dmarc: str) -> None:
    dns.load({domain: {"TXT": [f"v=spf1 ip4:{spf_ip} -all"]},
              f"_dmarc.{domain}": {"TXT": [f"v=DMARC1; {dmarc}"]}})


@pytest.fixture(autouse=True)
def zones(two: Instance, dns_server: DNSServer) -> DNSServer:
    two.publish("p=reject")
    dns_server.set_records("client.example", "A", [CLIENT])
    return dns_server


def send(two: Instance, sender: str, rcpt: str, extra: str = "") -> tuple[int, str, float]:
    """One message over port 25 from 127.0.0.1; (final reply code, text, seconds to reply)."""
    message = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: verdict {secrets.token_hex(3)}\r\n"
               f"Message-ID: <{secrets.token_hex(8)}@client.example>\r\n{extra}"
               "\r\nbody\r\n").encode()
    client = two.smtp(source=CLIENT)
    try:
        assert client.mail(sender)[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        started = time.monotonic()
        code, reply = client.data(message)
        return code, reply.decode(errors="replace"), time.monotonic() - started
    finally:
        client.close()


def spooled_from(two: Instance, sender: str) -> list[tuple[str, str]]:
    return [(k, d) for k, d in two.query(
        "SELECT kind, disposition FROM spool_messages WHERE mail_from = :s", s=sender)]


def test_dmarc_reject_gets_554_at_data_and_nothing_is_spooled(
        two: Instance, zones: DNSServer) -> None:
    sender_domain(zones, "reject.test", "127.0.0.2", "p=reject")
    bob = fresh_user(two, "bob")
    code, reply, _ = send(two, "mallory@reject.test", bob)
    assert code == 554 and reply.startswith("5.7.1"), (code, reply)
    assert spooled_from(two, "mallory@reject.test") == []
    assert two.query("SELECT count(*) FROM spool_messages WHERE kind = 'bounce'")[0][0] == 0


def test_dmarc_quarantine_lands_in_junk_not_inbox(two: Instance, zones: DNSServer) -> None:
    sender_domain(zones, "quarantine.test", "127.0.0.2", "p=quarantine")
    bob = fresh_user(two, "bob")
    code, reply, _ = send(two, "mallory@quarantine.test", bob)
    assert code == 250, reply
    [raw] = two.wait_for_mail(bob, mailbox="Junk")
    [(_ident, value)] = [f for f in authentication_results(raw) if f[0] == two.hostname]
    assert methods(value)["dmarc"] == ["fail"], value
    assert two.fetch_all(bob) == []


def test_dmarc_pass_lands_in_inbox_with_our_results_and_no_forged_ones(
        two: Instance, zones: DNSServer) -> None:
    sender_domain(zones, "pass.test", CLIENT, "p=reject")
    bob = fresh_user(two, "bob")
    forged = f"Authentication-Results: {two.hostname}; dkim=pass header.d=pass.test\r\n"
    code, reply, _ = send(two, "carol@pass.test", bob, extra=forged)
    assert code == 250, reply
    [raw] = two.wait_for_mail(bob)
    ours = [v for ident, v in authentication_results(raw) if ident == two.hostname]
    assert len(ours) == 1, ours
    found = methods(ours[0])
    assert found["dmarc"] == ["pass"] and "pass" in found["spf"], ours[0]
    assert found.get("dkim", ["none"]) == ["none"], ours[0]  # the forged dkim=pass is gone
    assert two.fetch_all(bob, "Junk") == []


def test_a_dns_timeout_for_the_sender_gives_451_never_a_reject(
        two: Instance, zones: DNSServer) -> None:
    sender_domain(zones, "slow.test", "127.0.0.2", "p=reject")
    zones.timeout("slow.test")
    zones.timeout("_dmarc.slow.test")
    bob = fresh_user(two, "bob")
    code, reply, took = send(two, "mallory@slow.test", bob)
    print(f"\nDNS timeout answered in {took:.2f}s: {code} {reply}")
    assert code == 451 and reply.startswith("4.7.0"), (code, reply)
    assert spooled_from(two, "mallory@slow.test") == []
