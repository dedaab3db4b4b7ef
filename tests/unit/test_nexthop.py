"""Smarthost next hops (Postfix relayhost syntax) and transport-map precedence."""

from __future__ import annotations

import pytest

from postroom.net.nexthop import (
    NextHop,
    Route,
    choose_route,
    normalise_key,
    parse_nexthop,
    transport_keys,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("smtp.example.net", NextHop("smtp.example.net", 25, mx_lookup=True)),
    ("smtp.example.net:587", NextHop("smtp.example.net", 587, mx_lookup=True)),
    ("[smtp.example.net]", NextHop("smtp.example.net", 25, mx_lookup=False)),
    ("[smtp.example.net]:587", NextHop("smtp.example.net", 587, mx_lookup=False)),
    ("[SMTP.Example.NET.]:465", NextHop("smtp.example.net", 465, mx_lookup=False)),
    ("smtp:[relay.example]:2525", NextHop("relay.example", 2525, mx_lookup=False)),
    ("[192.0.2.7]:587", NextHop("192.0.2.7", 587, mx_lookup=False)),
    ("[2001:db8::1]:587", NextHop("2001:db8::1", 587, mx_lookup=False)),
    ("[ipv6:2001:db8::1]", NextHop("2001:db8::1", 25, mx_lookup=False)),
    ("  example.com  ", NextHop("example.com", 25, mx_lookup=True)),
])
def test_nexthop_forms(text, expected):
    assert parse_nexthop(text) == expected


@pytest.mark.parametrize("text", [
    "", "[", "[host", "[host]x", "[host]:", "[host]:0", "[host]:65536", "host:port",
    "host:-1", "192.0.2.7", "192.0.2.7:25", "2001:db8::1", "[ipv6:192.0.2.1]",
    "bad host", "a..b", "-lead.example", "x" * 400, "[host];rm -rf", "host\nname",
])
def test_bad_nexthops_are_refused(text):
    with pytest.raises(ValueError):
        parse_nexthop(text)


def test_the_string_form_round_trips():
    for text in ("[smtp.example.net]:587", "smtp.example.net:25", "[192.0.2.7]:465"):
        assert str(parse_nexthop(text)) == text


def test_bracketed_ip_is_an_address_and_never_looked_up():
    hop = parse_nexthop("[192.0.2.7]:587")
    assert hop.is_address and not hop.mx_lookup
    assert not parse_nexthop("[smtp.example.net]").is_address


def test_transport_keys_go_from_the_domain_up_to_its_parents():
    assert transport_keys("A.b.Example.com") == [
        "a.b.example.com", ".b.example.com", ".example.com", ".com"]
    assert transport_keys("example") == ["example"]


def test_normalise_key_keeps_the_leading_dot():
    assert normalise_key(".Example.COM") == ".example.com"
    assert normalise_key("Example.COM.") == "example.com"
    with pytest.raises(ValueError):
        normalise_key("..example.com")


def _route(text: str, source: str = "relayhost") -> Route:
    return Route(parse_nexthop(text), source=source)


GLOBAL = _route("[smarthost.example]:587")
EXACT = _route("[exact.example]:587", "transport:b.example.com")
PARENT = _route("[parent.example]:587", "transport:.example.com")
NEAR = _route("[near.example]:587", "transport:.b.example.com")


def test_exact_entry_wins_over_parents_and_the_relay_host():
    entries = {"b.example.com": EXACT, ".example.com": PARENT}
    assert choose_route("b.example.com", entries, GLOBAL) is EXACT


def test_parent_entry_matches_subdomains_not_the_domain_itself():
    entries = {".example.com": PARENT}
    assert choose_route("a.b.example.com", entries, GLOBAL) is PARENT
    assert choose_route("example.com", entries, GLOBAL) is GLOBAL


def test_nearest_parent_wins():
    entries = {".example.com": PARENT, ".b.example.com": NEAR}
    assert choose_route("a.b.example.com", entries, GLOBAL) is NEAR


def test_relay_host_then_mx():
    assert choose_route("other.test", {"b.example.com": EXACT}, GLOBAL) is GLOBAL
    assert choose_route("other.test", {"b.example.com": EXACT}, None) is None


def test_lookup_is_case_insensitive():
    assert choose_route("B.Example.COM.", {"b.example.com": EXACT}, None) is EXACT


def test_a_login_needs_tls_and_both_halves():
    hop = parse_nexthop("[smarthost.example]:587")
    with pytest.raises(ValueError, match="only sent under TLS"):
        Route(hop, "none", "user", "/run/secrets/pw")
    with pytest.raises(ValueError, match="both"):
        Route(hop, "starttls", "user", None)
    with pytest.raises(ValueError, match="TLS mode"):
        Route(hop, "ssl")
    assert Route(hop, "tls", "user", "/run/secrets/pw").key != Route(hop, "starttls").key
