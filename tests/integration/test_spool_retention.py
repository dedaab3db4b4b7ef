"""Spool retention: what `purge_finished` deletes and keeps, the DMARC floor, the CLI, the loop."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from twisted.internet.defer import fail
from twisted.internet.task import Clock

from postroom.auth.passwords import hash_password
from postroom.config import Settings, load_settings
from postroom.metrics import Metrics
from postroom.net.tls import make_self_signed
from postroom.queue import retention
from postroom.store import domains, mailboxes, spool, users
from postroom.store.models import (
    MailboxEntry,
    Message,
    SpoolAttempt,
    SpoolMessage,
    SpoolRecipient,
)
from tests.support.ports import free_port
from tests.support.procs import runtime_argv
from tests.support.redisdb import in_reactor, wait_until

DAY = 86400.0
cheap = functools.partial(hash_password, ln=4)


@pytest.fixture
def db(database, clean_db):
    return database


def settings(**changes: Any) -> Settings:
    return load_settings({}).replace(**changes)


def make(db, body: bytes, recipients=(("a@example.test", "deliver", None, None),)) -> str:
    return str(db.run_sync(spool.create_spool, kind="inbound", mail_from="x@remote.test",
                           recipients=list(recipients), message=body))


def finish(db, qid: str, how: str = "delivered") -> list[int]:
    ids = [r.id for r in db.run_sync(spool.get_spool, qid).recipients]
    for rid in ids:
        if how == "delivered":
            db.run_sync(spool.mark_delivered, rid, "250 ok")
        else:
            db.run_sync(spool.mark_deferred, rid, "451 later", datetime.now(UTC))
            db.run_sync(spool.mark_failed, rid, "550 no")
            if how == "bounced":
                db.run_sync(spool.mark_bounced, [rid])
    return ids


def age(db, qid: str, days: float) -> None:
    """Pretend the message arrived, and its recipients last changed, ``days`` ago."""
    when = datetime.now(UTC) - timedelta(days=days)

    def backdate(session):
        sid = session.execute(select(SpoolMessage.id).where(SpoolMessage.queue_id == qid)
                              ).scalar_one()
        session.execute(update(SpoolMessage).where(SpoolMessage.id == sid)
                        .values(received_at=when))
        session.execute(update(SpoolRecipient).where(SpoolRecipient.spool_message_id == sid)
                        .values(updated_at=when))

    db.run_sync(backdate)


def queue_ids(db) -> set[str]:
    return set(db.run_sync(lambda s: list(s.execute(select(SpoolMessage.queue_id)).scalars())))


def count(db, model) -> int:
    return int(db.run_sync(lambda s: s.execute(select(func.count()).select_from(model))
                           .scalar_one()))


def purge(db, config: Settings | None = None) -> int:
    before = retention.cutoff(config or settings())
    return int(retention.purge_sync(db, before, batch_size=2))


def test_finished_old_messages_go_with_recipients_attempts_and_blobs(db):
    delivered, bounced = make(db, b"one"), make(db, b"two", [
        ("a@example.test", "deliver", None, None), ("b@remote.test", "outbound", None, None)])
    finish(db, delivered)
    finish(db, bounced, "bounced")
    age(db, delivered, 8)
    age(db, bounced, 8)
    assert count(db, SpoolAttempt) == 1 + 2 * 3  # delivered; deferred, failed, bounced
    assert purge(db) == 2
    assert queue_ids(db) == set()
    assert (count(db, SpoolRecipient), count(db, SpoolAttempt), count(db, Message)) == (0, 0, 0)


def test_unfinished_and_recent_messages_stay(db):
    pending, failed = make(db, b"pending"), make(db, b"failed")
    recent, late = make(db, b"recent"), make(db, b"late")
    finish(db, failed, "failed")
    finish(db, recent)
    finish(db, late)
    for qid in (pending, failed, late):
        age(db, qid, 30)
    # arrived long ago but bounced only now: its history is kept for the retention from now
    def just_now(session):
        session.execute(update(SpoolRecipient).where(
            SpoolRecipient.spool_message_id == select(SpoolMessage.id).where(
                SpoolMessage.queue_id == late).scalar_subquery()).values(updated_at=func.now()))

    db.run_sync(just_now)
    assert purge(db) == 0
    assert queue_ids(db) == {pending, failed, recent, late}
    assert count(db, Message) == 4


def test_a_blob_a_mailbox_still_holds_stays(db):
    db.run_sync(domains.add_domain, "example.test")
    alice = db.run_sync(users.add_user, "alice@example.test", "pw", hash_fn=cheap)
    qid = make(db, b"kept in a mailbox")
    info = db.run_sync(spool.get_spool, qid)
    [rid] = finish(db, qid)
    db.run_sync(mailboxes.deliver_to_mailbox, user_id=alice.id, mailbox_name="INBOX",
                message_id=info.message_id, spool_recipient_id=rid)
    age(db, qid, 8)
    assert purge(db) == 1
    assert queue_ids(db) == set()
    assert count(db, Message) == 1
    # the delivery key is cleared (ON DELETE SET NULL), the mailbox copy is untouched
    keys = db.run_sync(lambda s: list(s.execute(select(MailboxEntry.spool_recipient_id))
                                      .scalars()))
    assert keys == [None]


def test_a_blob_another_spool_message_uses_stays(db):
    old, young = make(db, b"same bytes"), make(db, b"same bytes")
    finish(db, old)
    age(db, old, 8)
    assert purge(db) == 1
    assert queue_ids(db) == {young}
    assert count(db, Message) == 1


def test_batches_continue_until_done_and_stop_at_the_bound(db):
    qids = [make(db, b"m%d" % i) for i in range(5)]
    for qid in qids:
        finish(db, qid)
        age(db, qid, 8)
    before = retention.cutoff(settings())
    assert retention.purge_sync(db, before, batch_size=2, max_batches=2) == 4
    assert len(queue_ids(db)) == 1
    assert retention.purge_sync(db, before, batch_size=2) == 1


def test_the_dmarc_floor_raises_a_short_retention():
    config = settings(spool_retention=3600.0, dmarc_report_interval=DAY)
    assert retention.effective_retention(config) == 2 * DAY + 60
    now = datetime(2026, 11, 26, tzinfo=UTC)
    assert retention.cutoff(config, now) == now - timedelta(seconds=2 * DAY + 60)
    assert retention.effective_retention(settings(spool_retention=7 * DAY)) == 7 * DAY
    # an explicit --older-than is floored too
    assert retention.effective_retention(config, 60.0) == 2 * DAY + 60


def test_the_dmarc_floor_keeps_a_report_row_a_short_retention_would_purge(db):
    qid = make(db, b"an aggregate report")
    finish(db, qid)
    age(db, qid, 1.5)
    assert purge(db, settings(spool_retention=3600.0)) == 0
    assert purge(db, settings(spool_retention=3600.0, dmarc_report_interval=3600.0)) == 1


class Events:
    """A stand-in for the JSON logger that keeps (event, fields)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.seen.append((event, fields))

    error = info

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.seen if name == event]


def test_the_purger_runs_shortly_after_start_logs_counts_and_stops(db, twisted_reactor):
    qid = make(db, b"old")
    finish(db, qid)
    age(db, qid, 8)
    metrics, log = Metrics("mta", process_metrics=False), Events()
    purger = retention.SpoolPurger(db, settings(), metrics=metrics, start_delay=0.05,
                                   log=log)  # type: ignore[arg-type]
    assert b"postroom_spool_purged_total 0.0" in metrics.render()
    in_reactor(purger.start)
    wait_until(lambda: purger.purged_total == 1)
    assert queue_ids(db) == set()
    [fields] = log.named("spool purged")
    assert fields["count"] == 1 and fields["cutoff"] and fields["more"] is False
    assert b"postroom_spool_purged_total 1.0" in metrics.render()
    in_reactor(purger.stop)
    assert not purger._loop.running


def test_a_failing_tick_is_logged_and_the_loop_goes_on():
    class Broken:
        def run(self, *args: Any, **kwargs: Any) -> Any:
            return fail(RuntimeError("database away"))

    clock, log = Clock(), Events()
    purger = retention.SpoolPurger(Broken(), settings(), reactor=clock, start_delay=1,
                                   log=log)  # type: ignore[arg-type]
    purger.start()
    clock.advance(1)
    clock.advance(retention.PURGE_INTERVAL)
    assert [f["error"] for f in log.named("spool purge failed")] == ["database away"] * 2
    assert purger._loop.running
    purger.stop()
    assert not purger._loop.running


def test_stopping_before_the_first_tick_cancels_it():
    clock = Clock()
    purger = retention.SpoolPurger(object(), settings(), reactor=clock, log=Events())  # type: ignore[arg-type]
    purger.start()
    purger.stop()
    assert clock.getDelayedCalls() == []


@pytest.fixture
def cli(clean_db):
    def run(*args: str, env: dict[str, str] | None = None,
            ok: bool = True) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
        environ["POSTROOM_DATABASE_URL"] = clean_db
        environ.update(env or {})
        result = subprocess.run([sys.executable, "-m", "postroom.ops.cli", *args],
                                capture_output=True, text=True, env=environ, timeout=120)
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    return run


def test_queue_purge_dry_run_counts_and_removes_nothing_then_purges(db, cli):
    old, young = make(db, b"old"), make(db, b"young")
    finish(db, old)
    finish(db, young)
    age(db, old, 8)
    age(db, young, 3)
    assert "1 finished message(s)" in cli("queue", "purge", "--dry-run").stdout
    assert queue_ids(db) == {old, young}
    done = cli("queue", "purge")
    assert "1 finished message(s)" in done.stdout and "purged" in done.stdout
    assert queue_ids(db) == {young}
    # 1h is raised to the DMARC floor (2 x 1d + 1m): the 3-day-old message goes, said so
    shorter = cli("queue", "purge", "--older-than", "1h")
    assert "raised" in shorter.stderr and "1 finished message(s)" in shorter.stdout
    assert queue_ids(db) == set() and count(db, Message) == 0


def test_queue_purge_refuses_a_bad_duration(cli):
    result = cli("queue", "purge", "--older-than", "soon", ok=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_migrations_cascade_spool_deletes(db):
    """The schema (as migrated, not as modelled) cascades what purge_finished relies on."""
    rules = dict(db.run_sync(lambda s: s.execute(text(
        "SELECT conname, confdeltype FROM pg_constraint WHERE contype = 'f' AND conname IN ("
        "'fk_spool_recipients_spool_message_id_spool_messages', "
        "'fk_spool_recipients_parent_id_spool_recipients', "
        "'fk_spool_attempts_recipient_id_spool_recipients', "
        "'fk_mailbox_entries_spool_recipient_id_spool_recipients')")).all()))
    assert rules == {"fk_spool_recipients_spool_message_id_spool_messages": "c",
                     "fk_spool_recipients_parent_id_spool_recipients": "c",
                     "fk_spool_attempts_recipient_id_spool_recipients": "c",
                     "fk_mailbox_entries_spool_recipient_id_spool_recipients": "n"}


@pytest.mark.slow
def test_the_mta_purges_shortly_after_start(db, tmp_path, database_url, redis_url, redis_prefix,
                                            dns_server, service_process):
    old, young = make(db, b"old"), make(db, b"young")
    finish(db, old)
    finish(db, young)
    age(db, old, 8)
    make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mx.one.test")
    env = {"POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
           "POSTROOM_REDIS_PREFIX": redis_prefix, "POSTROOM_DB_POOL_SIZE": "3",
           "POSTROOM_HOSTNAME": "mx.one.test", "POSTROOM_SHUTDOWN_GRACE": "5s",
           "POSTROOM_TLS_CERT_FILE": str(tmp_path / "cert.pem"),
           "POSTROOM_TLS_KEY_FILE": str(tmp_path / "key.pem"),
           "POSTROOM_MTA_LISTEN": f"tcp:{free_port()}:interface=127.0.0.1", **dns_server.env}
    mta = service_process("mta", env, argv=runtime_argv("postroom_mta.main:SERVICE"))
    wait_until(lambda: queue_ids(db) == {young}, timeout=30)
    wait_until(lambda: any(e.get("event") == "spool purged" for e in mta.log_events()))
    [line] = [e for e in mta.log_events() if e.get("event") == "spool purged"]
    assert line["count"] == 1 and line["component"] == "spool-retention" and line["cutoff"]
    assert mta.stop() == 0
