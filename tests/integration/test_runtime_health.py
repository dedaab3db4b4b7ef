"""Health checks: results, failures and time limits (on a task.Clock, no reactor needed)."""

from __future__ import annotations

from twisted.internet import defer, task

from postroom.health import Health
from postroom.metrics import Metrics, messages_total


def _run(health: Health) -> defer.Deferred:
    return defer.Deferred.fromCoroutine(health.run())


def _without_timing(results: dict) -> dict:
    return {name: {k: v for k, v in entry.items() if k != "ms"} for name, entry in results.items()}


def test_passing_checks_and_flags_are_all_ok():
    health = Health(task.Clock())
    health.add_check("database", lambda: defer.succeed(True))
    health.set_flag("service started", True)
    assert _without_timing(_run(health).result) == {
        "service started": {"ok": True}, "database": {"ok": True}}


def test_a_check_that_raises_fails_with_the_reason():
    health = Health(task.Clock())

    def broken() -> bool:
        raise ConnectionError("refused")

    health.add_check("redis", broken)
    assert _without_timing(_run(health).result)["redis"] == {
        "ok": False, "error": "ConnectionError: refused"}


def test_a_check_returning_false_fails():
    health = Health(task.Clock())
    health.add_check("listeners", lambda: False)
    assert _run(health).result["listeners"]["error"] == "check returned false"


def test_a_hung_check_times_out_instead_of_hanging_the_probe():
    clock = task.Clock()
    health = Health(clock, timeout=2.0)
    health.add_check("database", lambda: defer.Deferred())
    d = _run(health)
    assert not d.called
    clock.advance(2.0)
    assert _without_timing(d.result)["database"] == {"ok": False, "error": "timed out"}


def test_metrics_declared_twice_are_the_same_object():
    metrics = Metrics("test", process_metrics=False)
    assert messages_total(metrics) is messages_total(metrics)
    messages_total(metrics).labels(outcome="accepted").inc()
    assert b'postroom_messages_total{outcome="accepted"} 1.0' in metrics.render()
