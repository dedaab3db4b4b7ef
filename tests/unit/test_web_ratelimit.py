"""The web service's per-client request rate (postroom_web.ratelimit): token buckets."""

from __future__ import annotations

import pytest

from postroom_web.ratelimit import RequestRate, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_one_request_per_refilled_token() -> None:
    clock = Clock()
    rate = RequestRate(2.0, 3, clock=clock)
    assert [rate.allow("192.0.2.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rate.allow("192.0.2.1") == pytest.approx(0.5)
    clock.now += 0.5
    assert rate.allow("192.0.2.1") == 0.0
    assert rate.allow("192.0.2.1") == pytest.approx(0.5)


def test_a_refused_request_takes_nothing_and_the_bucket_never_overfills() -> None:
    clock = Clock()
    rate = RequestRate(1.0, 2, clock=clock)
    rate.allow("192.0.2.1")
    rate.allow("192.0.2.1")
    for _ in range(100):  # hammering while empty does not push the wait further out
        assert rate.allow("192.0.2.1") == pytest.approx(1.0)
    clock.now += 3600
    assert [rate.allow("192.0.2.1") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_clients_are_apart_and_an_ipv6_64_is_one_client() -> None:
    rate = RequestRate(1.0, 1, clock=Clock())
    assert rate.allow("192.0.2.1") == 0.0
    assert rate.allow("192.0.2.2") == 0.0
    assert rate.allow("2001:db8:1:2::1") == 0.0
    assert rate.allow("2001:db8:1:2::ffff") > 0  # same /64
    assert rate.allow("2001:db8:1:3::1") == 0.0


def test_memory_is_bounded_by_dropping_the_least_recently_seen_client() -> None:
    rate = RequestRate(1.0, 1, max_clients=3, clock=Clock())
    for host in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        rate.allow(host)
    rate.allow("192.0.2.1")  # seen again: now the most recent
    rate.allow("192.0.2.4")
    assert len(rate) == 3
    assert rate.allow("192.0.2.2") == 0.0  # was dropped, starts afresh
    assert rate.allow("192.0.2.1") > 0     # was kept


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert retry_after(0.01) == b"1"
    assert retry_after(1.2) == b"2"
    assert retry_after(999.0) == b"999"


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RequestRate(0, 1)
    with pytest.raises(ValueError):
        RequestRate(1, 0)
