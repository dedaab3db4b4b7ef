"""MX routing over the real loopback DNS server, delivering to the real test SMTP server.

Every MX host resolves to a 127.0.0.x address; the test SMTP server listens on
127.0.0.1 only, so an MX at 127.0.0.2 is a refused connection on the same port.
Loopback is an internal network the relay refuses by default, so these routes
allow it (``LOOPBACK``) the way an operator would (POSTROOM_RELAY_ALLOWED_NETWORKS).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.python.threadpool import ThreadPool

from postroom.net.destinations import DestinationPolicy
from postroom_mta.routing import RouteError, Target, deliver_to_domain
from postroom_mta.routing import plan_route as strict_plan_route
from postroom_mta.smtpclient import DeliveryResult, Outcome
from tests.integration.test_smtpclient import FAST, RunningServer, ServerConfig
from tests.support.dns import LOOPBACK_NETWORKS
from tests.support.redisdb import in_reactor

LOOPBACK = DestinationPolicy.allowing(LOOPBACK_NETWORKS)
MESSAGE = b"From: alice@one.test\r\nTo: bob@two.test\r\nSubject: routed\r\n\r\nhi\r\n.\r\n"


def plan_route(resolver: Any, domain: str, **kwargs: Any) -> list[Target]:
    return strict_plan_route(resolver, domain, destinations=LOOPBACK, **kwargs)


@pytest.fixture
def dns_pool() -> Iterator[ThreadPool]:
    pool = ThreadPool(minthreads=1, maxthreads=2, name="test-dns")
    pool.start()
    yield pool
    pool.stop()


@pytest.fixture
def smtp_server(twisted_reactor: Any) -> Iterator[RunningServer]:
    server = RunningServer(ServerConfig())
    yield server
    server.stop()


def deliver(dns_server: Any, pool: ThreadPool, port: int, domain: str = "two.test",
            recipients: tuple[str, ...] = ("bob@two.test",),
            destinations: DestinationPolicy = LOOPBACK) -> DeliveryResult:
    from twisted.internet import reactor

    result: DeliveryResult = in_reactor(
        deliver_to_domain, domain, "alice@one.test", recipients, MESSAGE,
        resolver=dns_server.resolver(timeout=1.0), port=port, pool=pool, helo_name="one.test",
        reactor=reactor, timeouts=FAST, rng=random.Random(7), destinations=destinations,
        timeout=30)
    return result


def test_route_follows_mx_preference(dns_server):
    dns_server.load({
        "two.test": {"MX": [(30, "mx3.two.test"), (10, "mx1.two.test"), (20, "mx2.two.test")]},
        "mx1.two.test": {"A": ["127.0.0.11"]},
        "mx2.two.test": {"A": ["127.0.0.12", "127.0.0.13"]},
        "mx3.two.test": {"A": ["127.0.0.14"]},
    })
    assert plan_route(dns_server.resolver(), "two.test") == [
        Target("mx1.two.test", "127.0.0.11"), Target("mx2.two.test", "127.0.0.12"),
        Target("mx2.two.test", "127.0.0.13"), Target("mx3.two.test", "127.0.0.14")]


def test_route_puts_ipv6_before_ipv4(dns_server):
    dns_server.load({"two.test": {"MX": [(10, "mx.two.test")]},
                     "mx.two.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]}})
    assert [t.address for t in plan_route(dns_server.resolver(), "two.test")] == ["::1",
                                                                                 "127.0.0.1"]


def test_route_without_mx_falls_back_to_the_domain_address(dns_server):
    dns_server.set_records("two.test", "A", ["127.0.0.1"])
    assert plan_route(dns_server.resolver(), "two.test") == [Target("two.test", "127.0.0.1")]


def test_route_skips_mx_hosts_without_address(dns_server):
    dns_server.load({"two.test": {"MX": [(10, "ghost.two.test"), (20, "mx.two.test")]},
                     "mx.two.test": {"A": ["127.0.0.1"]}})
    assert plan_route(dns_server.resolver(), "two.test") == [Target("mx.two.test", "127.0.0.1")]


def test_null_mx_is_a_permanent_556(dns_server):
    dns_server.set_records("two.test", "MX", [(0, ".")])
    with pytest.raises(RouteError) as caught:
        plan_route(dns_server.resolver(), "two.test")
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (556, "5.1.10")


def test_dns_timeout_is_a_temporary_failure(dns_server):
    dns_server.timeout("two.test", "MX")
    with pytest.raises(RouteError) as caught:
        plan_route(dns_server.resolver(timeout=0.5), "two.test")
    assert caught.value.reply.code == 451 and caught.value.reply.enhanced == "4.4.3"


def test_domain_without_mx_or_address_is_permanent(dns_server):
    dns_server.set_records("two.test", "TXT", ["v=spf1 -all"])
    with pytest.raises(RouteError) as caught:
        plan_route(dns_server.resolver(), "two.test")
    assert caught.value.reply.enhanced == "5.1.2"


def test_delivery_goes_to_the_most_preferred_mx(dns_server, dns_pool, smtp_server):
    dns_server.load({"two.test": {"MX": [(10, "mx1.two.test"), (20, "mx2.two.test")]},
                     "mx1.two.test": {"A": ["127.0.0.1"]},
                     "mx2.two.test": {"A": ["127.0.0.2"]}})
    result = deliver(dns_server, dns_pool, smtp_server.port)
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    assert (result.host, result.address, result.tried) == ("mx1.two.test", "127.0.0.1", ())
    assert smtp_server.received[0].data == MESSAGE


def test_refused_connection_moves_to_the_next_mx(dns_server, dns_pool, smtp_server):
    dns_server.load({"two.test": {"MX": [(10, "mx1.two.test"), (20, "mx2.two.test")]},
                     "mx1.two.test": {"A": ["127.0.0.2"]},  # nothing listens there
                     "mx2.two.test": {"A": ["127.0.0.1"]}})
    result = deliver(dns_server, dns_pool, smtp_server.port)
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    assert result.host == "mx2.two.test"
    assert len(result.tried) == 1 and result.tried[0].startswith("mx1.two.test[127.0.0.2]")
    assert smtp_server.received[0].data == MESSAGE


def test_delivery_by_implicit_mx(dns_server, dns_pool, smtp_server):
    dns_server.set_records("two.test", "A", ["127.0.0.1"])
    result = deliver(dns_server, dns_pool, smtp_server.port)
    assert result.recipients[0].outcome is Outcome.DELIVERED
    assert result.host == "two.test"


def test_every_mx_refusing_defers(dns_server, dns_pool, twisted_reactor):
    from tests.support.ports import free_port

    dns_server.load({"two.test": {"MX": [(10, "mx1.two.test"), (20, "mx2.two.test")]},
                     "mx1.two.test": {"A": ["127.0.0.2"]},
                     "mx2.two.test": {"A": ["127.0.0.1"]}})
    result = deliver(dns_server, dns_pool, free_port())
    assert result.session_failure and len(result.tried) == 2
    assert [(r.outcome, r.enhanced) for r in result.recipients] == [(Outcome.DEFERRED, "4.4.1")]


def test_null_mx_fails_every_recipient_at_once(dns_server, dns_pool, twisted_reactor):
    dns_server.set_records("two.test", "MX", [(0, ".")])
    result = deliver(dns_server, dns_pool, 1, recipients=("a@two.test", "b@two.test"))
    assert [(r.outcome, r.code, r.enhanced) for r in result.recipients] == [
        (Outcome.FAILED, 556, "5.1.10"), (Outcome.FAILED, 556, "5.1.10")]


def test_dns_failure_defers_every_recipient(dns_server, dns_pool, twisted_reactor):
    dns_server.servfail("two.test")
    result = deliver(dns_server, dns_pool, 1)
    assert [(r.outcome, r.enhanced) for r in result.recipients] == [(Outcome.DEFERRED, "4.4.3")]


def test_nonexistent_domain_fails_permanently(dns_server, dns_pool, twisted_reactor):
    result = deliver(dns_server, dns_pool, 1, domain="nowhere.test")
    assert [(r.outcome, r.enhanced) for r in result.recipients] == [(Outcome.FAILED, "5.1.2")]


def test_internal_error_defers_instead_of_failing(dns_server, dns_pool, twisted_reactor):
    from twisted.internet import reactor

    dns_server.set_records("two.test", "A", ["127.0.0.1"])
    result = in_reactor(
        deliver_to_domain, "two.test", "alice@one.test", ["bob@two.test"], object(),
        resolver=dns_server.resolver(), port=1, pool=dns_pool, helo_name="one.test",
        reactor=reactor, timeouts=FAST, destinations=LOOPBACK)
    assert [(r.outcome, r.enhanced) for r in result.recipients] == [(Outcome.DEFERRED, "4.3.0")]


# --- internal MX addresses (issue 16): refused unless their network is allowed


def test_an_mx_on_loopback_is_refused_like_a_null_mx_and_never_connected(
        dns_server, dns_pool, smtp_server):
    dns_server.load({"evil.test": {"MX": [(10, "mx.evil.test")]},
                     "mx.evil.test": {"A": ["127.0.0.1"], "AAAA": ["::ffff:127.0.0.1"]}})
    result = deliver(dns_server, dns_pool, smtp_server.port, domain="evil.test",
                     recipients=("a@evil.test", "b@evil.test"),
                     destinations=DestinationPolicy())
    assert [(r.outcome, r.code, r.enhanced) for r in result.recipients] == [
        (Outcome.FAILED, 556, "5.1.10"), (Outcome.FAILED, 556, "5.1.10")]
    assert "MX mx.evil.test of evil.test points to an internal address" in (
        result.recipients[0].text)
    assert smtp_server.factory.sessions == [] and smtp_server.received == []


def test_a_domain_without_mx_whose_address_is_internal_is_refused(dns_server):
    dns_server.set_records("evil.test", "A", ["169.254.169.254"])
    refused: list[Target] = []
    with pytest.raises(RouteError) as caught:
        strict_plan_route(dns_server.resolver(), "evil.test", refused=refused)
    reply = caught.value.reply
    assert (reply.code, reply.enhanced) == (556, "5.1.10")
    assert "Domain evil.test has no MX and its address points to an internal address" in (
        " ".join(reply.lines))
    assert refused == [Target("evil.test", "169.254.169.254")]


def test_internal_addresses_are_dropped_and_public_ones_kept(dns_server):
    dns_server.load({"two.test": {"MX": [(10, "mx1.two.test"), (20, "mx2.two.test")]},
                     "mx1.two.test": {"A": ["10.0.0.25", "192.168.1.25"], "AAAA": ["fd00::25"]},
                     "mx2.two.test": {"A": ["127.0.0.1", "93.184.215.14"],
                                      "AAAA": ["::1", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]}})
    refused: list[Target] = []
    assert strict_plan_route(dns_server.resolver(), "two.test", refused=refused) == [
        Target("mx2.two.test", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"),
        Target("mx2.two.test", "93.184.215.14")]
    assert [t.address for t in refused] == ["fd00::25", "10.0.0.25", "192.168.1.25", "::1",
                                            "127.0.0.1"]


def test_an_internal_mx_beside_one_in_dns_trouble_is_retried_not_bounced(dns_server):
    dns_server.load({"two.test": {"MX": [(10, "mx1.two.test"), (20, "mx2.two.test")]},
                     "mx1.two.test": {"A": ["10.0.0.25"]},
                     "mx2.two.test": {"A": ["93.184.215.14"]}})
    dns_server.servfail("mx2.two.test")
    with pytest.raises(RouteError) as caught:
        strict_plan_route(dns_server.resolver(), "two.test")
    assert caught.value.reply.code == 451


def test_an_allowed_network_is_routed_to(dns_server):
    dns_server.load({"two.test": {"MX": [(10, "mx.two.test")]},
                     "mx.two.test": {"A": ["10.20.0.25", "10.30.0.25"]}})
    allowed = DestinationPolicy.allowing(["10.20.0.0/16"])
    assert strict_plan_route(dns_server.resolver(), "two.test", destinations=allowed) == [
        Target("mx.two.test", "10.20.0.25")]
