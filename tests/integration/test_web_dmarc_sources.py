"""Source names for the DMARC dashboard: PTR, forward confirmation, organisation, budget, cache
(against the loopback DNS server)."""

from __future__ import annotations

import time

import dns.reversename
import pytest

from postroom_web.dmarc.sources import UNKNOWN, SourceName, SourceNames, organisation_of


def reverse(ip: str) -> str:
    return dns.reversename.from_address(ip).to_text(omit_final_dot=True)


def publish(dns_server, ip: str, name: str, forward: str | None = None) -> None:
    dns_server.set_records(reverse(ip), "PTR", [name])
    if forward is not None:
        dns_server.set_records(name, "AAAA" if ":" in ip else "A", [forward])


@pytest.fixture
def names(dns_server):
    found = SourceNames(dns_server.resolver(timeout=1.0), budget=1.0)
    yield found
    found.close()


def test_confirmed_google_address_is_named_google(dns_server, names):
    publish(dns_server, "192.0.2.41", "mail-sor-f41.google.com", "192.0.2.41")
    got = names.lookup(["192.0.2.41"])["192.0.2.41"]
    assert got == SourceName("192.0.2.41", "mail-sor-f41.google.com", True, "google.com",
                             "Google", True)


def test_microsoft_and_mailchimp_by_their_organizational_domains(dns_server, names):
    publish(dns_server, "192.0.2.5", "mail-db5eur01on2105.outbound.protection.outlook.com",
            "192.0.2.5")
    publish(dns_server, "2001:db8::7", "mail7.mcsv.net", "2001:db8::7")
    got = names.lookup(["192.0.2.5", "2001:db8::7"])
    assert got["192.0.2.5"].organisation == "Microsoft"
    assert (got["2001:db8::7"].org_domain, got["2001:db8::7"].organisation) == (
        "mcsv.net", "Mailchimp")


def test_an_unknown_organisation_is_its_organizational_domain(dns_server, names):
    publish(dns_server, "192.0.2.8", "smtp3.mx.example.co.uk", "192.0.2.8")
    got = names.lookup(["192.0.2.8"])["192.0.2.8"]
    assert (got.org_domain, got.organisation) == ("example.co.uk", "example.co.uk")


def test_an_unconfirmed_name_has_no_organisation(dns_server, names):
    # anyone may write google.com in their own reverse zone
    publish(dns_server, "192.0.2.9", "mail.google.com", "192.0.2.99")
    got = names.lookup(["192.0.2.9"])["192.0.2.9"]
    assert (got.ptr, got.confirmed, got.organisation, got.organisation_shown) == (
        "mail.google.com", False, None, UNKNOWN)


def test_no_reverse_name_is_shown_unknown(dns_server, names):
    got = names.lookup(["192.0.2.10"])["192.0.2.10"]
    assert got.looked_up and (got.ptr_shown, got.organisation_shown) == (UNKNOWN, UNKNOWN)


def test_answers_are_cached_between_renders(dns_server, names):
    publish(dns_server, "192.0.2.11", "out.sendgrid.net", "192.0.2.11")
    assert names.lookup(["192.0.2.11"])["192.0.2.11"].organisation == "SendGrid"
    dns_server.clear()  # the records are gone, the cache still knows
    assert names.lookup(["192.0.2.11"])["192.0.2.11"].organisation == "SendGrid"
    assert dns_server.queries("in-addr.arpa") == {}


def test_the_cache_expires_and_is_bounded(dns_server):
    now = [0.0]
    names = SourceNames(dns_server.resolver(), ttl=10, max_entries=2, clock=lambda: now[0])
    try:
        for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):  # one by one: a known order
            names.lookup([ip])
        assert names.cached("192.0.2.1") is None  # the oldest went
        assert names.cached("192.0.2.3") is not None
        now[0] = 11.0
        assert names.cached("192.0.2.3") is None
    finally:
        names.close()


def test_at_most_per_render_new_addresses_are_looked_up(dns_server):
    names = SourceNames(dns_server.resolver(), per_render=2)
    try:
        got = names.lookup([f"192.0.2.{i}" for i in range(1, 6)])
        assert [got[f"192.0.2.{i}"].looked_up for i in range(1, 6)] == [
            True, True, False, False, False]
        assert sum(dns_server.queries("2.0.192.in-addr.arpa").values()) == 2
    finally:
        names.close()


def test_a_slow_server_costs_one_budget_and_shows_unknown(dns_server):
    dns_server.timeout(reverse("192.0.2.50"))
    publish(dns_server, "192.0.2.51", "a.example.net", "192.0.2.51")
    names = SourceNames(dns_server.resolver(timeout=5.0), budget=0.5)
    try:
        started = time.monotonic()
        got = names.lookup(["192.0.2.50", "192.0.2.51"])
        assert time.monotonic() - started < 1.5
        assert not got["192.0.2.50"].looked_up and got["192.0.2.50"].ptr_shown == UNKNOWN
        assert got["192.0.2.51"].ptr == "a.example.net"
    finally:
        names.close()


@pytest.mark.parametrize("name,expected", [
    ("o1.ptr1234.sendgrid.net", ("sendgrid.net", "SendGrid")),
    ("a8-33.smtp-out.amazonses.com", ("amazonses.com", "Amazon SES")),
    ("mail.example.org.", ("example.org", "example.org")),
    (None, (None, None)),
])
def test_organisation_of(name, expected):
    assert organisation_of(name) == expected


def test_lookups_are_counted_by_outcome(dns_server):
    from postroom.metrics import Metrics

    metrics = Metrics("web", process_metrics=False)
    publish(dns_server, "192.0.2.60", "a.example.net", "192.0.2.60")
    publish(dns_server, "192.0.2.61", "b.example.net", "192.0.2.99")
    names = SourceNames(dns_server.resolver(), metrics=metrics)
    try:
        names.lookup(["192.0.2.60", "192.0.2.61", "192.0.2.62"])
    finally:
        names.close()
    text = metrics.render().decode()
    for outcome in ("confirmed", "unconfirmed", "none"):
        assert f'postroom_web_source_lookups_total{{outcome="{outcome}"}} 1.0' in text
