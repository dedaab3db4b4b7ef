"""The msa's From: check at the end of DATA: when the store is asked, and that refusals stay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed

from postroom.mailauth.keycache import DkimKeyCache
from postroom.smtp.grammar import MailParams
from postroom.smtp.session import Envelope, Session
from postroom_msa import replies as M
from postroom_msa.submission import Submitter, _check_content


@dataclass(frozen=True)
class User:
    id: int
    address: str


class Store:
    """A Database stand-in: records each question, answers with ``answer``."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[Any] = []

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.asked.append((fn, args))
        return succeed(self.answer)


class QueueDown:
    """The queue says it is down: the submission stops (451) right after the From: check."""

    def available(self) -> Deferred[bool]:
        return succeed(False)


def submit(store: Store, cache: DkimKeyCache[Any], message: bytes) -> Any:
    submitter = Submitter(store, QueueDown(), limits=None, hostname="msa.test",  # type: ignore[arg-type]
                          sign_pool=None, redis_pool=None, reactor=None,  # type: ignore[arg-type]
                          key_cache=cache)
    session = Session(peer_ip="192.0.2.1", peer_port=1)
    session.identity = User(7, "alice@example.org")
    envelope = Envelope(mail_from=None, mail_params=MailParams(), recipients=())
    replies: list[Any] = []
    submitter.submit(session, envelope, message).addCallback(replies.append)
    return replies[0]


def cached_keys() -> DkimKeyCache[Any]:
    cache: DkimKeyCache[Any] = DkimKeyCache(ttl=30)
    cache.put("example.org", (), cache.generation)
    return cache


def test_own_address_with_the_keys_cached_asks_the_store_nothing():
    store = Store(([], []))
    reply = submit(store, cached_keys(), b"From: Alice <Alice@Example.ORG>\r\n\r\nhi\r\n")
    assert store.asked == []
    assert reply == M.TRY_LATER  # got past the From: check to the queue


def test_another_address_is_still_asked_of_the_store_and_refused():
    store = Store((["bob@example.org"], []))
    reply = submit(store, cached_keys(),
                   b"From: Alice <alice@example.org>\r\nSender: bob@example.org\r\n\r\nhi\r\n")
    assert [fn for fn, _args in store.asked] == [_check_content]
    assert reply == M.FROM_NOT_OWNED


def test_own_address_without_cached_keys_reads_them_from_the_store():
    store = Store(([], []))
    submit(store, DkimKeyCache(ttl=30), b"From: alice@example.org\r\n\r\nhi\r\n")
    assert [args[-1] for _fn, args in store.asked] == ["example.org"]
