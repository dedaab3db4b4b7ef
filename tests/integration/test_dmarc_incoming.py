"""Incoming aggregate reports stored in PostgreSQL and shown by `postroom dmarc sources`."""

from __future__ import annotations

import gzip
import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from postroom.mailauth.dmarcreport import parse_report_message
from postroom.ops.cli import main
from postroom.store import dmarc as dmarc_store
from tests.unit.test_dmarc_incoming import XML, mail

RECENT = datetime.now(UTC) - timedelta(days=1)


def report_mail(report_id: str = "1234") -> bytes:
    xml = XML.replace(b"<report_id>1234<", f"<report_id>{report_id}<".encode())
    xml = xml.replace(b"1764201599", str(int(RECENT.timestamp())).encode())
    return mail(gzip.compress(xml), "gzip", "r.xml.gz")


def test_report_is_stored_once_per_message(database, clean_db):
    report = parse_report_message(report_mail())
    assert database.run_sync(dmarc_store.store_incoming_report, "a" * 64, report) == "stored"
    assert database.run_sync(dmarc_store.store_incoming_report, "a" * 64, report) == "duplicate"
    rows = database.run_sync(dmarc_store.incoming_report_rows, "example.org",
                             RECENT - timedelta(days=2))
    assert [row["source_ip"] for _, row in rows] == ["192.0.2.10", "203.0.113.5"]


def test_same_report_resent_is_a_duplicate(database, clean_db):
    report = parse_report_message(report_mail())
    database.run_sync(dmarc_store.store_incoming_report, "a" * 64, report)
    assert database.run_sync(dmarc_store.store_incoming_report, "b" * 64, report) == "duplicate"


def test_refused_report_is_remembered(database, clean_db):
    assert database.run_sync(dmarc_store.store_incoming_report, "c" * 64, None,
                             "unsafe XML refused") == "refused"


@pytest.fixture
def cli(database, clean_db, monkeypatch, capsys):
    for name in [k for k in os.environ if k.startswith("POSTROOM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("POSTROOM_DATABASE_URL", clean_db)
    monkeypatch.setenv("POSTROOM_HOSTNAME", "mx.example.org")
    database.run_sync(dmarc_store.store_incoming_report, "d" * 64,
                      parse_report_message(report_mail()))

    def run(*args: str) -> str:
        capsys.readouterr()
        assert main(["dmarc", *args]) == 0
        return capsys.readouterr().out

    return run


def test_sources_table_shows_passing_and_failing_reported_sources(cli):
    out = cli("sources", "example.org", "--since", "7d")
    lines = {line.split()[0]: line for line in out.splitlines() if line[:1].isdigit()}
    assert "passes" in lines["192.0.2.10"] and "google.com" in lines["192.0.2.10"]
    assert "fails" in lines["203.0.113.5"]


def test_sources_json_marks_reported_rows(cli):

    rows = json.loads(cli("sources", "example.org", "--json"))
    assert {(r["source_ip"], r["origin"], r["status"]) for r in rows} == {
        ("192.0.2.10", "reports", "passes"), ("203.0.113.5", "reports", "fails")}
