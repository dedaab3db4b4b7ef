"""Mailbox change events: one definition that every producer's payload parses with."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from postroom.queue import events
from postroom.queue.events import ChangeEvent
from postroom_imap.backend import ChangeListener, StoreAccounts
from postroom_mda.delivery import DELIVERED, Options, Outcome
from postroom_mda.service import Deliverer
from postroom_pop3.maildrop import StoreAuthority

PREFIX = "t:"


class Recorder:
    """Stands in for the Redis client: records what is published where."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Any]] = []

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
