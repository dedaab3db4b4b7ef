"""postroom.net.session.ListenerSession: admission, the idle timer, the error budget, pausing."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from postroom import metrics as M
from postroom.net.connlimit import PerAddressLimit
from postroom.net.session import ListenerSession
from tests.unit.test_metrics import value


class Session(ListenerSession):
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.transport = StringTransport()
        self.fired: list[float] = []

    def session_clock(self) -> Any:
        return self.clock

    def session_timed_out(self) -> None:
        self.fired.append(self.clock.seconds())


@pytest.fixture
def registry() -> M.Metrics:
    return M.Metrics("test", process_metrics=False)


def test_a_connection_past_the_per_client_limit_is_counted_and_refused(registry):
    meter, limit = M.SessionMetrics(registry), PerAddressLimit(1)
    first, second = Session(Clock()), Session(Clock())
    assert first.admit(meter, "imap", limit, "192.0.2.1")
    assert not second.admit(meter, "imap", limit, "192.0.2.1")
    assert value(registry, "postroom_connections_total", listener="imap") == 2
    assert value(registry, "postroom_errors_total", kind="too_many_connections") == 1
    second.leave()
    assert limit.open == {"192.0.2.1": 1}  # the refused one held nothing
    first.leave()
    first.leave()  # connectionLost after an explicit leave: still counted once
    assert not limit.open
    assert value(registry, "postroom_connections_open", listener="imap") == 0


def test_no_limit_admits_everyone(registry):
    session = Session(Clock())
    assert session.admit(M.SessionMetrics(registry), "pop3", None, "192.0.2.1")
    session.leave()


def test_the_idle_timer_runs_on_the_session_clock_and_restarts_on_activity():
    clock = Clock()
    session = Session(clock)
    session.restart_timer(10)
    clock.advance(9)
    session.restart_timer(10)
    clock.advance(9)
    assert session.fired == []
    clock.advance(1)
    assert session.fired == [19]
    session.restart_timer(5)  # after firing, a restart arms a new timer
    clock.advance(5)
    assert session.fired == [19, 24]


def test_leave_stops_the_idle_timer(registry):
    clock = Clock()
    session = Session(clock)
    session.admit(M.SessionMetrics(registry), "smtp", None, "192.0.2.1")
    session.restart_timer(10)
    session.leave()
    assert clock.getDelayedCalls() == []


def test_the_error_budget_is_spent_at_the_limit(registry):
    meter = M.SessionMetrics(registry)
    session = Session(Clock())
    assert [session.spend_error(3, meter) for _ in range(3)] == [False, False, True]
    assert session.errors == 3
    assert value(registry, "postroom_errors_total", kind="too_many_errors") == 1


def test_reading_is_paused_and_resumed_once_each():
    session = Session(Clock())
    session.pause_reading()
    session.pause_reading()
    assert session.transport.producerState == "paused" and session.reading_paused
    session.resume_reading()
    session.resume_reading()
    assert session.transport.producerState == "producing" and not session.reading_paused


def test_a_closing_transport_is_not_paused():
    session = Session(Clock())
    session.transport.loseConnection()
    session.pause_reading()
    assert session.transport.producerState == "producing"


class Commands(Session):
    """Records what command_ended saw."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.ended: list[str | None] = []

    def command_ended(self, failure: Any) -> None:
        self.ended.append(None if failure is None else failure.getErrorMessage())


def test_a_handler_that_never_waits_ends_inside_run_command():
    session = Commands(Clock())

    async def handler() -> None:
        return None

    session.run_command(handler())
    assert session.ended == [None] and not session.command_running


def test_a_handler_that_waits_keeps_the_next_command_waiting_until_it_ends():
    from twisted.internet.task import deferLater

    clock: Any = Clock()  # an IReactorTime to deferLater
    session = Commands(clock)
    steps: list[str] = []

    async def handler() -> None:
        steps.append("asked")
        steps.append(await deferLater(clock, 1, lambda: "answered"))

    session.run_command(handler())
    assert session.command_running and session.ended == [] and steps == ["asked"]
    clock.advance(1)
    assert steps == ["asked", "answered"]
    assert session.ended == [None] and not session.command_running


@pytest.mark.parametrize("wait", [False, True])
def test_a_handler_that_raises_is_reported_to_command_ended(wait):
    from twisted.internet.task import deferLater

    clock: Any = Clock()  # an IReactorTime to deferLater
    session = Commands(clock)

    async def handler() -> None:
        if wait:
            await deferLater(clock, 1, lambda: None)
        raise ValueError("bug in a handler")

    session.run_command(handler())
    clock.advance(1)
    assert session.ended == ["bug in a handler"] and not session.command_running
