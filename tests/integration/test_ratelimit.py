"""The shared failed-login limiter against a real Redis."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from postroom.auth.ratelimit import LoginRateLimiter, RateLimitUnavailable
from postroom.config import load_settings
from tests.support.ports import free_port


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def limiter(client: redis.Redis, prefix: str, clock: FakeTime | None = None,
            limit: int = 3, window: float = 60.0) -> LoginRateLimiter:
    return LoginRateLimiter(client, prefix, limit, window, clock=clock or FakeTime())


def test_fresh_address_and_account_are_allowed(redis_client: redis.Redis,
                                               redis_prefix: str) -> None:
    assert limiter(redis_client, redis_prefix).check("192.0.2.1", "bob@example.org")


def test_account_is_blocked_after_limit_failures_from_many_addresses(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    for i in range(3):
        lim.record_failure(f"192.0.2.{i}", "bob@example.org")
    assert not lim.check("198.51.100.9", "bob@example.org")
    assert lim.check("198.51.100.9", "alice@example.org")


def test_address_is_blocked_after_limit_failures_on_many_accounts(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    for i in range(3):
        lim.record_failure("192.0.2.1", f"user{i}@example.org")
    assert not lim.check("192.0.2.1", "someone@example.org")
    assert lim.check("192.0.2.2", "someone@example.org")


def test_below_the_limit_is_allowed(redis_client: redis.Redis, redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    for _ in range(2):
        lim.record_failure("192.0.2.1", "bob@example.org")
    assert lim.check("192.0.2.1", "bob@example.org")


def test_account_names_are_compared_case_insensitively(redis_client: redis.Redis,
                                                       redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    for i in range(3):
        lim.record_failure(f"192.0.2.{i}", "Bob@Example.org")
    assert not lim.check("198.51.100.1", "bob@example.org")


def test_failures_older_than_the_window_no_longer_count(redis_client: redis.Redis,
                                                        redis_prefix: str) -> None:
    clock = FakeTime()
    lim = limiter(redis_client, redis_prefix, clock)
    for _ in range(3):
        lim.record_failure("192.0.2.1", "bob@example.org")
    clock.now += 30
    assert not lim.check("192.0.2.1", "bob@example.org")
    clock.now += 31
    assert lim.check("192.0.2.1", "bob@example.org")


def test_window_slides_rather_than_resetting(redis_client: redis.Redis,
                                             redis_prefix: str) -> None:
    clock = FakeTime()
    lim = limiter(redis_client, redis_prefix, clock)
    lim.record_failure("192.0.2.1", None)
    clock.now += 50
    lim.record_failure("192.0.2.1", None)
    lim.record_failure("192.0.2.1", None)
    clock.now += 20  # the first failure has left the window, the other two have not
    assert lim.check("192.0.2.1", None)
    lim.record_failure("192.0.2.1", None)
    assert not lim.check("192.0.2.1", None)


def test_reset_forgets_the_account_but_not_the_address(redis_client: redis.Redis,
                                                       redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    for _ in range(3):
        lim.record_failure("192.0.2.1", "bob@example.org")
    lim.reset("bob@example.org")
    assert lim.check("192.0.2.2", "bob@example.org")
    assert not lim.check("192.0.2.1", "carol@example.org")


def test_keys_are_bounded_and_expire(redis_client: redis.Redis, redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    for _ in range(50):
        lim.record_failure("192.0.2.1", "bob@example.org")
    key = lim.ip_key("192.0.2.1")
    assert redis_client.zcard(key) == 4
    assert 0 < redis_client.pttl(key) <= 60_000
    assert key.startswith(redis_prefix)
    assert lim.account_key("bob@example.org").startswith(redis_prefix)


def test_works_with_a_bytes_client_as_the_runtime_makes(redis_url: str,
                                                        redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        lim = limiter(client, redis_prefix)
        for _ in range(3):
            lim.record_failure("192.0.2.1", "bob@example.org")
        assert not lim.check("192.0.2.1", "bob@example.org")
    finally:
        client.close()


def test_from_settings_uses_limit_window_and_prefix(redis_client: redis.Redis) -> None:
    settings = load_settings({"POSTROOM_AUTH_FAIL_LIMIT": "7", "POSTROOM_AUTH_FAIL_WINDOW": "2m",
                              "POSTROOM_REDIS_PREFIX": "x:"})
    lim = LoginRateLimiter.from_settings(redis_client, settings)
    assert (lim.limit, lim.window, lim.prefix) == (7, 120.0, "x:")


def unreachable_redis() -> redis.Redis:
    # nothing listens on a just-freed loopback port: a real "Redis is down"
    return redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1,
                       socket_timeout=1, retry=Retry(NoBackoff(), 0))


def test_check_fails_closed_when_redis_is_down(redis_prefix: str) -> None:
    lim = limiter(unreachable_redis(), redis_prefix)
    try:
        lim.check("192.0.2.1", "bob@example.org")
    except RateLimitUnavailable:
        return
    raise AssertionError("check must raise RateLimitUnavailable when Redis is down")


def test_record_and_reset_do_not_raise_when_redis_is_down(redis_prefix: str) -> None:
    lim = limiter(unreachable_redis(), redis_prefix)
    lim.record_failure("192.0.2.1", "bob@example.org")
    lim.reset("bob@example.org")


def test_a_login_after_a_clean_check_resets_without_a_redis_call(
        redis_client: redis.Redis, redis_prefix: str, monkeypatch) -> None:
    lim = limiter(redis_client, redis_prefix)
    deletes: list[str] = []
    real_delete = redis_client.delete
    monkeypatch.setattr(redis_client, "delete", lambda *keys: (deletes.extend(keys),
                                                               real_delete(*keys))[1])
    assert lim.check("192.0.2.1", "bob@example.org")
    lim.reset("bob@example.org")
    assert deletes == []


def test_a_login_after_failures_still_forgets_them(redis_client: redis.Redis,
                                                   redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    assert lim.check("192.0.2.1", "bob@example.org")  # clean, remembered
    for i in range(2):
        lim.record_failure(f"192.0.2.{i}", "bob@example.org")  # forgets "clean"
    assert lim.check("192.0.2.9", "bob@example.org")
    lim.reset("bob@example.org")
    lim.record_failure("192.0.2.7", "bob@example.org")
    # two old failures were deleted: one more is still far below the limit of 3
    assert lim.check("192.0.2.9", "bob@example.org")
    assert redis_client.zcard(lim.account_key("bob@example.org")) == 1


def test_needs_reset_only_after_failures(redis_client: redis.Redis, redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    assert lim.check("192.0.2.1", "bob@example.org")
    assert lim.needs_reset("bob@example.org") is False
    lim.record_failure("192.0.2.1", "bob@example.org")
    assert lim.check("192.0.2.1", "bob@example.org")
    assert lim.needs_reset("bob@example.org") is True


def test_every_spelling_of_an_account_counts_on_its_one_counter(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    # login resolves all of these to bob@example.org (postroom.store.addresses.login_name)
    lim = limiter(redis_client, redis_prefix)
    for i, spelling in enumerate(["BOB@example.org.", "<bob@example.org>",
                                  "bob@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.org"]):
        lim.record_failure(f"192.0.2.{i}", spelling)
    assert not lim.check("198.51.100.1", "bob@example.org....")
    assert not lim.check("198.51.100.1", "bob@example.org")
    assert lim.check("198.51.100.1", "alice@example.org")


def test_a_success_under_one_spelling_clears_the_account_for_all(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    for i in range(3):
        lim.record_failure(f"192.0.2.{i}", "bob@example.org")
    lim.reset("<BOB@Example.org.>")
    assert lim.check("198.51.100.1", "bob@example.org")


def test_a_name_no_account_can_have_is_counted_on_the_address_only(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    assert lim.account_key("not an address") is None
    for i in range(3):
        lim.record_failure(f"192.0.2.{i}", "not an address")
    assert lim.check("198.51.100.1", "not an address")
    assert not lim.needs_reset("not an address")


def test_ipv6_clients_of_one_slash_64_share_the_address_counter(
        redis_client: redis.Redis, redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    for i in range(3):
        lim.record_failure(f"2001:db8:1:2::{i + 1:x}", f"user{i}@example.org")
    assert not lim.check("2001:db8:1:2:ffff:ffff:ffff:fffe", "someone@example.org")
    assert lim.check("2001:db8:1:3::1", "someone@example.org")


def test_ipv4_mapped_ipv6_shares_the_ipv4_counter(redis_client: redis.Redis,
                                                   redis_prefix: str) -> None:
    lim = limiter(redis_client, redis_prefix)
    for i in range(3):
        lim.record_failure("::ffff:192.0.2.5", f"user{i}@example.org")
    assert not lim.check("192.0.2.5", "someone@example.org")
