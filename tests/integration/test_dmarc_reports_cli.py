"""`postroom dmarc report|sources` against a real database of stored verdicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree as ET

import pytest

from postroom.ops.cli import main
from postroom.store import dmarc as dmarc_store

RECENT = datetime.now(UTC) - timedelta(hours=2)


def verdict(ip: str, passed: bool, when: datetime = RECENT) -> dmarc_store.DmarcRecord:
    result = "pass" if passed else "fail"
    return dmarc_store.DmarcRecord(
        source_ip=ip, header_from="example.com", envelope_from="example.com",
        spf_domain="example.com", spf_result=result, spf_aligned=passed, dkim_result=result,
        dkim_domain="example.com", dkim_selector="s1", dkim_aligned=passed,
        dmarc_result=result, policy="reject", disposition="none" if passed else "reject",
        reporting_domain="example.com", received_at=when,
        detail={"record": {"p": "reject", "pct": 100, "adkim": "r", "aspf": "r", "fo": ["0"]}})


@pytest.fixture
def stored(database, clean_db):
    for row in (verdict("192.0.2.1", True), verdict("192.0.2.1", True),
                verdict("198.51.100.7", False), verdict("203.0.113.1", False),
                verdict("203.0.113.1", True, RECENT - timedelta(days=3))):
        database.run_sync(dmarc_store.record_result, row)
    return clean_db


@pytest.fixture
def cli(stored, monkeypatch, capsys):
    """`postroom dmarc ...` in this process (a process start costs seconds); its stdout."""
    for name in [k for k in os.environ if k.startswith("POSTROOM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("POSTROOM_DATABASE_URL", stored)
    monkeypatch.setenv("POSTROOM_HOSTNAME", "mx.receiver.test")

    def run(*args: str) -> str:
        capsys.readouterr()
        assert main(["dmarc", *args]) == 0
        return capsys.readouterr().out

    return run


def test_the_command_runs_as_a_process(stored):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    environ["POSTROOM_DATABASE_URL"] = stored
    result = subprocess.run([sys.executable, "-m", "postroom.ops.cli", "dmarc", "sources",
                             "example.com"], capture_output=True, text=True, env=environ,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "198.51.100.7" in result.stdout


def test_report_table_counts_pass_and_fail_by_source(cli):
    lines = cli("report", "example.com", "--since", "1d").splitlines()
    assert lines[0].split()[:4] == ["SOURCE_IP", "MESSAGES", "PASS", "FAIL"]
    assert lines[1].split()[:4] == ["192.0.2.1", "2", "2", "0"]
    assert sorted(line.split()[0] for line in lines[1:]) == [
        "192.0.2.1", "198.51.100.7", "203.0.113.1"]


def test_report_by_result_as_json(cli):
    rows = json.loads(cli("report", "example.com", "--since", "1d", "--by", "result", "--json"))
    assert {(r["dmarc"], r["disposition"]): r["messages"] for r in rows} == {
        ("pass", "none"): 2, ("fail", "reject"): 2}


def test_since_reaches_further_back(cli):
    rows = json.loads(cli("report", "example.com", "--since", "5d", "--json"))
    assert {r["source_ip"]: r["messages"] for r in rows}["203.0.113.1"] == 2


def test_report_xml_is_the_aggregate_report(cli):
    root = ET.fromstring(cli("report", "example.com", "--since", "1d", "--xml"))
    assert root.findtext("policy_published/p") == "reject"
    assert sum(int(r.findtext("row/count") or 0) for r in root.findall("record")) == 4


def test_sources_say_which_senders_pass(cli):
    rows = json.loads(cli("sources", "example.com", "--since", "7d", "--json"))
    assert {r["source_ip"]: r["status"] for r in rows} == {
        "192.0.2.1": "passes", "198.51.100.7": "fails", "203.0.113.1": "mixed"}


def test_no_verdicts_says_so(cli):
    assert "no DMARC verdicts for other.test" in cli("report", "other.test")
