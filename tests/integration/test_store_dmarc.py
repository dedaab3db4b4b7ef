"""DMARC verdicts: stored, then read back per reporting domain and period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from postroom.store import dmarc

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def db(database, clean_db):
    return database


def verdict(**kw):
    base = dict(source_ip="192.0.2.1", header_from="remote.test", spf_result="pass",
                dkim_result="pass", dmarc_result="pass", disposition="none",
                reporting_domain="remote.test", received_at=T0, detail={"k": 1})
    base.update(kw)
    return dmarc.DmarcRecord(**base)


def test_results_for_report_returns_period_of_one_domain(db):
    db.run_sync(dmarc.record_result, verdict())
    db.run_sync(dmarc.record_result, verdict(received_at=T0 + timedelta(days=2)))
    db.run_sync(dmarc.record_result, verdict(reporting_domain="other.test"))
    [got] = db.run_sync(dmarc.results_for_report, "remote.test", T0, T0 + timedelta(days=1))
    assert (got.source_ip, got.detail, got.received_at) == ("192.0.2.1", {"k": 1}, T0)
    assert db.run_sync(dmarc.reporting_domains, T0, T0 + timedelta(days=1)) == [
        "other.test", "remote.test"]


def test_unknown_result_value_is_refused(db):
    with pytest.raises(IntegrityError):
        db.run_sync(dmarc.record_result, verdict(spf_result="maybe"))


def test_purge_results_removes_old_rows(db):
    db.run_sync(dmarc.record_result, verdict())
    assert db.run_sync(dmarc.purge_results, T0 + timedelta(seconds=1)) == 1
