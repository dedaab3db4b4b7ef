"""Aggregate report documents: rows, RFC 7489 Appendix C XML, the report mail, CLI summaries."""

from __future__ import annotations

import email
import gzip
from datetime import UTC, datetime, timedelta
from email import policy as email_policy
from xml.etree import ElementTree as ET

from postroom.mailauth import dmarcreport
from postroom.store.dmarc import DmarcRecord

BEGIN = datetime(2026, 3, 1, tzinfo=UTC)
END = BEGIN + timedelta(days=1)
META = dmarcreport.ReportMeta(org_name="mx.receiver.test", email="dmarc-noreply@mx.receiver.test",
                              report_id="R1", begin=BEGIN, end=END)
POLICY = dmarcreport.PolicyPublished("example.com", p="reject", pct=50)


def seen(ip: str = "192.0.2.1", *, passed: bool = True, **kw) -> DmarcRecord:
    base = dict(source_ip=ip, header_from="example.com", envelope_from="example.com",
                spf_domain="example.com", spf_result="pass" if passed else "fail",
                spf_aligned=passed, dkim_domain="example.com", dkim_selector="s1",
                dkim_result="pass" if passed else "fail", dkim_aligned=passed,
                dmarc_result="pass" if passed else "fail", policy="reject",
                disposition="none" if passed else "reject", reporting_domain="example.com",
                detail={"dkim": [{"domain": "example.com", "selector": "s1",
                                  "result": "pass" if passed else "fail"}],
                        "spf_scope": "mfrom"},
                received_at=BEGIN + timedelta(hours=1))
    base.update(kw)
    return DmarcRecord(**base)


def traffic() -> list[DmarcRecord]:
    return [seen(), seen(), seen(), seen("198.51.100.9", passed=False), seen("2001:db8::1")]


def parse(xml: bytes) -> ET.Element:
    return ET.fromstring(xml)


def test_rows_aggregate_identical_results_from_one_source():
    rows = dmarcreport.aggregate(traffic())
    assert [(r.source_ip, r.count, r.disposition) for r in rows] == [
        ("192.0.2.1", 3, "none"), ("198.51.100.9", 1, "reject"), ("2001:db8::1", 1, "none")]


def test_different_results_from_one_source_are_separate_rows():
    rows = dmarcreport.aggregate([seen(), seen(passed=False)])
    assert sorted((r.dkim, r.spf, r.count) for r in rows) == [("fail", "fail", 1),
                                                               ("pass", "pass", 1)]


def test_override_becomes_a_reason_of_the_schema_type_or_other():
    rows = dmarcreport.aggregate([seen(detail={"override": "sampled_out"}),
                                  seen("192.0.2.2", detail={"override": "policy_test_mode"})])
    assert {r.source_ip: r.reasons for r in rows} == {
        "192.0.2.1": (("sampled_out", ""),), "192.0.2.2": (("other", "policy_test_mode"),)}


def test_xml_has_every_required_element():
    root = parse(dmarcreport.build_xml(META, POLICY, dmarcreport.aggregate(traffic())))
    assert root.tag == "feedback" and root.findtext("version") == "1.0"
    for path in ("report_metadata/org_name", "report_metadata/email", "report_metadata/report_id",
                 "report_metadata/date_range/begin", "report_metadata/date_range/end",
                 "policy_published/domain", "policy_published/p", "policy_published/sp",
                 "policy_published/pct", "policy_published/adkim", "policy_published/aspf"):
        assert root.findtext(path), path
    for record in root.findall("record"):
        for path in ("row/source_ip", "row/count", "row/policy_evaluated/disposition",
                     "row/policy_evaluated/dkim", "row/policy_evaluated/spf",
                     "identifiers/header_from", "auth_results/spf/domain",
                     "auth_results/spf/scope", "auth_results/spf/result"):
            assert record.findtext(path), path
        assert record.find("identifiers/envelope_from") is not None


def test_xml_counts_add_up_to_the_messages_seen():
    root = parse(dmarcreport.build_xml(META, POLICY, dmarcreport.aggregate(traffic())))
    counts = {r.findtext("row/source_ip"): int(r.findtext("row/count") or 0)
              for r in root.findall("record")}
    assert counts == {"192.0.2.1": 3, "198.51.100.9": 1, "2001:db8::1": 1}


def test_xml_date_range_is_inclusive_epoch_seconds():
    root = parse(dmarcreport.build_xml(META, POLICY, []))
    assert (root.findtext("report_metadata/date_range/begin"),
            root.findtext("report_metadata/date_range/end")) == (
        str(int(BEGIN.timestamp())), str(int(END.timestamp()) - 1))


def test_xml_reports_failing_row_with_its_auth_results():
    root = parse(dmarcreport.build_xml(META, POLICY, dmarcreport.aggregate(traffic())))
    [failing] = [r for r in root.findall("record")
                 if r.findtext("row/source_ip") == "198.51.100.9"]
    assert (failing.findtext("row/policy_evaluated/disposition"),
            failing.findtext("row/policy_evaluated/dkim"),
            failing.findtext("auth_results/dkim/result"),
            failing.findtext("auth_results/dkim/selector"),
            failing.findtext("auth_results/spf/result")) == ("reject", "fail", "fail", "s1", "fail")


def test_xml_escapes_hostile_identifiers():
    hostile = seen(header_from="<evil>&co", envelope_from="a]]>b")
    xml = dmarcreport.build_xml(META, POLICY, dmarcreport.aggregate([hostile]))
    assert parse(xml).findtext("record/identifiers/header_from") == "<evil>&co"


def test_policy_published_from_stored_record():
    policy = dmarcreport.PolicyPublished.from_record(
        "example.com", {"p": "quarantine", "sp": None, "adkim": "s", "aspf": "r", "pct": 20,
                        "fo": ["1", "d"]})
    root = parse(dmarcreport.build_xml(META, policy, []))
    assert [root.findtext(f"policy_published/{t}") for t in ("p", "sp", "adkim", "pct", "fo")] \
        == ["quarantine", "quarantine", "s", "20", "1:d"]


def test_filename_is_receiver_domain_begin_end():
    assert dmarcreport.report_filename("mx.receiver.test", "example.com", BEGIN, END) == (
        f"mx.receiver.test!example.com!{int(BEGIN.timestamp())}!{int(END.timestamp()) - 1}"
        ".xml.gz")


def test_mail_is_mime_with_gzip_attachment_of_the_xml():
    xml = dmarcreport.build_xml(META, POLICY, dmarcreport.aggregate(traffic()))
    raw = dmarcreport.build_message(META, "example.com", xml, receiver="mx.receiver.test",
                                    sender="dmarc-noreply@mx.receiver.test",
                                    recipients=["rua@example.com"], message_id="<R1@mx>",
                                    now=END)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=email_policy.default)
    assert msg["Subject"] == ("Report Domain: example.com Submitter: mx.receiver.test "
                              "Report-ID: <R1>")
    assert msg.get_content_type() == "multipart/mixed"
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_content_type() == "application/gzip"
    assert attachment.get_filename() == dmarcreport.report_filename(
        "mx.receiver.test", "example.com", BEGIN, END)
    assert gzip.decompress(attachment.get_content()) == xml


def test_summary_by_source_counts_pass_and_fail():
    rows = dmarcreport.summarize(traffic(), by="source")
    assert rows[0] == {"source_ip": "192.0.2.1", "messages": 3, "pass": 3, "fail": 0,
                       "spf_aligned": 3, "dkim_aligned": 3, "quarantined": 0, "rejected": 0}
    assert {r["source_ip"]: r["rejected"] for r in rows}["198.51.100.9"] == 1


def test_summary_by_result_groups_result_combinations():
    rows = dmarcreport.summarize(traffic(), by="result")
    assert rows == [
        {"dmarc": "pass", "spf": "pass", "dkim": "pass", "disposition": "none", "messages": 4},
        {"dmarc": "fail", "spf": "fail", "dkim": "fail", "disposition": "reject", "messages": 1}]


def test_sources_tell_passing_failing_and_mixed_senders():
    status = {r["source_ip"]: r["status"] for r in dmarcreport.sources(
        [*traffic(), seen("2001:db8::1", passed=False)])}
    assert status == {"192.0.2.1": "passes", "198.51.100.9": "fails", "2001:db8::1": "mixed"}
