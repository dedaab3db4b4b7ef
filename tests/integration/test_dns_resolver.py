"""postroom.net.dns.Resolver against the real loopback DNS server: answers, errors, cache."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from postroom.config import load_settings
from postroom.net.dns import DNSTempError, NXDomain, Resolver


def test_a_and_aaaa_return_addresses(dns_server):
    dns_server.set_records("host.example.org", "A", ["192.0.2.1", "192.0.2.2"])
    dns_server.set_records("host.example.org", "AAAA", ["2001:db8::1"])
    resolver = dns_server.resolver()
    assert sorted(resolver.a("host.example.org")) == ["192.0.2.1", "192.0.2.2"]
    assert resolver.aaaa("host.example.org") == ["2001:db8::1"]


def test_mx_is_sorted_by_preference(dns_server):
    dns_server.set_records("example.org", "MX", [(20, "b.example.org"), (10, "a.example.org")])
    assert dns_server.resolver().mx("example.org") == [(10, "a.example.org"), (20, "b.example.org")]


def test_null_mx_is_visible_as_dot(dns_server):
    dns_server.set_records("nomail.example.org", "MX", [(0, ".")])
    assert dns_server.resolver().mx("nomail.example.org") == [(0, ".")]


def test_txt_joins_character_strings(dns_server):
    dns_server.set_records("example.org", "TXT", [["v=spf1 ", "-all"]])
    assert dns_server.resolver().txt("example.org") == ["v=spf1 -all"]


def test_long_txt_arrives_whole_over_tcp_fallback(dns_server):
    value = "v=DKIM1; k=rsa; p=" + "A" * 900
    dns_server.set_records("sel._domainkey.example.org", "TXT", [value])
    assert dns_server.resolver().txt("sel._domainkey.example.org") == [value]


def test_cname_is_followed(dns_server):
    dns_server.set_records("alias.example.org", "CNAME", ["real.example.org"])
    dns_server.set_records("real.example.org", "A", ["192.0.2.7"])
    assert dns_server.resolver().a("alias.example.org") == ["192.0.2.7"]


def test_ptr_for_ipv4_and_ipv6(dns_server):
    dns_server.set_records("1.2.0.192.in-addr.arpa", "PTR", ["mail.example.org"])
    dns_server.set_records(
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "PTR",
        ["v6.example.org"])
    resolver = dns_server.resolver()
    assert resolver.ptr("192.0.2.1") == ["mail.example.org"]
    assert resolver.ptr("2001:db8::1") == ["v6.example.org"]


def test_nxdomain_raises_nxdomain(dns_server):
    with pytest.raises(NXDomain):
        dns_server.resolver().a("missing.example.org")


def test_existing_name_without_that_type_is_empty(dns_server):
    dns_server.set_records("example.org", "A", ["192.0.2.1"])
    assert dns_server.resolver().mx("example.org") == []


def test_empty_non_terminal_exists(dns_server):
    dns_server.set_records("deep.sub.example.org", "A", ["192.0.2.1"])
    resolver = dns_server.resolver()
    assert resolver.a("sub.example.org") == []
    assert resolver.domain_exists("sub.example.org")
    assert not resolver.domain_exists("other.example.org")


def test_timeout_raises_temp_error_within_deadline(dns_server):
    dns_server.timeout("slow.example.org")
    started = time.monotonic()
    with pytest.raises(DNSTempError):
        dns_server.resolver(timeout=0.5).txt("slow.example.org")
    assert time.monotonic() - started < 1.5


def test_servfail_raises_temp_error(dns_server):
    dns_server.servfail("broken.example.org")
    with pytest.raises(DNSTempError):
        dns_server.resolver().a("broken.example.org")


def test_timeout_of_one_type_leaves_others_answering(dns_server):
    dns_server.set_records("example.org", "A", ["192.0.2.1"])
    dns_server.timeout("example.org", "TXT")
    resolver = dns_server.resolver(timeout=0.3)
    assert resolver.a("example.org") == ["192.0.2.1"]
    with pytest.raises(DNSTempError):
        resolver.txt("example.org")


def test_answers_are_cached_for_their_ttl(dns_server):
    dns_server.set_records("cached.example.org", "A", ["192.0.2.1"], ttl=300)
    resolver = dns_server.resolver()
    assert resolver.a("cached.example.org") == ["192.0.2.1"]
    dns_server.set_records("cached.example.org", "A", ["192.0.2.99"], ttl=300)
    assert resolver.a("cached.example.org") == ["192.0.2.1"]
    resolver.clear_cache()
    assert resolver.a("cached.example.org") == ["192.0.2.99"]


def test_zero_ttl_answers_are_not_cached(dns_server):
    dns_server.set_records("fresh.example.org", "A", ["192.0.2.1"])
    resolver = dns_server.resolver()
    assert resolver.a("fresh.example.org") == ["192.0.2.1"]
    dns_server.set_records("fresh.example.org", "A", ["192.0.2.2"])
    assert resolver.a("fresh.example.org") == ["192.0.2.2"]


def test_cache_is_bounded(dns_server):
    resolver = Resolver([dns_server.address], timeout=2, max_entries=3)
    for index in range(6):
        dns_server.set_records(f"h{index}.example.org", "A", ["192.0.2.1"], ttl=300)
        resolver.a(f"h{index}.example.org")
    assert len(resolver._cache) == 3


def test_concurrent_lookups_from_threads(dns_server):
    for index in range(20):
        dns_server.set_records(f"t{index}.example.org", "A", [f"192.0.2.{index + 1}"])
    resolver = dns_server.resolver()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: resolver.a(f"t{i}.example.org"), range(20)))
    assert answers == [[f"192.0.2.{i + 1}"] for i in range(20)]


def test_from_settings_uses_configured_server(dns_server):
    settings = load_settings({**dns_server.env, "POSTROOM_DNS_TIMEOUT": "1s"})
    dns_server.set_records("configured.example.org", "A", ["192.0.2.5"])
    resolver = Resolver.from_settings(settings)
    assert resolver.timeout == 1.0
    assert resolver.a("configured.example.org") == ["192.0.2.5"]


def test_invalid_name_is_nxdomain_without_a_query(dns_server):
    with pytest.raises(NXDomain):
        dns_server.resolver().a("a" * 64 + ".example.org")
