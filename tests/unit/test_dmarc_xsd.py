"""Our aggregate report XML validates against the RFC 7489 Appendix C schema (tests/data/dmarc)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import xmlschema

from postroom import dmarcreport
from postroom.store.dmarc import DmarcRecord

SCHEMA = xmlschema.XMLSchema(Path(__file__).parent.parent / "data" / "dmarc" / "rua.xsd")


def record(ip: str, passed: bool, override: str | None = None) -> DmarcRecord:
    result = "pass" if passed else "fail"
    detail = {"dkim": [{"domain": "example.com", "selector": "s1", "result": result}],
              "spf_scope": "mfrom", "override": override}
    return DmarcRecord(source_ip=ip, header_from="example.com", envelope_from="example.com",
                       spf_domain="example.com", spf_result=result, spf_aligned=passed,
                       dkim_result=result, dkim_aligned=passed, dmarc_result=result,
                       disposition="none" if passed or override else "reject",
                       reporting_domain="example.com", policy="reject", detail=detail)


def test_generated_report_validates_against_rfc7489_schema():
    rows = dmarcreport.aggregate([record("192.0.2.1", True), record("192.0.2.1", True),
                                  record("198.51.100.7", False),
                                  record("203.0.113.9", False, "trusted_forwarder"),
                                  record("203.0.113.10", False, "policy_test_mode")])
    meta = dmarcreport.ReportMeta(org_name="mx.receiver.test", email="dmarc@receiver.test",
                                  report_id="r1", begin=datetime(2026, 11, 25, tzinfo=UTC),
                                  end=datetime(2026, 11, 26, tzinfo=UTC))
    policy = dmarcreport.PolicyPublished.from_record(
        "example.com", {"p": "reject", "pct": 100, "adkim": "r", "aspf": "s", "fo": ["0"]})
    SCHEMA.validate(dmarcreport.build_xml(meta, policy, rows).decode())


def test_schema_rejects_a_report_missing_required_elements():
    assert not SCHEMA.is_valid("<feedback><version>1.0</version></feedback>")
