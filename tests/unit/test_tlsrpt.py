"""TLS reports (RFC 8460): the _smtp._tls record, our report's JSON and mail, reading others'."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy

import pytest

from postroom.mailauth.dmarcreport import ReportError
from postroom.mailauth.tlsrpt import (
    ResultRow,
    TLSLimits,
    build_message,
    build_report,
    find_record,
    is_report_message,
    parse_record,
    parse_report_json,
    parse_report_message,
)

BEGIN = datetime(2026, 12, 6, tzinfo=UTC)
END = datetime(2026, 12, 7, tzinfo=UTC)
STS = ("version: STSv1", "mode: enforce", "mx: mx.example.net", "max_age: 86400")


def _report() -> dict:
    rows = [
        ResultRow("sts", STS, "mx.example.net", "192.0.2.1", "198.51.100.7", None, count=40),
        ResultRow("sts", STS, "mx.example.net", "192.0.2.1", "198.51.100.7",
                  "certificate-expired", "TLS negotiation failed: certificate has expired", 3),
        ResultRow("no-policy-found", None, "mx2.example.net", None, "198.51.100.8",
                  "starttls-not-supported", "the server did not offer STARTTLS", 2),
    ]
    return build_report(org_name="Postroom at mail.example.org",
                        contact="tlsrpt-noreply@mail.example.org", report_id="TLSRPT-1",
                        policy_domain="example.net", begin=BEGIN, end=END, rows=rows)


# --- the record


@pytest.mark.parametrize("text,rua", [
    ("v=TLSRPTv1; rua=mailto:tls@example.net", ("mailto:tls@example.net",)),
    ("v=TLSRPTv1;rua=mailto:a@example.net,https://r.example.net/v1",
     ("mailto:a@example.net", "https://r.example.net/v1")),
    ("v=TLSRPTv1; rua=mailto:a@example.net;", ("mailto:a@example.net",)),
])
def test_a_tlsrpt_record_gives_its_rua_uris(text, rua):
    record = parse_record(text)
    assert record is not None and record.rua == rua


@pytest.mark.parametrize("text", ["v=TLSRPTv2; rua=mailto:a@example.net", "v=TLSRPTv1",
                                  "rua=mailto:a@example.net", "v=spf1 -all",
                                  "v=TLSRPTv1; rua=mailto:a@example.net; junk"])
def test_a_malformed_record_is_no_record(text):
    assert parse_record(text) is None


def test_two_records_at_one_name_are_none():
    assert find_record(["v=TLSRPTv1; rua=mailto:a@x.example",
                        "v=TLSRPTv1; rua=mailto:b@x.example"]) is None


def test_only_mailto_addresses_are_mail_destinations():
    record = parse_record("v=TLSRPTv1; rua=https://r.example.net/x,mailto:t%40ls@example.net,"
                          "mailto:bad address@example.net,mailto:tls@example.net")
    assert record is not None
    assert record.mailto == ("tls@example.net",)
    assert record.https == ("https://r.example.net/x",)


# --- our report


def test_the_report_has_the_rfc_8460_field_names():
    report = _report()
    assert set(report) == {"organization-name", "date-range", "contact-info", "report-id",
                           "policies"}
    assert report["date-range"] == {"start-datetime": "2026-12-06T00:00:00Z",
                                    "end-datetime": "2026-12-07T00:00:00Z"}
    sts = report["policies"][0]
    assert sts["policy"] == {"policy-type": "sts", "policy-domain": "example.net",
                             "policy-string": list(STS), "mx-host": ["mx.example.net"]}
    assert sts["summary"] == {"total-successful-session-count": 40,
                              "total-failure-session-count": 3}
    assert sts["failure-details"] == [{
        "result-type": "certificate-expired", "failed-session-count": 3,
        "sending-mta-ip": "192.0.2.1", "receiving-ip": "198.51.100.7",
        "receiving-mx-hostname": "mx.example.net",
        "failure-reason-code": "TLS negotiation failed: certificate has expired"}]
    none = report["policies"][1]
    assert none["policy"] == {"policy-type": "no-policy-found", "policy-domain": "example.net"}
    assert none["summary"]["total-successful-session-count"] == 0


def test_the_report_mail_has_the_rfc_8460_headers_and_gzip_json():
    raw = build_message(_report(), "example.net", submitter="mail.example.org",
                        sender="tlsrpt-noreply@mail.example.org", recipients=["tls@example.net"],
                        message_id="<TLSRPT-1@mail.example.org>", now=END)
    msg = message_from_bytes(raw, policy=email_policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert msg["TLS-Report-Domain"] == "example.net"
    assert msg["TLS-Report-Submitter"] == "mail.example.org"
    assert msg["Subject"] == ("Report Domain: example.net Submitter: mail.example.org "
                              "Report-ID: <TLSRPT-1>")
    parts = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert len(parts) == 1
    assert parts[0].get_filename() == "mail.example.org!example.net!1796515200!1796601600.json.gz"
    assert json.loads(gzip.decompress(parts[0].get_payload(decode=True))) == _report()
    assert is_report_message(raw)


def test_our_report_reads_back_through_our_parser():
    raw = build_message(_report(), "example.net", submitter="mail.example.org",
                        sender="tlsrpt-noreply@mail.example.org", recipients=["tls@example.net"],
                        message_id="<TLSRPT-1@mail.example.org>", now=END)
    parsed = parse_report_message(raw)
    assert (parsed.org_name, parsed.report_id, parsed.begin, parsed.end) == \
        ("Postroom at mail.example.org", "TLSRPT-1", BEGIN, END)
    assert parsed.domains == ("example.net",)
    assert (parsed.successes, parsed.failures) == (40, 5)
    assert parsed.policies == _report()["policies"]


# --- reading others' reports, bounded


def test_a_dmarc_report_mail_is_not_taken_for_a_tls_report():
    assert not is_report_message(b"Subject: Report Domain: example.org\r\n"
                                 b"Content-Type: multipart/mixed\r\n\r\nbody")


def test_a_gzip_bomb_is_refused():
    bomb = gzip.compress(b"[" + b" " * (30 * 1024 * 1024) + b"]")
    with pytest.raises(ReportError, match=r"expands past|ratio"):
        parse_report_message(_mail(bomb), TLSLimits(max_json=20 * 1024 * 1024))


def test_deeply_nested_json_is_refused():
    with pytest.raises(ReportError, match=r"nested too deeply|lacks"):
        parse_report_json(b"[" * 200000 + b"]" * 200000)


@pytest.mark.parametrize("mutate,error", [
    (lambda r: r.pop("policies"), "lacks policies"),
    (lambda r: r["policies"][0]["summary"].update({"total-failure-session-count": -1}),
     "not a count"),
    (lambda r: r["date-range"].update({"start-datetime": "yesterday"}), "date-time"),
    (lambda r: r.update({"organization-name": 5}), "not a string"),
])
def test_a_report_without_the_rfc_shape_is_refused(mutate, error):
    report = _report()
    mutate(report)
    with pytest.raises(ReportError, match=error):
        parse_report_json(json.dumps(report).encode())


def test_too_many_failure_details_are_refused():
    report = _report()
    report["policies"][0]["failure-details"] *= 5
    with pytest.raises(ReportError, match="failure-details"):
        parse_report_json(json.dumps(report).encode(), TLSLimits(max_details=3))


def _mail(attachment: bytes) -> bytes:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["TLS-Report-Domain"] = "example.org"
    msg.set_content("report")
    msg.add_attachment(attachment, maintype="application", subtype="tlsrpt+gzip",
                       filename="x.json.gz")
    return msg.as_bytes()
