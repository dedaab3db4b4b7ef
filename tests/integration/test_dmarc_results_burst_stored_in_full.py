"""The result recorder's group commit: rows that arrive during a write go in the next one."""

from __future__ import annotations

from datetime import UTC, datetime

from postroom.store import dmarc as dmarc_store
from postroom_dmarc.dkimcheck import ARCResult
from postroom_dmarc.results import ResultRecorder
from postroom_dmarc.spfcheck import SPFResult
from postroom_dmarc.verdict import CheckRequest, DMARCResult, Verdict
from tests.support.redisdb import in_reactor

ALL_TIME = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def _verdict() -> Verdict:
    return Verdict(spf=SPFResult("pass", "mailfrom", "example.com", "a@example.com", ""),
                   spf_helo=None, dkim=[], arc=ARCResult("none", ""),
                   dmarc=DMARCResult("pass", "example.com", "example.com", spf_aligned=True),
                   disposition="inbox", reason="", authentication_results="x")


def test_burst_of_results_is_stored_in_full_in_batches(database, clean_db, twisted_reactor):
    recorder = ResultRecorder(database, max_batch=7)

    def burst() -> None:
        for n in range(30):
            recorder.record(CheckRequest("192.0.2.1", "h", "a@example.com", (), b"",
                                         f"QB{n:03d}"), _verdict())

    in_reactor(burst)
    in_reactor(recorder.drain)
    rows = database.run_sync(dmarc_store.results_for_report, "example.com", *ALL_TIME)
    assert sorted(r.queue_id for r in rows) == [f"QB{n:03d}" for n in range(30)]
    assert recorder.pending == 0


def test_drain_when_idle_fires_at_once(database, clean_db, twisted_reactor):
    recorder = ResultRecorder(database)
    assert in_reactor(recorder.drain) is None
