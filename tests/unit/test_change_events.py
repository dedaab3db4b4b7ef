"""Mailbox change events: one definition that every producer's payload parses with."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from postroom.queue import events
from postroom.queue.events import ChangeEvent
from postroom_imap import mailstore
from postroom_imap.backend import ChangeListener, StoreAccounts
from postroom_mda.delivery import DELIVERED, Options, Outcome
from postroom_mda.service import Deliverer
from postroom_pop3.maildrop import StoreAuthority

PREFIX = "t:"


class Recorder:
    """Stands in for the Redis client: records what is published where (through
    ``publish`` or, as events.Publisher does, on a connection of the client's pool's kind)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Any]] = []
        recorder = self

        class Connection:
            def __init__(self, **kwargs: Any) -> None:
                self.sent: list[tuple[Any, ...]] = []

            def pack_command(self, *args: Any) -> tuple[Any, ...]:
                return args

            def send_packed_command(self, command: tuple[Any, ...], check_health: bool) -> None:
                assert command[0] == "PUBLISH"
                recorder.publish(command[1], command[2])

            def read_response(self) -> int:
                return 1

        class Pool:
            connection_class = Connection
            connection_kwargs: dict[str, Any] = {}

        self.connection_pool = Pool()

    def publish(self, name: str, body: Any) -> int:
        self.published.append((name, body))
        return 1


class Queue:
    def __init__(self, client: Recorder) -> None:
        self.redis = client
        self.prefix = PREFIX


def only(recorder: Recorder) -> ChangeEvent:
    [(name, body)] = recorder.published
    event = ChangeEvent.parse(body)
    assert event is not None, body
    assert name == events.channel(PREFIX, event.mailbox_id)
    assert events.mailbox_of_channel(name) == event.mailbox_id
    return event


def test_the_mdas_event_for_a_delivered_copy_parses() -> None:
    recorder = Recorder()
    deliverer = Deliverer(None, Queue(recorder), Options(), pool=None,  # type: ignore[arg-type]
                          reactor=object())
    deliverer._publish(Outcome(1, DELIVERED, queue_id="Q1", mailbox_id=7, uid=3, modseq=42))
    assert only(recorder) == ChangeEvent(events.EXISTS, 7, "mda", modseq=42, uid=3)


def test_the_imap_sessions_events_parse() -> None:
    recorder = Recorder()
    accounts = StoreAccounts(None, recorder, None, prefix=PREFIX,  # type: ignore[arg-type]
                             limiter=None, listener=None, reactor=object())  # type: ignore[arg-type]
    accounts.publish(9, events.FLAGS, 5)
    assert only(recorder) == ChangeEvent(events.FLAGS, 9, "imap", modseq=5)
    recorder.published.clear()
    accounts.publish(9, events.EXPUNGE)
    assert only(recorder) == ChangeEvent(events.EXPUNGE, 9, "imap")


def test_the_pop3_quit_event_parses() -> None:
    recorder = Recorder()
    authority = StoreAuthority(None, recorder, None, prefix=PREFIX,  # type: ignore[arg-type]
                               limiter=None, reactor=object())
    authority._publish(4, [1, 2], 11)
    assert only(recorder) == ChangeEvent(events.EXPUNGE, 4, "pop3", modseq=11, uids=(1, 2))


@pytest.mark.parametrize("event", [
    ChangeEvent(events.EXISTS, 1, "mda"),
    ChangeEvent(events.EXPUNGE, 2**63 - 1, "pop3", modseq=2**40, uids=(1, 2, 3)),
    ChangeEvent(events.FLAGS, 3, "imap", modseq=0, uid=8),
])
def test_an_event_round_trips_through_its_bytes(event: ChangeEvent) -> None:
    assert ChangeEvent.parse(event.to_bytes()) == event
    assert ChangeEvent.parse(event.to_bytes().decode()) == event


def test_the_mdas_older_kind_field_still_parses() -> None:
    # what an mda replica not yet upgraded publishes
    old = b'{"kind":"exists","mailbox_id":7,"uid":3,"modseq":42}'
    assert ChangeEvent.parse(old) == ChangeEvent(events.EXISTS, 7, "", modseq=42, uid=3)


@pytest.mark.parametrize("data", [
    None, b"", b"not json", b"[1]", b'"x"', b"{}", b'{"event":"exists"}',
    b'{"event":"exists","mailbox_id":"7"}', b'{"event":"exists","mailbox_id":true}',
    b'{"event":"exists","mailbox_id":-1}', b'{"event":"exists","mailbox_id":1,"modseq":1.5}',
    b'{"event":"exists","mailbox_id":1,"uids":[1,"2"]}', b"\xff\xfe",
    b'{"event":"exists","mailbox_id":1,"x":"' + b"a" * (events.MAX_EVENT_BYTES + 1) + b'"}',
    b"[" * 100_000, b"[" * 60_000,
])
def test_garbage_on_the_channel_is_not_an_event(data: Any) -> None:
    assert ChangeEvent.parse(data) is None
    assert events.event_modseq(data) is None


@pytest.mark.parametrize(("name", "mailbox_id"), [
    ("t:mailbox:12", 12), (b"t:mailbox:12", 12), ("t:mailbox:", None), ("t:mailbox:1x", None),
    ("t:other:12", None), ("t:mailbox:" + "9" * 20, None),
])
def test_the_mailbox_is_read_from_the_channel_name(name: Any, mailbox_id: int | None) -> None:
    assert events.mailbox_of_channel(name) == mailbox_id


class FakePubSub:
    def __init__(self, messages: list[dict[str, Any]], stop: threading.Event) -> None:
        self.messages = messages
        self.stop = stop
        self.patterns: list[str] = []

    def psubscribe(self, pattern: str) -> None:
        self.patterns.append(pattern)

    def get_message(self, timeout: float) -> dict[str, Any] | None:
        if not self.messages:
            self.stop.set()
            return None
        return self.messages.pop(0)

    def close(self) -> None:
        pass


def test_the_listener_wakes_the_channels_mailbox_with_the_events_modseq() -> None:
    stop = threading.Event()
    messages = [
        {"channel": b"t:mailbox:5", "data": ChangeEvent(events.EXISTS, 5, "mda",
                                                       modseq=9).to_bytes()},
        {"channel": b"t:mailbox:6", "data": b"garbage"},
        {"channel": b"t:other", "data": b"{}"},
    ]
    pubsub = FakePubSub(messages, stop)

    class Client:
        def pubsub(self, ignore_subscribe_messages: bool) -> FakePubSub:
            return pubsub

    seen: list[tuple[int, int | None]] = []
    events.listen(Client(), PREFIX, stop, lambda m, s: seen.append((m, s)))  # type: ignore[arg-type]
    assert pubsub.patterns == ["t:mailbox:*"]
    assert seen == [(5, 9), (6, None)]


def test_the_imap_listener_hands_events_to_the_reactor() -> None:
    calls: list[tuple[Any, ...]] = []

    class Reactor:
        def callFromThread(self, fn: Any, *args: Any) -> None:
            calls.append(args)
            fn(*args)

    listener = ChangeListener(None, PREFIX, Reactor())  # type: ignore[arg-type]
    woken: list[int] = []
    listener.watch(5, lambda modseq=None: woken.append(modseq))
    listener._from_thread(5, 9)
    listener._from_thread(6, None)
    assert calls == [(5, 9), (6, None)] and woken == [9]


def test_an_event_with_an_origin_begins_with_its_prefix_and_parses_as_before() -> None:
    event = ChangeEvent(events.FLAGS, 9, "imap", modseq=5, origin="imap-1-ab")
    body = event.to_bytes()
    assert body.startswith(events.origin_prefix("imap-1-ab"))
    assert not body.startswith(events.origin_prefix("imap-1-a"))
    assert ChangeEvent.parse(body) == ChangeEvent(events.FLAGS, 9, "imap", modseq=5)
    # without an origin the body is what it always was
    assert ChangeEvent(events.FLAGS, 9, "imap", modseq=5).to_bytes() == (
        b'{"event":"flags","mailbox_id":9,"source":"imap","modseq":5}')


def test_the_listener_drops_its_own_processs_events_unread() -> None:
    stop = threading.Event()
    own = events.origin_prefix("imap-1-ab")
    messages = [
        {"channel": b"t:mailbox:5", "data": ChangeEvent(events.FLAGS, 5, "imap", modseq=9,
                                                       origin="imap-1-ab").to_bytes()},
        {"channel": b"t:mailbox:5", "data": ChangeEvent(events.FLAGS, 5, "imap", modseq=10,
                                                       origin="imap-2-cd").to_bytes()},
        {"channel": b"t:mailbox:5", "data": ChangeEvent(events.EXISTS, 5, "mda",
                                                       modseq=11).to_bytes()},
    ]
    pubsub = FakePubSub(messages, stop)

    class Client:
        def pubsub(self, ignore_subscribe_messages: bool) -> FakePubSub:
            return pubsub

    seen: list[tuple[int, int | None]] = []
    events.listen(Client(), PREFIX, stop, lambda m, s: seen.append((m, s)),  # type: ignore[arg-type]
                  skip=own)
    assert seen == [(5, 10), (5, 11)]


def test_a_watch_that_begins_after_a_newer_event_is_woken_at_once() -> None:
    listener = ChangeListener(None, PREFIX, object())  # type: ignore[arg-type]
    listener.notify(5, 12)  # before anyone watches: remembered
    woken: list[Any] = []
    listener.watch(5, lambda modseq=None: woken.append(modseq), known=11)
    assert woken == [12]  # the view was read at 11: it missed 12
    listener.watch(5, lambda modseq=None: woken.append(("b", modseq)), known=12)
    listener.watch(6, lambda modseq=None: woken.append(("c", modseq)), known=0)
    assert woken == [12]
    listener.notify(5, 11)  # an older event does not lower what is remembered
    assert listener.latest[5] == 12


def test_the_listeners_memory_of_modseqs_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from postroom_imap import backend

    monkeypatch.setattr(backend, "LATEST_KEPT", 3)
    listener = ChangeListener(None, PREFIX, object())  # type: ignore[arg-type]
    for mailbox_id in range(10):
        listener.notify(mailbox_id, 1)
    assert list(listener.latest) == [7, 8, 9]


def test_a_committed_change_reaches_this_processs_watchers_once_after_the_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The publishing thread hands result and event to the reactor in one call: the
    command's continuation first, then the other watchers; the PUBLISH carries the origin
    (its echo is dropped) and comes after both were queued."""
    from postroom_imap.backend import UserStoreImpl
    from postroom_imap.policy import StoreResult

    order: list[Any] = []

    class Reactor:
        def callFromThread(self, fn: Any, *args: Any) -> None:
            order.append("to reactor")
            fn(*args)

    pending: list[Any] = []

    class Database:
        def run_core_then(self, fn: Any, then: Any, *args: Any) -> Any:
            finished: Deferred[Any] = Deferred()

            def work() -> None:  # the pool thread, once the caller has its Deferred
                result = fn(None, *args)
                order.append("commit")
                finished.callback((result, then(result)))

            pending.append(work)
            return finished

    class Redis(Recorder):
        def publish(self, name: str, body: Any) -> int:
            order.append("publish")
            return super().publish(name, body)

    recorder = Redis()
    listener = ChangeListener(None, PREFIX, Reactor())  # type: ignore[arg-type]
    accounts = StoreAccounts(Database(), recorder, None, prefix=PREFIX,  # type: ignore[arg-type]
                             limiter=None, listener=listener, reactor=Reactor())  # type: ignore[arg-type]
    store = UserStoreImpl(accounts, 1, "u@example.test")
    listener.watch(7, lambda modseq=None: order.append(("other session", modseq)))

    def fake_store(s: Any, mailbox_id: int, *rest: Any) -> StoreResult:
        return StoreResult(rows=[], changed=[3], modified=[], modseq_before=4, modseq_after=5)

    monkeypatch.setattr(mailstore, "store", fake_store)
    d = store.store(7, [3], "+", ["\\Flagged"], None)
    d.addCallback(lambda r: order.append(("command", r.modseq_after)))
    pending.pop()()
    assert order == ["commit", "to reactor", ("command", 5), ("other session", 5), "publish"]
    [(name, body)] = recorder.published
    assert name == events.channel(PREFIX, 7)
    assert body.startswith(events.origin_prefix(listener.origin))
    assert ChangeEvent.parse(body) == ChangeEvent(events.FLAGS, 7, "imap", modseq=5)
