"""The relay's connection reuse with real PostgreSQL, Redis, loopback DNS and the SMTP sink.

Messages handled back to back (as the StreamConsumer does when entries for a
destination arrive close together) go over one TCP connection, each with its
own transaction and per-recipient results recorded in the spool.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import gatherResults

from postroom.metrics import Metrics
from postroom.queue.consumer import QueueEntry
from postroom.queue.envelope import Envelope
from postroom_mta.relay import Relay, RelayOptions
from tests.integration import test_relay
from tests.integration.test_relay import FAST, POLICY, handle, spool_out, states
from tests.support.dns import LOOPBACK_NETWORKS
from tests.support.redisdb import in_reactor, wait_until
from tests.support.smtpsink import SMTPSink

# the same database, thread pools and sink as the relay's other tests
db = test_relay.db
pools = test_relay.pools
sink = test_relay.sink


def make_relay(db, queue_client, dns_server, sink: SMTPSink, pools,
               metrics: Metrics | None = None, **options: Any) -> Relay:
    dns, rds = pools
    options.setdefault("allowed_networks", LOOPBACK_NETWORKS)
    return Relay(db, queue_client, RelayOptions(policy=POLICY, port=sink.port, timeouts=FAST,
                                                **options),
                 resolver=dns_server.resolver(timeout=1.0), dns_pool=dns, redis_pool=rds,
                 metrics=metrics)


def message(n: int) -> bytes:
    return f"From: alice@one.test\r\nSubject: m{n}\r\nMessage-ID: <m{n}@one.test>\r\n\r\n" \
           f"body {n}\r\n.dot\r\n".encode()


def mail_verbs(session: Any) -> list[str]:
    return [c.split(" ", 1)[0].upper() for c in session.commands]


def test_messages_handled_back_to_back_share_one_connection(db, queue_client, dns_server,
                                                            sink, pools):
    sink.config.rcpt = lambda a: b"550 5.1.1 unknown" if a.startswith("gone") else \
        b"250 2.1.5 ok"
    metrics = Metrics("mta", process_metrics=False)
    relay = make_relay(db, queue_client, dns_server, sink, pools, metrics)
    spooled = [spool_out(db, f"bob{n}@two.test", f"gone{n}@two.test", message=message(n))
               for n in range(4)]
    for qid, rids in spooled:
        handle(relay, qid, rids)
    assert len(sink.sessions) == 1
    assert mail_verbs(sink.sessions[0]).count("MAIL") == 4
    assert mail_verbs(sink.sessions[0]).count("RSET") == 3
    assert [r.data for r in sink.received] == [message(n) for n in range(4)]
    assert [r.rcpts for r in sink.received] == [[f"bob{n}@two.test"] for n in range(4)]
    for n, (qid, _rids) in enumerate(spooled):
        assert states(db, qid) == {f"bob{n}@two.test": "delivered",
                                   f"gone{n}@two.test": "bounced"}
    assert metrics.registry.get_sample_value("postroom_relay_sessions_reused_total") == 3
    in_reactor(relay.stop)
    assert mail_verbs(sink.sessions[0])[-1] == "QUIT"
    wait_until(lambda: not sink.sessions[0].transport.connected, timeout=5)


@pytest.mark.parametrize(("max_sessions", "connections"), [(1, range(2, 7)), (2, range(2, 3))])
def test_concurrent_messages_within_tight_limits_never_wait_on_idle_sessions(
        db, queue_client, dns_server, sink, pools, max_sessions, connections):
    dns_server.load({"two.test": {"MX": [(10, "mx.two.test")]},
                     "mx.two.test": {"A": ["127.0.0.1"]},
                     "three.test": {"MX": [(10, "mx.three.test")]},
                     "mx.three.test": {"A": ["127.0.0.1"]}})
    relay = make_relay(db, queue_client, dns_server, sink, pools, max_sessions=max_sessions,
                       max_per_domain=1)
    spooled = [spool_out(db, f"r{n}@{'two' if n % 2 else 'three'}.test", message=message(n))
               for n in range(6)]

    def all_at_once() -> Any:
        return gatherResults([relay.handle(QueueEntry("1-0", Envelope(qid, rids, "outbound"),
                                                      False)) for qid, rids in spooled])

    in_reactor(all_at_once, timeout=60)
    for n, (qid, _rids) in enumerate(spooled):
        assert states(db, qid) == {f"r{n}@{'two' if n % 2 else 'three'}.test": "delivered"}
    # idle sessions hold no slot (nothing waited on them) and are bounded by the global
    # limit: with one slot the other MX's idle session is evicted, with two both stay
    assert len(sink.sessions) in connections
    assert len(relay.session_cache or ()) <= max_sessions
    assert sum(mail_verbs(s).count("MAIL") for s in sink.sessions) == 6
    in_reactor(relay.stop)


def test_reuse_limit_of_one_turns_reuse_off(db, queue_client, dns_server, sink, pools):
    relay = make_relay(db, queue_client, dns_server, sink, pools, session_reuse_limit=1)
    assert relay.session_cache is None and relay.stop() is None
    for n in range(2):
        qid, rids = spool_out(db, "bob@two.test", message=message(n))
        handle(relay, qid, rids)
    assert len(sink.sessions) == 2
    assert all(mail_verbs(s)[-1] == "QUIT" for s in sink.sessions)
