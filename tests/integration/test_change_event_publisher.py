"""events.Publisher against a real Redis: a thread's own connection, remade when it died."""

from __future__ import annotations

import secrets
import threading
import time

import redis

from postroom.queue import events
from postroom.queue.events import ChangeEvent, Publisher


def _received(pubsub: redis.client.PubSub, wanted: int) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(got) < wanted and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            got.append(message["data"])
    return got


def test_the_publisher_keeps_one_connection_a_thread_and_replaces_a_dead_one(
        redis_url: str) -> None:
    prefix = f"prtest:{secrets.token_hex(6)}:"
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        pubsub.psubscribe(events.channel_pattern(prefix))
        _received(pubsub, 0)
        publisher = Publisher(client, prefix)
        first = ChangeEvent(events.FLAGS, 3, "imap", modseq=7, origin="imap-1-ab")
        publisher.publish(first)
        publisher.publish(first)
        conn = publisher._local.conn
        assert conn is not None and publisher._local.conn is conn  # kept, not pooled
        other: list[object] = []
        thread = threading.Thread(target=lambda: (publisher.publish(first),
                                                  other.append(publisher._local.conn)))
        thread.start()
        thread.join()
        assert other and other[0] is not conn  # each thread its own
        # the server drops the connection (a Redis restart, an idle timeout)
        host, port = conn._sock.getsockname()[:2]
        assert client.client_kill_filter(addr=f"{host}:{port}") == 1
        publisher.publish(ChangeEvent(events.EXPUNGE, 3, "imap", modseq=8))
        assert publisher._local.conn is not conn
        got = _received(pubsub, 4)
        assert got[:3] == [first.to_bytes()] * 3
        assert [ChangeEvent.parse(b) for b in got[3:]] == [
            ChangeEvent(events.EXPUNGE, 3, "imap", modseq=8)]
    finally:
        pubsub.close()
        client.close()
