"""Smarthost next hops over the real loopback DNS server: `[host]` skips MX, `host` uses it."""

from __future__ import annotations

import pytest

from postroom.net.nexthop import parse_nexthop
from postroom_mta.routing import RouteError, Target, plan_nexthop


def plan(dns_server, text):
    return plan_nexthop(dns_server.resolver(timeout=1.0), parse_nexthop(text))


def test_bracketed_host_uses_its_own_addresses_not_its_mx(dns_server):
    dns_server.load({"relay.test": {"MX": [(10, "mx.elsewhere.test")], "A": ["127.0.0.5"]},
                     "mx.elsewhere.test": {"A": ["127.0.0.6"]}})
    assert plan(dns_server, "[relay.test]:587") == [Target("relay.test", "127.0.0.5")]


def test_plain_host_is_looked_up_by_mx(dns_server):
    dns_server.load({"relay.test": {"MX": [(10, "mx.elsewhere.test")], "A": ["127.0.0.5"]},
                     "mx.elsewhere.test": {"A": ["127.0.0.6"]}})
    assert plan(dns_server, "relay.test:587") == [Target("mx.elsewhere.test", "127.0.0.6")]


def test_internal_addresses_are_allowed_for_a_smarthost(dns_server):
    """The operator named it: the internal-address check of MX delivery does not apply."""
    dns_server.load({"relay.test": {"A": ["10.1.2.3"]}})
    assert plan(dns_server, "relay.test") == [Target("relay.test", "10.1.2.3")]


def test_an_ip_literal_needs_no_dns(dns_server):
    assert plan(dns_server, "[192.0.2.9]:465") == [Target("192.0.2.9", "192.0.2.9")]


@pytest.mark.parametrize("text", ["[ghost.test]:587", "ghost.test:587"])
def test_a_smarthost_that_does_not_exist_defers_never_bounces(dns_server, text):
    with pytest.raises(RouteError) as caught:
        plan(dns_server, text)
    assert caught.value.reply.code == 451
    assert caught.value.reply.enhanced == "4.4.3"
