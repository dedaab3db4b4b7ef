"""The login's hash check outside any transaction (decision 0027, postroom.auth.logincheck):
read, check, write; what changed between the read and the write is checked again, never
overwritten; app passwords' last use, rehashing and the unknown address's cost stay."""

from __future__ import annotations

import functools
import threading
from typing import Any

import pytest
from sqlalchemy import text
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from postroom.auth import logincheck
from postroom.auth.authcache import AuthCache, CacheInvalidation
from postroom.auth.passwords import hash_password, needs_rehash, verify_password
from postroom.queue import authevents
from postroom.store import apppasswords, domains, users

cheap = functools.partial(hash_password, ln=4)
ADDRESS = "carol@example.test"
PASSWORD = "the main password"


class InlineDatabase:
    """``Database.run_read`` / ``run`` done in the calling thread (no reactor in the test)."""

    reactor = None

    def __init__(self, database: Any) -> None:
        self.database = database
        self.transactions = 0

    def run_read(self, fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return maybeDeferred(self.database.run_read_sync, fn, *args, **kwargs)

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.transactions += 1
        return maybeDeferred(self.database.run_sync, fn, *args, **kwargs)


@pytest.fixture
def db(database, clean_db):
    database.run_sync(domains.add_domain, "example.test")
    database.run_sync(users.add_user, ADDRESS, PASSWORD, hash_fn=cheap)
    return database


@pytest.fixture
def checks(monkeypatch):
    """The hash pool run inline; each check's arguments, and a hook run before each."""
    seen: list[Any] = []
    before: list[Any] = []

    def inline(reactor: Any, fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        seen.append(args)
        if before:
            before.pop(0)()
        return maybeDeferred(fn, *args, **kwargs)

    monkeypatch.setattr(logincheck, "_in_hash_pool", inline)
    return seen, before


def login(db, password, protocol="imap", peer="192.0.2.7", address=ADDRESS,
          hash_fn=cheap, cache=None) -> apppasswords.Login:
    done: list[Any] = []
    Deferred.fromCoroutine(logincheck.authenticate(
        InlineDatabase(db), address, password, protocol=protocol, peer=peer,
        hash_fn=hash_fn, cache=cache)).addBoth(done.append)
    assert done, "the login did not finish"
    if isinstance(done[0], Failure):
        done[0].raiseException()
    return done[0]


def stored_hash(db) -> str:
    return db.run_sync(lambda s: s.execute(text(
        "SELECT password_hash FROM users WHERE address = :a"), {"a": ADDRESS}).scalar_one())


def test_the_main_password_logs_in_and_a_wrong_one_does_not(db, checks):
    assert login(db, PASSWORD).user.address == ADDRESS
    assert login(db, "wrong").user is None
    assert login(db, PASSWORD, address="CAROL@Example.TEST").credential == "password"


def test_an_unknown_address_still_costs_a_hash_check(db, checks, monkeypatch):
    dummies: list[str] = []
    monkeypatch.setattr(users, "verify_dummy", dummies.append)
    assert login(db, PASSWORD, address="nobody@example.test").user is None
    assert dummies == [PASSWORD]


def test_a_password_changed_between_read_and_write_is_kept_and_checked_again(db, checks):
    _, before = checks
    # the stored hash is ln=4: a right login replaces it, in its write step; the password
    # changes after the read, before the hash check
    before.append(lambda: db.run_sync(users.set_password, ADDRESS, "a brand new password",
                                      hash_fn=cheap))
    found = login(db, PASSWORD, hash_fn=hash_password)
    assert found.user is None
    assert verify_password("a brand new password", stored_hash(db))


def test_a_password_changed_to_the_same_value_is_still_rehashed_once(db, checks):
    seen, before = checks
    before.append(lambda: db.run_sync(users.set_password, ADDRESS, PASSWORD, hash_fn=cheap))
    found = login(db, PASSWORD, hash_fn=hash_password)
    assert found.user is not None
    assert len(seen) == 2  # checked against the new hash too
    assert not needs_rehash(stored_hash(db)) and verify_password(PASSWORD, stored_hash(db))


def test_an_old_hash_is_replaced_and_missing_scram_secrets_are_made(db, checks):
    db.run_sync(lambda s: s.execute(text("UPDATE users SET scram_secrets = NULL")))
    assert login(db, PASSWORD, hash_fn=hash_password).user is not None
    assert not needs_rehash(stored_hash(db))
    assert db.run_sync(users.scram_secrets_for, ADDRESS) is not None


def test_a_current_hash_is_one_read_and_no_transaction(db, checks):
    db.run_sync(users.set_password, ADDRESS, PASSWORD)
    database = InlineDatabase(db)
    done: list[Any] = []
    Deferred.fromCoroutine(logincheck.authenticate(
        database, ADDRESS, PASSWORD, protocol="pop3")).addBoth(done.append)
    assert done[0].user is not None and database.transactions == 0


def test_an_app_password_logs_in_and_its_last_use_is_recorded(db, checks):
    secret = db.run_sync(apppasswords.create, ADDRESS, "phone", ["imap"], hash_fn=cheap)
    found = login(db, secret, peer="192.0.2.9")
    assert found.app_password == "phone"
    [info] = db.run_sync(apppasswords.list_app_passwords, ADDRESS)
    assert info.last_used_at is not None and info.last_used_ip == "192.0.2.9"
    assert login(db, secret, protocol="pop3").user is None


def test_an_app_password_revoked_between_read_and_write_is_refused(db, checks):
    _, before = checks
    secret = db.run_sync(apppasswords.create, ADDRESS, "phone", hash_fn=cheap)
    before.append(lambda: db.run_sync(apppasswords.revoke, ADDRESS, "phone"))
    assert login(db, secret).user is None


def test_two_factor_refuses_the_main_password_but_the_web_console_gets_the_account(db, checks):
    db.run_sync(lambda s: s.execute(text("UPDATE users SET totp_enabled = true")))
    assert login(db, PASSWORD).refusal == apppasswords.TWO_FACTOR_REFUSAL
    web = login(db, PASSWORD, protocol=None)
    assert web.user is not None and web.user.totp_enabled


def test_an_inactive_account_is_refused(db, checks):
    db.run_sync(users.set_user_active, ADDRESS, False)
    assert login(db, PASSWORD).user is None
    assert login(db, PASSWORD, protocol=None).user is None


def test_the_hash_pool_has_no_more_threads_than_cpus():
    assert 1 <= logincheck.hash_threads() <= logincheck.MAX_HASH_THREADS


class Heard:
    """Told after the cache by the listener: the announcement was processed."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def invalidate(self, subject: str, /) -> None:
        self.event.set()

    def clear(self) -> None:
        return None


def test_a_password_changed_and_announced_while_a_login_is_checked_is_not_cached(
        db, checks, redis_client, redis_prefix):
    _, before = checks
    db.run_sync(users.set_password, ADDRESS, PASSWORD)  # a current hash: the login only reads
    cache: AuthCache[users.UserInfo] = AuthCache()
    heard = Heard()
    listener = CacheInvalidation(redis_client, redis_prefix, [cache, heard])
    listener.start()
    try:
        assert listener.subscribed.wait(10)

        def change() -> None:
            # after the login read the account, before its hash check: what the CLI and
            # the web console do (commit, then announce), and the listener hearing it
            db.run_sync(users.set_password, ADDRESS, "a brand new password", hash_fn=cheap)
            authevents.publish(redis_client, redis_prefix, ADDRESS)
            assert heard.event.wait(10)

        before.append(change)
        # linearised at its read (decision 0027), the login verifies the old password...
        assert login(db, PASSWORD, cache=cache).user is not None
    finally:
        listener.stop()
    # ...but the cache does not keep it: the next login with it checks and is refused
    assert cache.get(ADDRESS, PASSWORD) is None
    assert login(db, PASSWORD, cache=cache).user is None
    assert login(db, "a brand new password", cache=cache).user is not None
    assert cache.get(ADDRESS, "a brand new password") is not None
