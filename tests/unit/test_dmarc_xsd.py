"""Our aggregate report XML validates against the RFC 7489 Appendix C schema (tests/data/dmarc)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from postroom.mailauth import dmarcreport
from postroom.store.dmarc import DmarcRecord

XSD = Path(__file__).parent.parent / "data" / "dmarc" / "rua.xsd"
# xmlschema 4 cannot build its meta-schema once twisted.internet.testing is imported
# (AttributeError: __provides__ while scanning classes), which other test modules do;
# validating in a fresh interpreter keeps the check independent of collection order.
VALIDATE = """
import sys, xmlschema
schema = xmlschema.XMLSchema(sys.argv[1])
errors = [str(e.reason) for e in schema.iter_errors(sys.stdin.read())]
print("\\n".join(errors))
sys.exit(3 if errors else 0)
"""


def schema_errors(xml: str) -> str:
    """Empty when ``xml`` is valid against the RFC 7489 schema, else the reasons."""
    done = subprocess.run([sys.executable, "-c", VALIDATE, str(XSD)], input=xml, text=True,
                          capture_output=True, timeout=60)
    assert done.returncode in (0, 3), done.stderr  # anything else: the check itself broke
    return done.stdout if done.returncode else ""


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
    assert schema_errors(dmarcreport.build_xml(meta, policy, rows).decode()) == ""


def test_schema_rejects_a_report_missing_required_elements():
    assert schema_errors("<feedback><version>1.0</version></feedback>")
