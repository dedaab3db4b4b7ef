"""The learn worker: the `learn` stream on the real Redis, the store, a real rspamd controller.

A request whose submission fails is put back with its attempt count raised
(and learnt once rspamd answers), dropped past the attempt limit, skipped
when the user no longer has the message, and a malformed entry is removed.
Durability: a move into Junk records its request in ``learn_requests`` in the
move's transaction, so a signal Redis never got (the imap service's Redis
away) is re-sent by the worker's reconcile and learnt; a request done already
is not learnt twice.
"""

from __future__ import annotations

import imaplib
import secrets
import ssl
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text
from twisted.internet import defer

from postroom.auth.passwords import hash_password
from postroom.metrics import Metrics
from postroom.mime import analyze
from postroom.queue import learning
from postroom.store import domains, entries, mailboxes, messages, users
from postroom.store.db import Database
from postroom_dmarc.content.learning import LearnWorker
from postroom_dmarc.content.rspamd import RspamdClient
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, listener_env, runtime_argv
from tests.support.redisdb import in_reactor, wait_until
from tests.support.scanners import RSPAMD_PASSWORD, RspamdServer


def _message() -> bytes:
    words = "\r\n".join(f"cheap{i} replica watches casino bonus {secrets.token_hex(4)}"
                        for i in range(40))
    return (f"From: <spam@spam.example>\r\nTo: <u@learn.test>\r\nSubject: bonus\r\n"
            f"Message-ID: <{secrets.token_hex(8)}@spam.example>\r\n\r\n{words}\r\n").encode()


@pytest.fixture
def stored(database: Database) -> tuple[int, int]:
    """(user id, message id) of a message in a fresh user's Junk."""
    domain = f"learn-{secrets.token_hex(3)}.test"

    def work(session: Any) -> tuple[int, int]:
        domains.add_domain(session, domain)
        user = users.add_user(session, f"u@{domain}", "pw",
                              hash_fn=lambda p: hash_password(p, ln=4))
        data = _message()
        message_id = messages.store_message(session, data, analyze(data).to_dict())
        mailboxes.deliver_to_mailbox(session, user_id=user.id, mailbox_name="Junk",
                                     message_id=message_id, spool_recipient_id=None)
        return int(user.id), int(message_id)

    return database.run_sync(work)


@pytest.fixture
def client(redis_url: str) -> Any:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


def _worker(database: Database, client: redis.Redis, prefix: str, url: str, reactor: Any,
            **kw: Any) -> LearnWorker:
    from twisted.python.threadpool import ThreadPool

    rspamd = RspamdClient(url, reactor=reactor, timeout=5, password=RSPAMD_PASSWORD,
                          controller_url=url)
    pool = ThreadPool(1, 1, name="learn-test")
    pool.start()
    worker = LearnWorker(rspamd, database, client, prefix, pool, reactor,
                         metrics=Metrics("test", process_metrics=False), **kw)
    worker._pause = lambda seconds: defer.succeed(None)  # type: ignore[method-assign,assignment,return-value]
    return worker


def _next(worker: LearnWorker) -> str:
    entries = learning.read(worker.redis, worker.prefix, "test", 1, 100, 60_000)
    assert len(entries) == 1, entries
    entry_id, fields = entries[0]
    return str(in_reactor(lambda: defer.Deferred.fromCoroutine(worker.handle(entry_id, fields)),
                          timeout=30))


def test_a_failed_submission_is_retried_then_learnt(
        database: Database, client: redis.Redis, redis_prefix: str, stored: tuple[int, int],
        rspamd_server: RspamdServer, twisted_reactor: Any) -> None:
    user_id, message_id = stored
    learning.ensure_group(client, redis_prefix)
    learning.enqueue(client, redis_prefix, [learning.LearnRequest(user_id, message_id, "spam")])
    down = _worker(database, client, redis_prefix, f"http://127.0.0.1:{free_port()}",
                   twisted_reactor)
    try:
        assert _next(down) == "retry"
        [(_id, fields)] = client.xrange(learning.stream_key(redis_prefix))
        assert learning.decode(fields).attempt == 1
        before = rspamd_server.stat()["learned"]
        down.rspamd = RspamdClient(rspamd_server.url, reactor=twisted_reactor, timeout=10,
                                   password=RSPAMD_PASSWORD,
                                   controller_url=rspamd_server.controller_url)
        assert _next(down) in ("learned", "already")
        assert learning.length(client, redis_prefix) == 0
        assert rspamd_server.stat()["learned"] == before + 1
    finally:
        down.pool.stop()


def test_past_the_attempt_limit_a_request_is_dropped(
        database: Database, client: redis.Redis, redis_prefix: str, stored: tuple[int, int],
        twisted_reactor: Any) -> None:
    user_id, message_id = stored
    learning.ensure_group(client, redis_prefix)
    learning.enqueue(client, redis_prefix,
                     [learning.LearnRequest(user_id, message_id, "ham", attempt=2)])
    worker = _worker(database, client, redis_prefix, f"http://127.0.0.1:{free_port()}",
                     twisted_reactor, max_attempts=3)
    try:
        assert _next(worker) == "dropped"
        assert learning.length(client, redis_prefix) == 0
    finally:
        worker.pool.stop()


def test_another_users_message_is_never_read(
        database: Database, client: redis.Redis, redis_prefix: str, stored: tuple[int, int],
        twisted_reactor: Any) -> None:
    _user_id, message_id = stored
    learning.ensure_group(client, redis_prefix)
    learning.enqueue(client, redis_prefix,
                     [learning.LearnRequest(999_999_999, message_id, "spam")])
    worker = _worker(database, client, redis_prefix, f"http://127.0.0.1:{free_port()}",
                     twisted_reactor)
    try:
        assert _next(worker) == "gone"
        assert learning.length(client, redis_prefix) == 0
    finally:
        worker.pool.stop()


def test_a_malformed_entry_is_removed(database: Database, client: redis.Redis,
                                      redis_prefix: str, twisted_reactor: Any) -> None:
    learning.ensure_group(client, redis_prefix)
    client.xadd(learning.stream_key(redis_prefix), {"u": "1; rm -rf /", "m": "2", "c": "spam",
                                                     "a": "0"})
    worker = _worker(database, client, redis_prefix, f"http://127.0.0.1:{free_port()}",
                     twisted_reactor)
    try:
        assert _next(worker) == "bad"
        assert learning.length(client, redis_prefix) == 0
    finally:
        worker.pool.stop()


@pytest.fixture(autouse=True)
def no_learn_requests(database: Database) -> None:
    """The worker's reconcile is database-wide: each test starts with no pending request."""
    database.run_sync(lambda s: s.execute(text("DELETE FROM learn_requests")))


@pytest.fixture
def in_inbox(database: Database) -> tuple[int, int, int, int]:
    """(user id, message id, INBOX id, uid) of a message in a fresh user's INBOX."""
    domain = f"learn-{secrets.token_hex(3)}.test"

    def work(session: Any) -> tuple[int, int, int, int]:
        domains.add_domain(session, domain)
        user = users.add_user(session, f"u@{domain}", "pw",
                              hash_fn=lambda p: hash_password(p, ln=4))
        mailboxes.ensure_mailbox(session, int(user.id), "Junk")
        data = _message()
        message_id = messages.store_message(session, data, analyze(data).to_dict())
        uid, _modseq = mailboxes.deliver_to_mailbox(
            session, user_id=user.id, mailbox_name="INBOX", message_id=message_id,
            spool_recipient_id=None)
        inbox = session.execute(text("SELECT id FROM mailboxes WHERE user_id = :u AND "
                                     "name = 'INBOX'"), {"u": user.id}).scalar_one()
        return int(user.id), int(message_id), int(inbox), int(uid)

    return database.run_sync(work)


def _rows(database: Database, user_id: int) -> list[tuple[int, str, int]]:
    return database.run_sync(lambda s: [(int(r[0]), str(r[1]), int(r[2])) for r in s.execute(
        text("SELECT message_id, klass, attempts FROM learn_requests WHERE user_id = :u"),
        {"u": user_id}).all()])


def _reconcile(worker: LearnWorker) -> int:
    return int(in_reactor(lambda: defer.Deferred.fromCoroutine(worker.reconcile()), timeout=30))


def test_a_move_into_junk_is_recorded_in_its_transaction_only_when_learning_is_on(
        database: Database, in_inbox: tuple[int, int, int, int]) -> None:
    user_id, message_id, inbox, uid = in_inbox
    result = database.run_sync(lambda s: entries.copy(s, user_id, inbox, [uid], "Junk", False))
    assert result.learn_class is None and _rows(database, user_id) == []
    result = database.run_sync(
        lambda s: entries.copy(s, user_id, inbox, [uid], "Junk", True, learn=True))
    assert result.learn_class == "spam"
    # the COPY made a second Junk entry of the same message: one pending request
    assert _rows(database, user_id) == [(message_id, "spam", 0)]


def test_a_move_whose_signal_redis_lost_is_learnt_after_the_reconcile(
        database: Database, client: redis.Redis, redis_prefix: str,
        in_inbox: tuple[int, int, int, int], rspamd_server: RspamdServer,
        twisted_reactor: Any) -> None:
    user_id, message_id, inbox, uid = in_inbox
    learning.ensure_group(client, redis_prefix)
    # the imap service's MOVE commits; its XADD never reaches Redis (Redis away)
    database.run_sync(lambda s: entries.copy(s, user_id, inbox, [uid], "Junk", True,
                                             learn=True))
    assert learning.length(client, redis_prefix) == 0
    worker = _worker(database, client, redis_prefix, rspamd_server.url, twisted_reactor,
                     grace=0.0)
    worker.rspamd = RspamdClient(rspamd_server.url, reactor=twisted_reactor, timeout=10,
                                 password=RSPAMD_PASSWORD,
                                 controller_url=rspamd_server.controller_url)
    try:
        before = rspamd_server.stat()["learned"]
        assert _reconcile(worker) == 1
        assert _next(worker) in ("learned", "already")
        assert rspamd_server.stat()["learned"] == before + 1
        assert _rows(database, user_id) == []
        assert learning.length(client, redis_prefix) == 0
        # done: nothing left to re-signal, and a duplicate signal is skipped, not learnt
        assert _reconcile(worker) == 0
        learning.enqueue(client, redis_prefix,
                         [learning.LearnRequest(user_id, message_id, "spam", tracked=True)])
        assert _next(worker) == "done"
        assert rspamd_server.stat()["learned"] == before + 1
        assert learning.length(client, redis_prefix) == 0
    finally:
        worker.pool.stop()


def test_a_failed_tracked_request_counts_its_attempt_and_waits_out_the_grace(
        database: Database, client: redis.Redis, redis_prefix: str,
        in_inbox: tuple[int, int, int, int], twisted_reactor: Any) -> None:
    user_id, message_id, inbox, uid = in_inbox
    learning.ensure_group(client, redis_prefix)
    database.run_sync(lambda s: entries.copy(s, user_id, inbox, [uid], "Junk", True,
                                             learn=True))
    worker = _worker(database, client, redis_prefix, f"http://127.0.0.1:{free_port()}",
                     twisted_reactor, grace=0.0)
    try:
        assert _reconcile(worker) == 1
        assert _next(worker) == "retry"
        assert _rows(database, user_id) == [(message_id, "spam", 1)]
        # signalled again by the retry entry just now: a long grace re-signals nothing
        worker.grace = 3600.0
        assert _reconcile(worker) == 0
        worker.grace = 0.0
        assert _reconcile(worker) == 1
        entries_now = client.xrange(learning.stream_key(redis_prefix))
        assert [learning.decode(f).attempt for _i, f in entries_now] == [1, 1]
    finally:
        worker.pool.stop()


def test_a_move_out_of_junk_to_trash_records_nothing(
        database: Database, stored: tuple[int, int]) -> None:
    user_id, _message_id = stored
    junk = database.run_sync(lambda s: s.execute(text(
        "SELECT id FROM mailboxes WHERE user_id = :u AND name = 'Junk'"),
        {"u": user_id}).scalar_one())
    result = database.run_sync(lambda s: entries.copy(s, user_id, junk, [1], "Trash", True,
                                                      learn=True))
    assert result.learn_class is None and _rows(database, user_id) == []


def test_a_move_over_imap_whose_signal_redis_lost_is_learnt_after_the_reconcile(
        database_url: str, database: Database, client: redis.Redis, redis_url: str,
        redis_prefix: str, in_inbox: tuple[int, int, int, int], rspamd_server: RspamdServer,
        twisted_reactor: Any, tmp_path: Path) -> None:
    """The imap service (own process) moves into Junk and signals; Redis then loses the
    stream (its data gone); the request in PostgreSQL is re-signalled and learnt."""
    from postroom.net.tls import make_self_signed

    user_id, message_id, _inbox, _uid = in_inbox
    address = database.run_sync(lambda s: s.execute(text(
        "SELECT address FROM users WHERE id = :u"), {"u": user_id}).scalar_one())
    make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "localhost")
    port = free_port()
    env = listener_env(database_url, redis_url, redis_prefix, tmp_path, imap_listen=port)
    env.update(POSTROOM_RSPAMD_URL=rspamd_server.url,
               POSTROOM_RSPAMD_CONTROLLER_URL=rspamd_server.controller_url)
    imap = ServiceProcess("imap", env, argv=runtime_argv("postroom_imap.main:SERVICE"))
    imap.start()
    worker = _worker(database, client, redis_prefix, rspamd_server.url, twisted_reactor,
                     grace=0.0)
    worker.rspamd = RspamdClient(rspamd_server.url, reactor=twisted_reactor, timeout=10,
                                 password=RSPAMD_PASSWORD,
                                 controller_url=rspamd_server.controller_url)
    try:
        session = imaplib.IMAP4("127.0.0.1", port, timeout=30)
        try:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            session.starttls(context)
            assert session.login(address, "pw")[0] == "OK"
            assert session.select("INBOX")[0] == "OK"
            typ, data = session.uid("MOVE", "1:*", "Junk")
            assert typ == "OK", data
        finally:
            session.logout()
        assert _rows(database, user_id) == [(message_id, "spam", 0)]
        # the signal arrived; then Redis loses its data
        wait_until(lambda: learning.length(client, redis_prefix) == 1, timeout=10)
        client.delete(learning.stream_key(redis_prefix))
        learning.ensure_group(client, redis_prefix)
        before = rspamd_server.stat()["learned"]
        assert _reconcile(worker) == 1
        assert _next(worker) in ("learned", "already")
        assert rspamd_server.stat()["learned"] == before + 1
        assert _rows(database, user_id) == []
    finally:
        worker.pool.stop()
        imap.close()
