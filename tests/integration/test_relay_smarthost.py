"""The relay worker with smarthost routes: real PostgreSQL, Redis, loopback DNS and a sink.

Recipient domains here have no MX at all (the test DNS server only knows the
smarthost's name), so whatever reaches the sink came by a smarthost route.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.python.threadpool import ThreadPool

from postroom.net.nexthop import Route, parse_nexthop
from postroom.store import domains, transports
from postroom_mta.relay import Relay, RelayOptions
from postroom_mta.smarthost import SmarthostOptions
from tests.integration.test_relay import FAST, POLICY, handle, spool_out, states
from tests.support.smtpsink import SMTPSink


@pytest.fixture
def smarthost(twisted_reactor: Any, dns_server: Any) -> Iterator[SMTPSink]:
    server = SMTPSink()
    dns_server.load({"smarthost.test": {"A": ["127.0.0.1"]}})
    yield server
    server.stop()


@pytest.fixture
def other(twisted_reactor: Any) -> Iterator[SMTPSink]:
    server = SMTPSink()
    yield server
    server.stop()


def make_relay(db, queue_client, dns_server, pools, relayhost: SMTPSink) -> Relay:
    dns, rds = pools
    route = Route(parse_nexthop(f"[smarthost.test]:{relayhost.port}"), "none")
    # port 9 (discard): nothing may go by MX here
    options = RelayOptions(policy=POLICY, port=9, timeouts=FAST,
                           smarthost=SmarthostOptions(relayhost=route))
    return Relay(db, queue_client, options, resolver=dns_server.resolver(timeout=1.0),
                 dns_pool=dns, redis_pool=rds)


@pytest.fixture
def db(database, clean_db):
    database.run_sync(domains.add_domain, "one.test")
    return database


@pytest.fixture
def pools() -> Iterator[tuple[ThreadPool, ThreadPool]]:
    dns = ThreadPool(minthreads=0, maxthreads=2, name="test-smarthost-dns")
    rds = ThreadPool(minthreads=0, maxthreads=2, name="test-smarthost-redis")
    dns.start()
    rds.start()
    yield dns, rds
    dns.stop()
    rds.stop()


def test_domains_behind_one_smarthost_share_one_transaction(db, queue_client, dns_server,
                                                            pools, smarthost):
    relay = make_relay(db, queue_client, dns_server, pools, smarthost)
    qid, rids = spool_out(db, "bob@two.test", "carol@three.test", "dave@four.test")
    handle(relay, qid, rids)
    [got] = smarthost.received
    assert sorted(got.rcpts) == ["bob@two.test", "carol@three.test", "dave@four.test"]
    assert len(smarthost.sessions) == 1
    assert set(states(db, qid).values()) == {"delivered"}


def test_a_transport_entry_wins_over_the_relay_host_per_domain(db, queue_client, dns_server,
                                                               pools, smarthost, other):
    db.run_sync(transports.set_transport, ".three.test", f"[smarthost.test]:{other.port}",
                tls="none")
    relay = make_relay(db, queue_client, dns_server, pools, smarthost)
    qid, rids = spool_out(db, "bob@two.test", "carol@a.three.test")
    handle(relay, qid, rids)
    assert [r.rcpts for r in smarthost.received] == [["bob@two.test"]]
    assert [r.rcpts for r in other.received] == [["carol@a.three.test"]]
    assert set(states(db, qid).values()) == {"delivered"}


def test_an_unresolvable_smarthost_defers_and_never_bounces(db, queue_client, dns_server,
                                                            pools, smarthost):
    db.run_sync(transports.set_transport, "two.test", "[ghost.test]:587", tls="none")
    relay = make_relay(db, queue_client, dns_server, pools, smarthost)
    qid, rids = spool_out(db, "bob@two.test")
    handle(relay, qid, rids)
    assert smarthost.received == []
    assert states(db, qid) == {"bob@two.test": "pending"}
