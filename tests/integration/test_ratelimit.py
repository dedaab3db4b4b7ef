"""The shared failed-login limiter against a real Redis: delays and locks per (client, account),
the cap per client, trusted networks, unlock, and Redis away."""

from __future__ import annotations

import ipaddress

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed

from postroom.auth.ratelimit import (
    LoginLocked,
    LoginRateLimiter,
    RateLimitUnavailable,
    Verdict,
    admit,
    delay_for,
)
from postroom.config import load_settings
from tests.support.ports import free_port

BOB, CAROL = "bob@example.org", "carol@example.org"
OFFICE = "192.0.2.1"


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def limiter(client: redis.Redis, prefix: str, clock: FakeTime | None = None, *,
            limit: int = 3, address_limit: int = 10, window: float = 60.0,
            delay_max: float = 15.0, trusted: str = "") -> LoginRateLimiter:
    networks = [ipaddress.ip_network(n) for n in trusted.split(",") if n]
    return LoginRateLimiter(client, prefix, limit, window, address_limit=address_limit,
                            delay_max=delay_max, trusted=networks, clock=clock or FakeTime())


def fail(lim: LoginRateLimiter, ip: str, account: str | None, times: int = 1) -> None:
    for _ in range(times):
        lim.record_failure(ip, account)


def test_delays_double_per_failure_up_to_the_cap() -> None:
    assert [delay_for(n, 15.0) for n in range(7)] == [0, 2, 4, 8, 15, 15, 15]
    assert delay_for(100, 15.0) == 15.0
    assert delay_for(3, 0.0) == 0.0


def test_fresh_pair_is_allowed_without_delay(redis_client: redis.Redis,
                                             redis_prefix: str) -> None:
    assert limiter(redis_client, redis_prefix).check(OFFICE, BOB) == Verdict(True, 0.0)


def test_each_failure_of_the_pair_lengthens_its_delay(redis_client: redis.Redis,
                                                      redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix, limit=10)
    delays = []
    for _ in range(6):
        delays.append(lim.check(OFFICE, BOB).delay)
        fail(lim, OFFICE, BOB)
    assert delays == [0, 2, 4, 8, 15, 15]


def test_office_case_one_bad_client_locks_only_its_own_account(redis_client: redis.Redis,
                                                                redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    fail(lim, OFFICE, BOB, 3)  # the phone with the old password
    assert lim.check(OFFICE, BOB) == Verdict(False, reason="pair")
    # the colleague behind the same NAT: not delayed, not locked
    assert lim.check(OFFICE, CAROL) == Verdict(True, 0.0)
    # bob himself from home: not locked either
    assert lim.check("198.51.100.9", BOB) == Verdict(True, 0.0)


def test_address_cap_across_accounts_stops_spraying(redis_client: redis.Redis,
                                                    redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix, address_limit=10)
    for i in range(10):
        fail(lim, "203.0.113.5", f"user{i}@example.org")
    assert lim.check("203.0.113.5", "someone@example.org") == Verdict(False, reason="address")
    assert lim.check("203.0.113.6", "someone@example.org")


def test_address_cap_counts_names_that_are_no_account(redis_client: redis.Redis,
                                                      redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix, address_limit=4)
    fail(lim, "203.0.113.5", "no address at all", 4)
    assert not lim.check("203.0.113.5", BOB)


def test_account_names_are_compared_as_login_resolves_them(redis_client: redis.Redis,
                                                           redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    for name in ("Bob@Example.org", "<bob@example.org>", "BOB@example.org."):
        fail(lim, OFFICE, name)
    assert not lim.check(OFFICE, BOB)


def test_ipv6_clients_are_counted_per_64(redis_client: redis.Redis, redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
        fail(lim, host, BOB)
    assert not lim.check("2001:db8:1:2::99", BOB)
    assert lim.check("2001:db8:1:3::1", BOB)


def test_lock_ends_one_window_after_the_last_failure(redis_client: redis.Redis,
                                                     redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix, window=1.0)
    fail(lim, OFFICE, BOB, 3)
    assert not lim.check(OFFICE, BOB)
    redis_client.pexpire(lim.pair_key(OFFICE, BOB), 1)  # as if the window had passed
    import time
    time.sleep(0.05)
    assert lim.check(OFFICE, BOB) == Verdict(True, 0.0)


def test_success_forgets_the_pair_but_not_the_client_window(redis_client: redis.Redis,
                                                            redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix, address_limit=3)
    fail(lim, OFFICE, BOB, 2)
    assert lim.check(OFFICE, BOB).delay == 4
    assert lim.needs_reset(OFFICE, BOB)
    lim.reset(OFFICE, BOB)
    assert lim.check(OFFICE, BOB) == Verdict(True, 0.0)
    assert not lim.needs_reset(OFFICE, BOB)  # the check just found it clean
    fail(lim, OFFICE, CAROL)
    assert lim.check(OFFICE, "dave@example.org") == Verdict(False, reason="address")


def test_trusted_networks_are_never_locked_but_still_delayed(redis_client: redis.Redis,
                                                             redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix, trusted="192.0.2.0/24,2001:db8::/32",
                  address_limit=3)
    fail(lim, OFFICE, BOB, 5)
    assert lim.check(OFFICE, BOB) == Verdict(True, 15.0)
    assert lim.check(OFFICE, CAROL) == Verdict(True, 0.0)
    assert lim.check("::ffff:192.0.2.1", BOB).allowed  # IPv4-mapped is the same client
    fail(lim, "198.51.100.1", BOB, 3)
    assert not lim.check("198.51.100.1", BOB)


def test_unlock_one_account_everywhere(redis_client: redis.Redis, redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    fail(lim, OFFICE, BOB, 3)
    fail(lim, "198.51.100.9", BOB, 3)
    fail(lim, OFFICE, CAROL, 3)
    assert lim.unlock("BOB@example.org") == 2
    assert lim.check(OFFICE, BOB) and lim.check("198.51.100.9", BOB)
    assert not lim.check(OFFICE, CAROL)


def test_unlock_with_an_address_clears_the_pair_and_the_client_window(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix, address_limit=6)
    fail(lim, OFFICE, BOB, 3)
    fail(lim, OFFICE, CAROL, 3)
    fail(lim, "198.51.100.9", BOB, 3)
    assert not lim.check(OFFICE, "dave@example.org")
    assert lim.unlock(BOB, OFFICE) == 2
    assert lim.check(OFFICE, BOB) and lim.check(OFFICE, "dave@example.org")
    assert not lim.check(OFFICE, CAROL)  # carol's pair is still locked
    assert not lim.check("198.51.100.9", BOB)


def test_unlock_an_address_alone_clears_every_account_from_it(redis_client: redis.Redis,
                                                               redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    fail(lim, OFFICE, BOB, 3)
    fail(lim, OFFICE, CAROL, 3)
    fail(lim, "198.51.100.9", BOB, 3)
    assert lim.unlock(None, OFFICE) == 3
    assert lim.check(OFFICE, BOB) and lim.check(OFFICE, CAROL)
    assert not lim.check("198.51.100.9", BOB)


def test_unlock_refuses_a_name_that_is_no_account(redis_client: redis.Redis,
                                                  redis_prefix: str) -> None:
    with pytest.raises(ValueError):
        limiter(redis_client, redis_prefix).unlock("not an address")


def test_keys_are_bounded_and_expire(redis_client: redis.Redis, redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix, address_limit=5)
    fail(lim, OFFICE, BOB, 50)
    key = lim.ip_key(OFFICE)
    assert redis_client.zcard(key) == 6
    assert 0 < redis_client.pttl(key) <= 60_000
    pair = lim.pair_key(OFFICE, BOB)
    assert pair is not None and pair.startswith(redis_prefix)
    assert int(redis_client.get(pair)) == 50
    assert 0 < redis_client.pttl(pair) <= 60_000


def test_works_with_a_bytes_client_as_the_runtime_makes(redis_url: str,
                                                        redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        lim = limiter(client, redis_prefix)
        fail(lim, OFFICE, BOB, 3)
        assert not lim.check(OFFICE, BOB)
        assert lim.unlock(BOB) == 1
    finally:
        client.close()


def test_from_settings_uses_every_setting(redis_client: redis.Redis) -> None:
    settings = load_settings({
        "POSTROOM_AUTH_FAIL_LIMIT": "7", "POSTROOM_AUTH_FAIL_WINDOW": "2m",
        "POSTROOM_AUTH_ADDRESS_FAIL_LIMIT": "70", "POSTROOM_AUTH_DELAY_MAX": "0",
        "POSTROOM_AUTH_TRUSTED_NETWORKS": "10.0.0.0/8", "POSTROOM_REDIS_PREFIX": "x:"})
    lim = LoginRateLimiter.from_settings(redis_client, settings)
    assert (lim.limit, lim.window, lim.address_limit, lim.delay_max, lim.prefix) == (
        7, 120.0, 70, 0.0, "x:")
    assert lim.is_trusted("10.1.2.3") and not lim.is_trusted("11.0.0.1")


def test_admit_waits_the_delay_on_the_reactor_clock(redis_client: redis.Redis,
                                                    redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    fail(lim, OFFICE, BOB, 2)
    clock = task.Clock()

    def hop(fn, *args) -> Deferred:
        return succeed(fn(*args))

    done = Deferred.fromCoroutine(admit(lim, clock, hop, OFFICE, BOB))
    assert not done.called  # no thread held: a timer on the reactor
    clock.advance(3.9)
    assert not done.called
    clock.advance(0.2)
    assert done.called and done.result is None
    quick = Deferred.fromCoroutine(admit(lim, clock, hop, OFFICE, BOB, wait=False))
    assert quick.called
    fail(lim, OFFICE, BOB)
    locked = Deferred.fromCoroutine(admit(lim, clock, hop, OFFICE, BOB))
    assert isinstance(locked.result.value, LoginLocked)
    locked.addErrback(lambda _: None)


def unreachable_redis() -> redis.Redis:
    # nothing listens on a just-freed loopback port: a real "Redis is down"
    return redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1,
                       socket_timeout=1, retry=Retry(NoBackoff(), 0))


def test_check_fails_closed_when_redis_is_down(redis_prefix: str) -> None:
    lim = limiter(unreachable_redis(), redis_prefix)
    with pytest.raises(RateLimitUnavailable):
        lim.check(OFFICE, BOB)


def test_record_and_reset_do_not_raise_when_redis_is_down(redis_prefix: str) -> None:
    lim = limiter(unreachable_redis(), redis_prefix)
    lim.record_failure(OFFICE, BOB)
    lim.reset(OFFICE, BOB)


def test_held_back_logins_are_counted_by_outcome(redis_client: redis.Redis,
                                                 redis_prefix: str) -> None:
    from postroom.metrics import Metrics, login_limits_total

    metrics = Metrics("test", process_metrics=False)
    lim = LoginRateLimiter(redis_client, redis_prefix, 2, 60.0, delay_max=1.0, metrics=metrics)
    clock = task.Clock()

    def hop(fn, *args) -> Deferred:
        return succeed(fn(*args))

    fail(lim, OFFICE, BOB)
    Deferred.fromCoroutine(admit(lim, clock, hop, OFFICE, BOB))
    clock.advance(1)
    fail(lim, OFFICE, BOB)
    Deferred.fromCoroutine(admit(lim, clock, hop, OFFICE, BOB)).addErrback(lambda _: None)
    counter = login_limits_total(metrics)
    assert counter.labels(outcome="delayed")._value.get() == 1
    assert counter.labels(outcome="pair")._value.get() == 1


def test_status_shows_each_client_of_an_account(redis_client: redis.Redis,
                                                redis_prefix: str) -> None:
    from postroom.auth.ratelimit import status

    lim = limiter(redis_client, redis_prefix, address_limit=10)
    fail(lim, OFFICE, BOB, 3)
    fail(lim, "2001:db8:1:2::5", BOB, 1)
    fail(lim, OFFICE, CAROL, 1)
    pairs, from_client = status(lim, "Bob@example.org")
    assert [(p.client, p.failures, p.locked, p.next_delay) for p in pairs] == [
        ("192.0.2.1", 3, True, 0.0), ("2001:db8:1:2::/64", 1, False, 2.0)]
    assert all(0 < p.expires_in <= 60 for p in pairs) and from_client is None
    pairs, from_client = status(lim, None, OFFICE)
    assert sorted(p.failures for p in pairs) == [1, 3] and from_client == 4
    with pytest.raises(ValueError):
        status(lim, None)
