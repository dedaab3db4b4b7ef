"""Verified logins shared by the workers of one process group (postroom.queue.loginshare).

An account's first login costs one scrypt check in the group, not one per worker; a worker
of another group (another key), a wrong password, an announced change or a failed login
finds nothing; Redis holds nothing that gives the password back.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from twisted.internet.defer import Deferred, maybeDeferred

from postroom.auth import logincheck
from postroom.auth.authcache import AuthCache, SharedLogins
from postroom.queue import loginshare
from postroom.runtime import GROUP_KEY, group_key
from postroom.store import apppasswords, users
from postroom_imap.backend import StoreAccounts
from postroom_imap.policy import AuthFailed

INFO = users.UserInfo(id=7, address="u@example.org", localpart="u", domain="example.org",
                      active=True, quota_bytes=None, quota_messages=None,
                      created_at=datetime(2026, 12, 7, 15, 0, tzinfo=UTC))


class WallClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def worker(client: redis.Redis, prefix: str, key: bytes,
           clock: Any = None) -> SharedLogins[users.UserInfo]:
    cache: AuthCache[users.UserInfo] = AuthCache(secret=key)
    if clock is None:
        return SharedLogins(cache, client, prefix, key, users.encode_info, users.decode_info)
    return SharedLogins(cache, client, prefix, key, users.encode_info, users.decode_info,
                        wall_clock=clock)


def share(shared: SharedLogins[users.UserInfo], account: str, password: str) -> None:
    """A login this worker has just verified, shared (its ticket taken before the check)."""
    shared.put(account, password, INFO, shared.cache.ticket(account),
               shared.find(account, password))


def test_a_login_one_worker_verified_is_found_by_another(redis_client: redis.Redis,
                                                         redis_prefix: str) -> None:
    key = secrets.token_bytes(32)
    one, two = worker(redis_client, redis_prefix, key), worker(redis_client, redis_prefix, key)
    share(one, "u@example.org", "secret")
    assert two.get("U@Example.org", "secret") == INFO
    # and it is in the other worker's own cache from then on
    assert two.cache.get("u@example.org", "secret") == INFO


def test_another_password_or_another_groups_key_finds_nothing(redis_client: redis.Redis,
                                                               redis_prefix: str) -> None:
    key = secrets.token_bytes(32)
    share(worker(redis_client, redis_prefix, key), "u@example.org", "secret")
    assert worker(redis_client, redis_prefix, key).get("u@example.org", "Secret") is None
    other = worker(redis_client, redis_prefix, secrets.token_bytes(32))
    assert other.get("u@example.org", "secret") is None


def test_a_shared_hit_is_trusted_only_for_what_is_left_of_the_ttl(redis_client: redis.Redis,
                                                                 redis_prefix: str) -> None:
    key, clock = secrets.token_bytes(32), WallClock()
    share(worker(redis_client, redis_prefix, key, clock), "u@example.org", "secret")
    late = worker(redis_client, redis_prefix, key, clock)
    clock.now += late.cache.ttl + 1  # Redis keeps it a moment longer: the payload decides
    assert late.get("u@example.org", "secret") is None
    assert late.cache.get("u@example.org", "secret") is None


def test_invalidate_and_clear_drop_the_shared_entries(redis_client: redis.Redis,
                                                      redis_prefix: str) -> None:
    key = secrets.token_bytes(32)
    one, two = worker(redis_client, redis_prefix, key), worker(redis_client, redis_prefix, key)
    share(one, "u@example.org", "secret")
    share(one, "v@example.org", "secret")
    one.invalidate("U@example.org")
    assert two.get("u@example.org", "secret") is None
    assert two.get("v@example.org", "secret") == INFO
    one.clear()
    assert worker(redis_client, redis_prefix, key).get("v@example.org", "secret") is None
    assert not list(redis_client.scan_iter(match=f"{redis_prefix}authok:*"))


def test_redis_holds_neither_the_password_nor_an_unkeyed_hash_of_it(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    key, password = secrets.token_bytes(32), "hunter2-very-secret"
    share(worker(redis_client, redis_prefix, key), "u@example.org", password)
    names = list(redis_client.scan_iter(match=f"{redis_prefix}authok:*"))
    assert len(names) == 1
    value = redis_client.get(names[0])
    stored = f"{names[0]} {value}"
    assert password not in stored
    assert hashlib.sha256(password.encode()).hexdigest() not in stored
    assert "u@example.org" not in str(names[0])


def test_a_foreign_value_under_the_key_is_a_miss(redis_client: redis.Redis,
                                                 redis_prefix: str) -> None:
    key = secrets.token_bytes(32)
    two = worker(redis_client, redis_prefix, key)
    name, mac = two.cache.mac("u@example.org", "secret") or ("", b"")
    redis_client.set(loginshare.key(redis_prefix, key, name), mac.hex() + ":junk")
    assert two.get("u@example.org", "secret") is None


def test_store_runs_one_registered_script_per_client(redis_client: redis.Redis,
                                                     redis_prefix: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """EVALSHA of a script registered once per client, not the script's text on every store."""
    def no_eval(*args: object) -> None:
        raise AssertionError("store sent the script's text")

    monkeypatch.setattr(redis_client, "eval", no_eval)
    key, mac = secrets.token_bytes(32), b"m" * 32
    for name in ("a@example.org", "b@example.org"):
        generation = loginshare.lookup(redis_client, redis_prefix, key, name, mac).generation
        assert loginshare.store(redis_client, redis_prefix, key, name, mac, "x", 10, generation)
        assert loginshare.lookup(redis_client, redis_prefix, key, name, mac).payload == "x"
    assert loginshare._store_script(redis_client) is loginshare._store_script(redis_client)


def test_an_entry_whose_account_info_was_changed_in_redis_is_a_miss(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    # someone who may write to Redis must not turn their own login into another account's
    key = secrets.token_bytes(32)
    one, two = worker(redis_client, redis_prefix, key), worker(redis_client, redis_prefix, key)
    share(one, "u@example.org", "secret")
    name = next(iter(redis_client.scan_iter(match=f"{redis_prefix}authok:*")))
    value = redis_client.get(name)
    assert isinstance(value, str) and '"id":7' in value
    redis_client.set(name, value.replace('"id":7', '"id":8'))
    assert two.get("u@example.org", "secret") is None


# --- a login that verified an old password (it read the account before the change)

def around(monkeypatch: pytest.MonkeyPatch, name: str, *, before: Any = None,
           after: Any = None) -> None:
    """Run ``before`` / ``after`` around the next call of ``loginshare.<name>``: where an
    announcement reaches a worker's listener in the middle of a shared put or look-up."""
    real = getattr(loginshare, name)
    hooks = {"before": [before] if before else [], "after": [after] if after else []}

    def hooked(*args: Any, **kwargs: Any) -> Any:
        if hooks["before"]:
            hooks["before"].pop()()
        done = real(*args, **kwargs)
        if hooks["after"]:
            hooks["after"].pop()()
        return done

    monkeypatch.setattr(loginshare, name, hooked)


def shared_entries(client: redis.Redis, prefix: str) -> list[Any]:
    return list(client.scan_iter(match=f"{prefix}authok:*"))


def test_a_put_with_a_ticket_taken_before_an_announcement_stores_nothing(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    key = secrets.token_bytes(32)
    one, two = worker(redis_client, redis_prefix, key), worker(redis_client, redis_prefix, key)
    looked, ticket = one.find("u@example.org", "old"), one.cache.ticket("u@example.org")
    one.invalidate("u@example.org")  # what the listener does on the announcement
    one.put("u@example.org", "old", INFO, ticket, looked)
    assert not shared_entries(redis_client, redis_prefix)
    assert two.get("u@example.org", "old") is None


def test_a_put_after_another_workers_listener_deleted_the_entry_stores_nothing(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    key = secrets.token_bytes(32)
    one, two = worker(redis_client, redis_prefix, key), worker(redis_client, redis_prefix, key)
    looked, ticket = one.find("u@example.org", "old"), one.cache.ticket("u@example.org")
    two.invalidate("u@example.org")  # worker two heard the announcement; one not yet
    one.put("u@example.org", "old", INFO, ticket, looked)
    assert not shared_entries(redis_client, redis_prefix)
    assert two.get("u@example.org", "old") is None
    assert two.cache.get("u@example.org", "old") is None


def test_a_login_looked_up_longer_ago_than_the_ttl_is_not_shared(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    # the forget counter outlives its last forget by twice the TTL: no older look-up counts
    key, clock = secrets.token_bytes(32), WallClock()
    one = worker(redis_client, redis_prefix, key, clock)
    looked, ticket = one.find("u@example.org", "old"), one.cache.ticket("u@example.org")
    clock.now += one.cache.ttl + 1
    one.put("u@example.org", "old", INFO, ticket, looked)
    assert not shared_entries(redis_client, redis_prefix)


def test_an_announcement_between_the_store_and_the_recheck_leaves_no_shared_entry(
        redis_client: redis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_bytes(32)
    one = worker(redis_client, redis_prefix, key)
    looked, ticket = one.find("u@example.org", "old"), one.cache.ticket("u@example.org")
    # the listener has spoilt the local tickets but not yet deleted the entry when the
    # store lands: the put's own re-check deletes it
    around(monkeypatch, "store", after=lambda: one.cache.invalidate("u@example.org"))
    one.put("u@example.org", "old", INFO, ticket, looked)
    assert not shared_entries(redis_client, redis_prefix)
    assert worker(redis_client, redis_prefix, key).get("u@example.org", "old") is None


def test_a_put_landing_just_after_the_listeners_delete_stores_nothing(
        redis_client: redis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_bytes(32)
    one = worker(redis_client, redis_prefix, key)
    # the login looked up and took its ticket before the change; it finishes right after
    # its own worker's listener deleted the entry, and Redis has lost the forget counter
    # (evicted under memory pressure): the local ticket alone refuses it
    looked, ticket = one.find("u@example.org", "old"), one.cache.ticket("u@example.org")

    def finish() -> None:
        redis_client.delete(loginshare.generation_key(redis_prefix, key, "u@example.org"))
        one.put("u@example.org", "old", INFO, ticket, looked)

    around(monkeypatch, "forget", after=finish)
    one.invalidate("u@example.org")
    assert not shared_entries(redis_client, redis_prefix)


def test_a_shared_hit_read_before_an_announcement_is_not_kept_locally(
        redis_client: redis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_bytes(32)
    one, two = worker(redis_client, redis_prefix, key), worker(redis_client, redis_prefix, key)
    share(one, "u@example.org", "old")
    # worker two reads the entry, then its listener processes the announcement
    around(monkeypatch, "lookup", after=lambda: two.invalidate("u@example.org"))
    assert two.get("u@example.org", "old") is None
    assert two.cache.get("u@example.org", "old") is None
    assert not shared_entries(redis_client, redis_prefix)


def test_a_shared_hit_read_while_the_listener_deletes_the_entry_is_not_kept_locally(
        redis_client: redis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_bytes(32)
    one, two = worker(redis_client, redis_prefix, key), worker(redis_client, redis_prefix, key)
    share(one, "u@example.org", "old")
    # a login in worker two reads the entry just before two's listener deletes it: its
    # ticket postdates the listener's first spoiling
    read: list[Any] = []
    around(monkeypatch, "forget", before=lambda: read.append(two.get("u@example.org", "old")))
    two.invalidate("u@example.org")
    assert read == [INFO]  # the login went through (it was verified before the change)...
    assert two.cache.get("u@example.org", "old") is None  # ...but is not kept


def test_account_info_survives_the_round_trip() -> None:
    assert users.decode_info(users.encode_info(INFO)) == INFO


def test_the_group_key_is_read_only_when_well_formed() -> None:
    key = secrets.token_bytes(32)
    assert group_key({GROUP_KEY: key.hex()}) == key
    assert group_key({}) is None
    assert group_key({GROUP_KEY: "not hex"}) is None
    assert group_key({GROUP_KEY: "ab" * 8}) is None


# --- the IMAP login path: two workers of one group, one scrypt check between them

class CountingDatabase:
    """The database of ``logincheck.check`` (patched below): counts the real checks;
    ``during``: run after the account was read, before the check answers."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.checks = 0
        self.during: list[Any] = []

    def authenticate(self, username: str, password: str) -> apppasswords.Login:
        self.checks += 1
        ok = username.lower() == INFO.address and password == self.password
        if self.during:
            self.during.pop(0)()
        return apppasswords.Login(INFO if ok else None)


@pytest.fixture(autouse=True)
def _counted_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    async def check(database: CountingDatabase, username: str, password: str,
                    **_: Any) -> apppasswords.Login:
        return database.authenticate(username, password)

    # the steps only: taking the ticket and remembering the login stay logincheck's own
    monkeypatch.setattr(logincheck, "check", check)


class InlineAccounts(StoreAccounts):
    """Redis calls made in the calling thread (the test has no reactor)."""

    def in_redis_thread(self, fn: Any, *args: Any) -> Deferred[Any]:
        return maybeDeferred(fn, *args)


def imap_worker(database: CountingDatabase, shared: SharedLogins[users.UserInfo],
                limiter: Any = None) -> InlineAccounts:
    return InlineAccounts(database, shared.client, None,  # type: ignore[arg-type]
                          prefix=shared.prefix, limiter=limiter,
                          listener=None, reactor=object(),  # type: ignore[arg-type]
                          auth_cache=shared.cache, shared_logins=shared)


def login(accounts: StoreAccounts, password: str) -> Any:
    outcome: list[Any] = []
    accounts.login("u@example.org", password, "127.0.0.1").addBoth(outcome.append)
    assert outcome, "the login did not finish"
    return outcome[0]


def test_an_accounts_first_login_costs_one_check_in_the_group(redis_client: redis.Redis,
                                                              redis_prefix: str) -> None:
    from postroom.auth.ratelimit import LoginRateLimiter

    key, database = secrets.token_bytes(32), CountingDatabase("secret")
    limiter = LoginRateLimiter(redis_client, redis_prefix, 10, 600.0)
    one = imap_worker(database, worker(redis_client, redis_prefix, key), limiter)
    two = imap_worker(database, worker(redis_client, redis_prefix, key), limiter)
    assert login(one, "secret").user_id == INFO.id
    assert login(two, "secret").user_id == INFO.id
    assert login(two, "secret").user_id == INFO.id
    assert database.checks == 1


def test_a_failed_login_in_one_worker_makes_the_others_check_again(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    key, database = secrets.token_bytes(32), CountingDatabase("secret")
    one = imap_worker(database, worker(redis_client, redis_prefix, key))
    two = imap_worker(database, worker(redis_client, redis_prefix, key))
    three = imap_worker(database, worker(redis_client, redis_prefix, key))
    assert login(one, "secret").user_id == INFO.id
    failure = login(two, "wrong")
    assert failure.check(AuthFailed)
    assert login(three, "secret").user_id == INFO.id
    assert database.checks == 3


def test_a_password_changed_while_an_imap_login_is_checked_is_not_left_in_the_group(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    key, database = secrets.token_bytes(32), CountingDatabase("old")
    shared = [worker(redis_client, redis_prefix, key) for _ in range(2)]
    one, two = (imap_worker(database, s) for s in shared)

    def changed() -> None:
        database.password = "new"
        for each in shared:  # every worker's listener hears the announcement
            each.invalidate("u@example.org")

    database.during.append(changed)
    # the login read the account before the change: it verifies the old password...
    assert login(one, "old").user_id == INFO.id
    # ...but neither worker remembers it, nor does Redis
    assert not shared_entries(redis_client, redis_prefix)
    assert login(one, "old").check(AuthFailed)
    assert login(two, "old").check(AuthFailed)
    assert login(two, "new").user_id == INFO.id


def test_a_groups_workers_get_one_key_of_their_own() -> None:
    from twisted.internet.task import Clock

    from postroom.config import load_settings
    from postroom.ops.procgroup import ProcessGroup

    class Reactor(Clock):
        def addSystemEventTrigger(self, *args: Any, **kwargs: Any) -> None:
            return None

    settings = load_settings({})
    groups = [ProcessGroup("imap", "imap", settings, 2, Reactor(), {})  # type: ignore[arg-type]
              for _ in range(2)]
    keys = [{group_key(env) for env in g.supervisor.envs.values()} for g in groups]
    assert all(len(k) == 1 and None not in k for k in keys)
    assert keys[0] != keys[1]
