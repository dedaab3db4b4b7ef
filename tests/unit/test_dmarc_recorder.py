"""The result recorder's pacing: idle rows go at once, rows under load share a transaction."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from postroom_dmarc.dkimcheck import ARCResult
from postroom_dmarc.results import ResultRecorder
from postroom_dmarc.spfcheck import SPFResult
from postroom_dmarc.verdict import CheckRequest, DMARCResult, Verdict

VERDICT = Verdict(spf=SPFResult("pass", "mailfrom", "example.com", "a@example.com", ""),
                  spf_helo=None, dkim=[], arc=ARCResult("none", ""),
                  dmarc=DMARCResult("pass", "example.com", "example.com", spf_aligned=True),
                  disposition="inbox", reason="", authentication_results="x")


class FakeDatabase:
    """Each run() is a write the test finishes by hand."""

    def __init__(self) -> None:
        self.writes: list[tuple[list[Any], defer.Deferred[None]]] = []

    def run(self, fn: Any, rows: Any) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.writes.append((rows, d))
        return d

    def sizes(self) -> list[int]:
        return [len(rows) for rows, _ in self.writes]


def _record(recorder: ResultRecorder, n: int) -> None:
    recorder.record(CheckRequest("192.0.2.1", "h", "a@example.com", (), b"", f"Q{n}"), VERDICT)


def _recorder(**kw: Any) -> tuple[ResultRecorder, FakeDatabase, Clock]:
    database, clock = FakeDatabase(), Clock()
    clock.advance(100)
    return ResultRecorder(database, reactor=clock, min_interval=0.05, **kw), database, clock


def test_idle_row_is_written_at_once():
    recorder, database, clock = _recorder()
    _record(recorder, 1)
    assert database.sizes() == [1]
    database.writes[0][1].callback(None)
    clock.advance(1)
    _record(recorder, 2)
    assert database.sizes() == [1, 1]


def test_rows_under_load_wait_out_the_interval_together():
    recorder, database, clock = _recorder()
    _record(recorder, 1)
    database.writes[0][1].callback(None)  # a fast write: the interval has not passed
    for n in range(2, 6):
        _record(recorder, n)
    assert database.sizes() == [1] and recorder.pending == 4
    clock.advance(0.05)
    assert database.sizes() == [1, 4]
    database.writes[1][1].callback(None)
    assert recorder.pending == 0


def test_a_full_batch_does_not_wait():
    recorder, database, clock = _recorder(max_batch=3)
    _record(recorder, 1)
    database.writes[0][1].callback(None)
    for n in range(2, 5):
        _record(recorder, n)
    assert database.sizes() == [1, 3]
    assert not clock.getDelayedCalls()


def test_drain_writes_waiting_rows_without_waiting_out_the_interval():
    recorder, database, clock = _recorder()
    _record(recorder, 1)
    database.writes[0][1].callback(None)
    _record(recorder, 2)
    drained = recorder.drain()
    assert database.sizes() == [1, 1] and not clock.getDelayedCalls()
    assert not drained.called
    database.writes[1][1].callback(None)
    assert drained.called and recorder.pending == 0
