"""The DKIM step's cap, budget and deadline against the loopback DNS server dropping queries."""

from __future__ import annotations

import time

from postroom.mailauth import dkimsign
from postroom.net.dns import DNSTempError
from postroom_dmarc import dkimcheck
from postroom_dmarc.verdict import CheckRequest, Options, evaluate

PRIVATE, PUBLIC_TXT = dkimsign.generate_keys("ed25519-sha256")
BASE = (b"From: a@flood.example\r\nTo: b@receiver.test\r\nSubject: hi\r\n"
        b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\nbody\r\n")
DROPPED = 37  # signatures whose key lookups are never answered
ALIGNED = 3  # signatures of flood.example (keys answered), last in the header


def flood(dns_server) -> bytes:
    fields = []
    for i in range(DROPPED):
        dns_server.timeout(f"s{i}._domainkey.relay.example")
        fields.append(dkimsign.sign(BASE, "relay.example", f"s{i}", PRIVATE, "ed25519-sha256"))
    for j in range(ALIGNED):
        dns_server.set_records(f"a{j}._domainkey.flood.example", "TXT", [PUBLIC_TXT])
        fields.append(dkimsign.sign(BASE, "flood.example", f"a{j}", PRIVATE, "ed25519-sha256"))
    return b"".join(fields) + BASE


def test_forty_signatures_behind_a_dropping_server_end_within_the_budget(dns_server):
    msg = flood(dns_server)
    resolver = dns_server.resolver(timeout=1.0)
    started = time.monotonic()
    run = dkimcheck.verify(msg, resolver, authors=["flood.example"], max_signatures=10,
                           budget=1.5)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 0.5
    # the aligned signatures were verified first; then two lookups dropped (1 s, then 0.5 s)
    assert [r.result for r in run.results if r.domain == "flood.example"] == ["pass"] * ALIGNED
    others = [r for r in run.results if r.domain == "relay.example"]
    assert [r.selector for r in others] == [f"s{i}" for i in range(10 - ALIGNED)]
    assert {r.result for r in others} == {"temperror"}
    assert [r.reason for r in others].count(dkimcheck.OUT_OF_TIME) == run.unfinished == 5
    assert (run.signatures, run.skipped, run.out_of_time) == (40, 30, True)
    # one query per signature started, none for those beyond the cap
    asked = dns_server.queries("relay.example")
    assert asked == {"s0._domainkey.relay.example": 1, "s1._domainkey.relay.example": 1}


def test_the_checks_deadline_bounds_every_lookup(dns_server):
    msg = flood(dns_server)
    request = CheckRequest(client_ip="192.0.2.1", helo="mail.relay.example",
                           mail_from="a@flood.example", recipients=("b@receiver.test",),
                           message=msg, queue_id="QD")
    dns_server.timeout("flood.example")  # SPF
    dns_server.timeout("_dmarc.flood.example")
    started = time.monotonic()
    verdict = evaluate(request, dns_server.resolver(timeout=5.0),
                       Options(authserv_id="mx.receiver.test", dkim_budget=30.0),
                       deadline=time.monotonic() + 1.0)
    assert time.monotonic() - started < 1.0 + 0.5
    assert verdict.disposition == "tempfail"
    assert verdict.dkim_run is not None and verdict.dkim_run.out_of_time


def test_until_cuts_a_lookup_short_and_still_answers_from_the_cache(dns_server):
    dns_server.set_records("cached.example", "TXT", ["v=spf1 -all"], ttl=300)
    dns_server.timeout("dropped.example")
    resolver = dns_server.resolver(timeout=5.0)
    assert resolver.txt("cached.example") == ["v=spf1 -all"]
    bounded = resolver.until(time.monotonic() + 0.3)
    started = time.monotonic()
    try:
        bounded.txt("dropped.example")
    except DNSTempError:
        pass
    else:
        raise AssertionError("a dropped query answered")
    assert time.monotonic() - started < 0.3 + 0.2
    assert bounded.time_left() <= 0
    assert bounded.txt("cached.example") == ["v=spf1 -all"]  # past the deadline: no query needed
