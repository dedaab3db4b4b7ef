"""The relay worker against real PostgreSQL, Redis, loopback DNS and an SMTP sink on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from twisted.python.threadpool import ThreadPool

from postroom.queue.consumer import QueueEntry
from postroom.queue.envelope import Envelope
from postroom.store import domains, messages, spool
from postroom.store.models import SpoolMessage
from postroom_mta.relay import Relay, RelayOptions
from postroom_mta.smtpclient import Timeouts
from postroom_mta.worker_bounce import BounceSweeper
from postroom_mta.worker_store import Policy
from tests.support.dns import LOOPBACK_NETWORKS
from tests.support.redisdb import in_reactor
from tests.support.smtpsink import SinkConfig, SMTPSink

FAST = Timeouts(connect=5, initial=10, helo=10, mail=10, rcpt=10, data_init=10, data_block=10,
                data_end=10, quit=5)
POLICY = Policy(hostname="mx.one.test", retry_initial=300, retry_max=3600,
                queue_lifetime=5 * 86400, delay_notice=4 * 3600)
MESSAGE = (b"From: Alice <alice@one.test>\r\nTo: bob@two.test\r\nSubject: relayed\r\n"
           b"Message-ID: <r1@one.test>\r\n\r\nline one\r\n.leading dot\r\n\r\nlast line\r\n")


@pytest.fixture
def db(database, clean_db):
    database.run_sync(domains.add_domain, "one.test")
    return database


@pytest.fixture
def pools() -> Iterator[tuple[ThreadPool, ThreadPool]]:
    dns = ThreadPool(minthreads=0, maxthreads=2, name="test-relay-dns")
    rds = ThreadPool(minthreads=0, maxthreads=2, name="test-relay-redis")
    dns.start()
    rds.start()
    yield dns, rds
    dns.stop()
    rds.stop()


@pytest.fixture
def sink(twisted_reactor: Any, dns_server: Any) -> Iterator[SMTPSink]:
    server = SMTPSink()
    dns_server.load({"two.test": {"MX": [(10, "mx.two.test")]},
                     "mx.two.test": {"A": ["127.0.0.1"]}})
    yield server
    server.stop()


@pytest.fixture
def relay(db, queue_client, dns_server, sink, pools) -> Relay:
    dns, rds = pools
    options = RelayOptions(policy=POLICY, port=sink.port, timeouts=FAST,
                           allowed_networks=LOOPBACK_NETWORKS)
    return Relay(db, queue_client, options, resolver=dns_server.resolver(timeout=1.0),
                 dns_pool=dns, redis_pool=rds)


def spool_out(db, *recipients, mail_from="alice@one.test", message=MESSAGE, kind="submission",
              envid="ENV-7", ret=None, notify=None):
    rows = [(a, "outbound", a, notify) for a in recipients]
    qid = db.run_sync(spool.create_spool, kind=kind, mail_from=mail_from, recipients=rows,
                      message=message, envid=envid, ret=ret)
    return qid, tuple(r.id for r in db.run_sync(spool.get_spool, qid).recipients)


def handle(relay: Relay, qid: str, rids: tuple[int, ...], claimed: bool = False) -> None:
    in_reactor(relay.handle, QueueEntry("1-0", Envelope(qid, rids, "outbound"), claimed),
               timeout=30)


def states(db, qid):
    return {r.address: r.state for r in db.run_sync(spool.get_spool, qid).recipients}


def bounces(db) -> list[spool.SpoolInfo]:
    qids = db.run_sync(lambda s: list(s.execute(
        select(SpoolMessage.queue_id).where(SpoolMessage.kind == "bounce")
        .order_by(SpoolMessage.id)).scalars()))
    return [db.run_sync(spool.get_spool, q) for q in qids]


def dsn_of(db, info: spool.SpoolInfo) -> email.message.EmailMessage:
    raw = db.run_sync(messages.get_message, info.message_id)
    return email.message_from_bytes(raw, policy=email.policy.default)


def status_blocks(dsn):
    part = dsn.get_payload()[1]
    assert part.get_content_type() == "message/delivery-status"
    blocks = part.get_payload()
    return blocks[0], blocks[1:]


def set_rcpt_reply(sink: SMTPSink, replies: dict[str, bytes]) -> None:
    sink.config = SinkConfig(rcpt=lambda a: replies.get(a, b"250 2.1.5 ok"))


def test_a_remote_message_arrives_byte_exact_and_is_marked_delivered(db, relay, sink):
    qid, rids = spool_out(db, "bob@two.test")
    handle(relay, qid, rids)
    [got] = sink.received
    assert got.data == MESSAGE
    assert got.rcpts == ["bob@two.test"] and "<alice@one.test>" in got.mail
    assert states(db, qid) == {"bob@two.test": "delivered"}


def test_recipients_of_one_domain_share_one_transaction(db, relay, sink):
    qid, rids = spool_out(db, "bob@two.test", "carol@two.test")
    handle(relay, qid, rids)
    [got] = sink.received
    assert sorted(got.rcpts) == ["bob@two.test", "carol@two.test"]


def test_local_recipients_move_to_the_deliver_stream(db, relay, sink, queue_client):
    qid, rids = spool_out(db, "dave@one.test", "bob@two.test")
    handle(relay, qid, rids)
    by_address = {r.address: r for r in db.run_sync(spool.get_spool, qid).recipients}
    assert by_address["dave@one.test"].stream == "deliver"
    assert by_address["dave@one.test"].state == "pending"
    assert [r.rcpts for r in sink.received] == [["bob@two.test"]]
    [(_entry_id, fields)] = queue_client.redis.xrange(queue_client.stream_key("deliver"))
    assert fields["queue_id"] == qid and fields["rcpt"] == str(by_address["dave@one.test"].id)


def test_a_4xx_defers_with_back_off_and_a_wake_up(db, relay, sink, queue_client):
    set_rcpt_reply(sink, {"bob@two.test": b"451 4.7.1 greylisted, come back later"})
    qid, rids = spool_out(db, "bob@two.test")
    before = datetime.now(UTC)
    handle(relay, qid, rids)
    [rcpt] = db.run_sync(spool.get_spool, qid).recipients
    assert (rcpt.state, rcpt.attempts) == ("pending", 1)
    assert "451 4.7.1 greylisted" in rcpt.last_error and "mx.two.test" in rcpt.last_error
    assert before + timedelta(seconds=299) <= rcpt.next_attempt_at \
        <= datetime.now(UTC) + timedelta(seconds=301)
    assert queue_client.next_wakeup("outbound") == pytest.approx(
        rcpt.next_attempt_at.timestamp(), abs=1)
    assert bounces(db) == []


def test_a_deferred_recipient_succeeds_on_a_later_attempt(db, relay, sink):
    set_rcpt_reply(sink, {"bob@two.test": b"451 4.7.1 greylisted"})
    qid, rids = spool_out(db, "bob@two.test")
    handle(relay, qid, rids)
    set_rcpt_reply(sink, {})
    db.run_sync(lambda s: s.execute(text("UPDATE spool_recipients SET next_attempt_at = now()")))
    handle(relay, qid, rids)
    assert states(db, qid) == {"bob@two.test": "delivered"}
    assert len(sink.received) == 1


def test_a_stale_entry_for_a_deferred_recipient_does_not_send_early(db, relay, sink):
    set_rcpt_reply(sink, {"bob@two.test": b"451 4.7.1 greylisted"})
    qid, rids = spool_out(db, "bob@two.test")
    handle(relay, qid, rids)
    set_rcpt_reply(sink, {})
    handle(relay, qid, rids, claimed=True)
    assert sink.received == []
    assert db.run_sync(spool.get_spool, qid).recipients[0].attempts == 1


def test_a_second_back_off_doubles(db, relay, sink):
    set_rcpt_reply(sink, {"bob@two.test": b"451 4.7.1 greylisted"})
    qid, rids = spool_out(db, "bob@two.test")
    handle(relay, qid, rids)
    db.run_sync(lambda s: s.execute(text("UPDATE spool_recipients SET next_attempt_at = now()")))
    handle(relay, qid, rids)
    [rcpt] = db.run_sync(spool.get_spool, qid).recipients
    delay = (rcpt.next_attempt_at - datetime.now(UTC)).total_seconds()
    assert rcpt.attempts == 2 and 590 <= delay <= 601


def test_a_5xx_bounces_with_a_dsn_to_the_sender(db, relay, sink):
    set_rcpt_reply(sink, {"bob@two.test": b"550 5.1.1 No such user here"})
    qid, rids = spool_out(db, "bob@two.test", "carol@two.test")
    handle(relay, qid, rids)
    assert states(db, qid) == {"bob@two.test": "bounced", "carol@two.test": "delivered"}
    [dsn_info] = bounces(db)
    assert dsn_info.mail_from == "" and dsn_info.kind == "bounce"
    [to] = dsn_info.recipients
    assert (to.address, to.stream) == ("alice@one.test", "deliver")  # the sender is local
    dsn = dsn_of(db, dsn_info)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    per_message, [block] = status_blocks(dsn)
    assert per_message["Original-Envelope-Id"] == "ENV-7"
    assert per_message["Reporting-MTA"] == "dns; mx.one.test"
    assert block["Final-Recipient"] == "rfc822; bob@two.test"
    assert block["Original-Recipient"] == "rfc822; bob@two.test"
    assert (block["Action"], block["Status"]) == ("failed", "5.1.1")
    assert block["Remote-MTA"] == "dns; mx.two.test"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user here"


def test_a_bounce_to_a_remote_sender_goes_outbound(db, relay, sink, queue_client):
    set_rcpt_reply(sink, {"bob@two.test": b"550 5.1.1 No such user here"})
    qid, rids = spool_out(db, "bob@two.test", mail_from="zed@three.test")
    handle(relay, qid, rids)
    [dsn_info] = bounces(db)
    assert [(r.address, r.stream) for r in dsn_info.recipients] == [("zed@three.test",
                                                                     "outbound")]
    entries = queue_client.redis.xrange(queue_client.stream_key("outbound"))
    assert [f["queue_id"] for _id, f in entries] == [dsn_info.queue_id]


def test_a_redelivered_entry_makes_no_second_bounce(db, relay, sink):
    set_rcpt_reply(sink, {"bob@two.test": b"550 5.1.1 No such user here"})
    qid, rids = spool_out(db, "bob@two.test")
    handle(relay, qid, rids)
    handle(relay, qid, rids, claimed=True)
    assert len(bounces(db)) == 1


def test_null_mx_bounces_at_once(db, relay, sink, dns_server):
    dns_server.set_records("two.test", "MX", [(0, ".")])
    qid, rids = spool_out(db, "bob@two.test")
    handle(relay, qid, rids)
    assert states(db, qid) == {"bob@two.test": "bounced"}
    _, [block] = status_blocks(dsn_of(db, bounces(db)[0]))
    assert block["Status"] == "5.1.10" and block["Remote-MTA"] is None
    assert sink.sessions == []


def strict_relay(db, queue_client, dns_server, pools, metrics=None) -> Relay:
    """A relay as shipped: no internal network allowed (POSTROOM_RELAY_ALLOWED_NETWORKS empty)."""
    dns, rds = pools
    return Relay(db, queue_client, RelayOptions(policy=POLICY, port=1, timeouts=FAST),
                 resolver=dns_server.resolver(timeout=1.0), dns_pool=dns, redis_pool=rds,
                 metrics=metrics)


def test_an_mx_on_loopback_bounces_with_a_dsn_that_says_why(db, queue_client, dns_server, pools,
                                                            sink):
    from postroom.metrics import Metrics

    metrics = Metrics("mta", process_metrics=False)
    dns_server.load({"evil.test": {"MX": [(10, "mx.evil.test")]},
                     "mx.evil.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]}})
    relay = strict_relay(db, queue_client, dns_server, pools, metrics)
    qid, rids = spool_out(db, "victim@evil.test")
    handle(relay, qid, rids)
    assert states(db, qid) == {"victim@evil.test": "bounced"}
    assert sink.sessions == []
    [dsn_info] = bounces(db)
    assert [r.address for r in dsn_info.recipients] == ["alice@one.test"]
    _, [block] = status_blocks(dsn_of(db, dsn_info))
    assert (block["Action"], block["Status"]) == ("failed", "5.1.10")
    assert block["Remote-MTA"] is None
    assert "556 5.1.10 MX mx.evil.test of evil.test points to an internal address" in (
        block["Diagnostic-Code"])
    assert metrics.registry.get_sample_value(
        "postroom_relay_internal_mx_refused_total") == 2


def test_a_bounce_to_a_sender_whose_mx_is_internal_is_dropped_unsent(db, queue_client,
                                                                     dns_server, pools, sink):
    # a bounce or vacation reply is mail anyone can make us send, to any address they like
    dns_server.set_records("evil.test", "A", ["10.0.0.25"])
    relay = strict_relay(db, queue_client, dns_server, pools)
    qid, rids = spool_out(db, "zed@evil.test", mail_from="", kind="bounce")
    handle(relay, qid, rids)
    assert states(db, qid) == {"zed@evil.test": "bounced"}
    assert [b.queue_id for b in bounces(db)] == [qid]  # no DSN about a DSN
    assert "points to an internal address (10.0.0.25)" in (
        db.run_sync(spool.get_spool, qid).recipients[0].last_error)


def test_a_temporary_failure_after_the_lifetime_bounces(db, relay, sink):
    set_rcpt_reply(sink, {"bob@two.test": b"451 4.3.0 try later"})
    qid, rids = spool_out(db, "bob@two.test")
    db.run_sync(lambda s: s.execute(text(
        "UPDATE spool_messages SET received_at = now() - interval '6 days'")))
    handle(relay, qid, rids)
    assert states(db, qid) == {"bob@two.test": "bounced"}
    _, [block] = status_blocks(dsn_of(db, bounces(db)[0]))
    assert block["Action"] == "failed" and block["Status"] == "4.3.0"
    assert "delivery time expired" in block["Diagnostic-Code"]


def test_an_unreachable_destination_is_retried_no_later_than_the_lifetime_end(db, relay, sink,
                                                                               dns_server):
    dns_server.set_records("mx.two.test", "A", ["127.0.0.2"])  # nothing listens there
    qid, rids = spool_out(db, "bob@two.test")
    db.run_sync(lambda s: s.execute(text(
        "UPDATE spool_messages SET received_at = now() - interval '5 days' + interval '60 s'")))
    handle(relay, qid, rids)
    info = db.run_sync(spool.get_spool, qid)
    [rcpt] = info.recipients
    assert rcpt.state == "pending" and "Connection refused" in rcpt.last_error
    assert rcpt.next_attempt_at == info.received_at + timedelta(days=5)


def test_notify_never_gives_no_bounce(db, relay, sink):
    set_rcpt_reply(sink, {"bob@two.test": b"550 5.1.1 No such user here"})
    qid, rids = spool_out(db, "bob@two.test", notify="NEVER")
    handle(relay, qid, rids)
    assert states(db, qid) == {"bob@two.test": "bounced"}
    assert bounces(db) == []


def test_notify_and_orcpt_are_passed_to_the_remote_server(db, relay, sink):
    qid, rids = spool_out(db, "bob@two.test", notify="FAILURE,DELAY")
    handle(relay, qid, rids)
    [command] = sink.received[0].rcpt_commands
    assert "NOTIFY=DELAY,FAILURE" in command and "ORCPT=rfc822;bob@two.test" in command


def test_a_bounce_that_bounces_makes_no_dsn(db, relay, sink):
    set_rcpt_reply(sink, {"zed@two.test": b"550 5.1.1 No such user here"})
    qid, rids = spool_out(db, "zed@two.test", mail_from="", kind="bounce")
    handle(relay, qid, rids)
    assert states(db, qid) == {"zed@two.test": "bounced"}
    assert [b.queue_id for b in bounces(db)] == [qid]  # only the original bounce itself


def test_a_delay_notice_is_sent_once_when_notify_asks_for_it(db, relay, sink):
    set_rcpt_reply(sink, {"bob@two.test": b"451 4.4.1 busy"})
    qid, rids = spool_out(db, "bob@two.test", notify="FAILURE,DELAY")
    db.run_sync(lambda s: s.execute(text(
        "UPDATE spool_messages SET received_at = now() - interval '5 hours'")))
    handle(relay, qid, rids)
    db.run_sync(lambda s: s.execute(text("UPDATE spool_recipients SET next_attempt_at = now() "
                                         "WHERE state = 'pending' AND stream = 'outbound'")))
    handle(relay, qid, rids)
    assert states(db, qid) == {"bob@two.test": "pending"}
    [dsn_info] = bounces(db)
    _, [block] = status_blocks(dsn_of(db, dsn_info))
    assert (block["Action"], block["Status"]) == ("delayed", "4.4.1")
    assert block["Will-Retry-Until"] is not None


def test_the_sweeper_bounces_recipients_failed_by_the_mda(db, queue_client, pools):
    qid = db.run_sync(spool.create_spool, kind="inbound", mail_from="zed@three.test",
                      recipients=[("nobody@one.test", "deliver", None, None)], message=MESSAGE)
    [rcpt] = db.run_sync(spool.get_spool, qid).recipients
    db.run_sync(spool.mark_failed, rcpt.id, "550 5.1.1 no such user here")
    sweeper = BounceSweeper(db, queue_client, POLICY, interval=60, redis_pool=pools[1])
    assert in_reactor(sweeper.sweep) == 1
    assert states(db, qid) == {"nobody@one.test": "bounced"}
    [dsn_info] = bounces(db)
    _, [block] = status_blocks(dsn_of(db, dsn_info))
    assert block["Status"] == "5.1.1" and block["Diagnostic-Code"].startswith("X-Postroom;")
    assert in_reactor(sweeper.sweep) == 0
