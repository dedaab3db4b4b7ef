"""`postroom trace` shows each content check's result kept with the verdict (issue 17)."""

from __future__ import annotations

from postroom.ops.trace import format_trace, load_trace
from postroom.store.db import Database
from postroom.store.dmarc import DmarcRecord, record_result
from postroom_dmarc import dkimcheck, spfcheck
from postroom_dmarc.content import ContentResult
from postroom_dmarc.results import record_for
from postroom_dmarc.verdict import CheckRequest, DMARCResult, Verdict, with_content


def test_a_rejected_attachment_is_in_the_trace(clean_db):
    database = Database(clean_db, pool_size=1)
    record = DmarcRecord(
        source_ip="192.0.2.7", header_from="example.org", spf_result="pass",
        dkim_result="none", dmarc_result="pass", disposition="none",
        reporting_domain="example.org", queue_id="QTRACE1",
        detail={"content": [{"check": "attachments", "action": "reject",
                             "reason": 'attachment "x.exe" blocked: blocked file type .exe'}],
                "verdict": "reject"})
    try:
        database.run_sync(record_result, record)
        text = format_trace(database.run_sync(load_trace, "QTRACE1"))
    finally:
        database.dispose()
    assert 'content: attachments -> reject: attachment "x.exe" blocked: blocked file type .exe' \
        in text, text
    assert "verdict: reject" in text and "(no longer in the spool)" in text


def test_the_recorded_row_carries_the_content_results():
    request = CheckRequest(client_ip="192.0.2.7", helo="h", mail_from="a@example.org",
                           recipients=("b@example.net",), message=b"", queue_id="Q2")
    verdict = Verdict(spfcheck.SPFResult("pass", "mailfrom", "example.org", "a@example.org", ""),
                      None, [], dkimcheck.ARCResult("none", ""),
                      DMARCResult("pass", "example.org"), "inbox", "", "x")
    decided = with_content(verdict, [ContentResult("attachments", "quarantine", "why")])
    assert (decided.disposition, decided.reason) == ("junk", "why")
    row = record_for(request, decided)
    assert row is not None
    assert row.detail["content"] == [{"check": "attachments", "action": "quarantine",
                                      "reason": "why"}]
    assert row.detail["verdict"] == "junk"
