"""Verdict rows written in one batch statement: every column as the row-at-a-time path writes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from postroom.store import dmarc
from postroom.store.db import Database

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ALL_TIME = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def record(**kw):
    base = dict(source_ip="192.0.2.1", header_from="remote.test", spf_result="pass",
                dkim_result="pass", dmarc_result="pass", disposition="none",
                reporting_domain="remote.test")
    base.update(kw)
    return dmarc.DmarcRecord(**base)


def _fields(r: dmarc.DmarcRecord) -> tuple:
    return tuple(getattr(r, name) for name in dmarc._COLUMNS)


def test_batch_stores_every_column_like_single_rows(database, clean_db):
    full = record(source_ip="2001:db8::1", envelope_from="b@other.test", spf_domain="other.test",
                  spf_aligned=True, dkim_domain="remote.test", dkim_selector="s1",
                  dkim_aligned=True, policy="reject", queue_id="Q1",
                  detail={"dkim": [{"domain": "remote.test", "result": "pass"}],
                          "record": {"fo": ["0"], "pct": 100}, "arc": None, "x": "é'\""})
    bare = record(queue_id=None, detail={})
    database.run_sync(dmarc.record_results, [full, bare])
    database.run_sync(dmarc.record_result, full)
    database.run_sync(dmarc.record_result, bare)
    rows = database.run_sync(dmarc.results_for_report, "remote.test", *ALL_TIME)
    assert [_fields(r) for r in rows[:2]] == [_fields(r) for r in rows[2:]] \
        == [_fields(full), _fields(bare)]
    # a received_at left out is the transaction's now(), as the column default
    assert all(r.received_at is not None for r in rows)


def test_batch_with_and_without_received_at_keeps_the_order(database, clean_db):
    stamped = record(queue_id="S", received_at=T0)
    database.run_sync(dmarc.record_results,
                      [stamped, record(queue_id="N1"), record(queue_id="N2")])
    rows = database.run_sync(dmarc.results_for_report, "remote.test", *ALL_TIME)
    assert [(r.queue_id, r.received_at == T0) for r in rows] == [
        ("S", True), ("N1", False), ("N2", False)]
    ids = {r.queue_id: r.id for r in rows}
    assert ids["N1"] < ids["N2"] < ids["S"]  # unstamped rows first, as before


def test_batch_statement_is_prepared_once_per_connection(database_url, clean_db):
    # one pooled connection, so the check below looks at the session that prepared it
    single = Database(database_url, pool_size=1)
    try:
        for n in range(3):
            single.run_sync(dmarc.record_results,
                            [record(queue_id=f"P{n}", received_at=T0 + timedelta(seconds=n))])

        def prepared(session) -> int:
            return session.execute(text(
                "SELECT count(*) FROM pg_prepared_statements "
                "WHERE name = 'postroom_dmarc_record_results'")).scalar_one()

        assert single.run_sync(prepared) == 1
        rows = single.run_sync(dmarc.results_for_report, "remote.test", *ALL_TIME)
        assert [r.queue_id for r in rows] == ["P0", "P1", "P2"]
    finally:
        single.dispose()
