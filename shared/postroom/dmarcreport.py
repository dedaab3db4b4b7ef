"""DMARC aggregate report documents (RFC 7489 7.2, Appendix C): rows, XML, the mail, summaries.

Pure functions of stored verdicts (:class:`postroom.store.dmarc.DmarcRecord`):
no DNS and no SQL here, so the dmarc service (which sends reports) and
`postroom dmarc report` (which shows them) build the same thing. A verdict's
``detail`` holds what the table's columns do not: every DKIM signature
(``dkim``), the SPF scope (``spf_scope``), the override (``override``) and the
policy record in force (``record``).

The XML has no namespace and carries ``<version>1.0</version>``, as the large
reporters send it; every element RFC 7489's schema requires is present.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any
from xml.etree import ElementTree as ET

from postroom.store.dmarc import DmarcRecord

XML_VERSION = "1.0"
# RFC 7489 Appendix C PolicyOverrideType; other overrides are reported as "other"
OVERRIDES = ("forwarded", "sampled_out", "trusted_forwarder", "mailing_list", "local_policy",
             "other")

Auth = tuple[str, str, str]  # dkim: (domain, selector, result); spf: (domain, scope, result)


@dataclass(frozen=True)
class ReportRow:
    """One <record>: messages from one source with the same identifiers and results."""

    source_ip: str
    count: int
    disposition: str  # none, quarantine, reject: the policy applied
    dkim: str  # pass when an aligned DKIM signature passed, else fail
    spf: str  # pass when SPF passed and aligned, else fail
    header_from: str
    envelope_from: str
    reasons: tuple[tuple[str, str], ...]  # (PolicyOverrideType, comment)
    dkim_results: tuple[Auth, ...]
    spf_results: tuple[Auth, ...]


@dataclass(frozen=True)
class PolicyPublished:
    """<policy_published>: the record that applied to the report's messages."""

    domain: str
    p: str = "none"
    sp: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    fo: str = "0"

    @classmethod
    def from_record(cls, domain: str, record: Mapping[str, Any] | None) -> PolicyPublished:
        """From a parsed record as stored in a verdict's detail (``DMARCRecord.to_json()``)."""
        if not record:
            return cls(domain)
        fo = record.get("fo") or ("0",)
        return cls(domain, p=str(record.get("p") or "none"), sp=record.get("sp"),
                   adkim=str(record.get("adkim") or "r"), aspf=str(record.get("aspf") or "r"),
                   pct=int(record.get("pct", 100)),
                   fo=":".join(fo) if isinstance(fo, (list, tuple)) else str(fo))


@dataclass(frozen=True)
class ReportMeta:
    """<report_metadata>: who reports, how to reach them, which period."""

    org_name: str
    email: str
    report_id: str
    begin: datetime
    end: datetime
    extra_contact_info: str | None = None


def _reasons(record: DmarcRecord) -> tuple[tuple[str, str], ...]:
    override = record.detail.get("override")
    if not override:
        return ()
    if override in OVERRIDES:
        return ((str(override), ""),)
    return (("other", str(override)),)


def _dkim_results(record: DmarcRecord) -> tuple[Auth, ...]:
    signatures = record.detail.get("dkim")
    if isinstance(signatures, list):
        return tuple((str(s.get("domain", "")), str(s.get("selector", "")),
                      str(s.get("result", "none"))) for s in signatures if isinstance(s, dict))
    if record.dkim_domain:
        return ((record.dkim_domain, record.dkim_selector or "", record.dkim_result),)
    return ()


def _row_key(record: DmarcRecord) -> tuple[Any, ...]:
    scope = str(record.detail.get("spf_scope") or "mfrom")
    return (record.source_ip, record.disposition,
            "pass" if record.dkim_aligned else "fail", "pass" if record.spf_aligned else "fail",
            record.header_from, record.envelope_from or "", _reasons(record),
            _dkim_results(record), ((record.spf_domain or "", scope, record.spf_result),))


def aggregate(records: Iterable[DmarcRecord]) -> list[ReportRow]:
    """Group verdicts into report rows; the biggest first, then by source address."""
    counts: dict[tuple[Any, ...], int] = {}
    for record in records:
        key = _row_key(record)
        counts[key] = counts.get(key, 0) + 1
    rows = [ReportRow(key[0], count, *key[1:]) for key, count in counts.items()]
    return sorted(rows, key=lambda r: (-r.count, r.source_ip, r.header_from))


def _sub(parent: ET.Element, tag: str, text: str | int | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = str(text)
    return element


def _epoch(when: datetime) -> int:
    return int(when.timestamp())


def build_xml(meta: ReportMeta, policy: PolicyPublished, rows: Sequence[ReportRow]) -> bytes:
    """The aggregate report document (UTF-8, with an XML declaration)."""
    feedback = ET.Element("feedback")
    _sub(feedback, "version", XML_VERSION)
    md = _sub(feedback, "report_metadata")
    _sub(md, "org_name", meta.org_name)
    _sub(md, "email", meta.email)
    if meta.extra_contact_info:
        _sub(md, "extra_contact_info", meta.extra_contact_info)
    _sub(md, "report_id", meta.report_id)
    dates = _sub(md, "date_range")
    _sub(dates, "begin", _epoch(meta.begin))
    # RFC 7489 Appendix C: begin and end are both inclusive
    _sub(dates, "end", _epoch(meta.end) - 1)
    pp = _sub(feedback, "policy_published")
    _sub(pp, "domain", policy.domain)
    _sub(pp, "adkim", policy.adkim)
    _sub(pp, "aspf", policy.aspf)
    _sub(pp, "p", policy.p)
    _sub(pp, "sp", policy.sp or policy.p)
    _sub(pp, "pct", policy.pct)
    _sub(pp, "fo", policy.fo)
    for row in rows:
        record = _sub(feedback, "record")
        r = _sub(record, "row")
        _sub(r, "source_ip", row.source_ip)
        _sub(r, "count", row.count)
        pe = _sub(r, "policy_evaluated")
        _sub(pe, "disposition", row.disposition)
        _sub(pe, "dkim", row.dkim)
        _sub(pe, "spf", row.spf)
        for kind, comment in row.reasons:
            reason = _sub(pe, "reason")
            _sub(reason, "type", kind)
            if comment:
                _sub(reason, "comment", comment)
        ids = _sub(record, "identifiers")
        _sub(ids, "envelope_from", row.envelope_from)
        _sub(ids, "header_from", row.header_from)
        auth = _sub(record, "auth_results")
        for domain, selector, result in row.dkim_results:
            dkim = _sub(auth, "dkim")
            _sub(dkim, "domain", domain)
            if selector:
                _sub(dkim, "selector", selector)
            _sub(dkim, "result", result)
        for domain, scope, result in row.spf_results:
            spf = _sub(auth, "spf")
            _sub(spf, "domain", domain)
            _sub(spf, "scope", scope)
            _sub(spf, "result", result)
    ET.indent(feedback)
    return ET.tostring(feedback, encoding="utf-8", xml_declaration=True) + b"\n"


def report_filename(receiver: str, domain: str, begin: datetime, end: datetime) -> str:
    """``receiver!policy-domain!begin!end.xml.gz`` (RFC 7489 section 7.2.1.1)."""
    return f"{receiver}!{domain}!{_epoch(begin)}!{_epoch(end) - 1}.xml.gz"


def build_message(meta: ReportMeta, domain: str, xml: bytes, *, receiver: str, sender: str,
                  recipients: Sequence[str], message_id: str,
                  now: datetime | None = None) -> bytes:
    """The report mail: a short text part and the gzip-compressed XML as an attachment."""
    now = now or datetime.now(UTC)
    # long lines rather than folds: the Subject's Report-ID is read by programs
    msg = EmailMessage(policy=SMTP.clone(max_line_length=998))
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    # RFC 7489 section 7.2.1.1 gives the Subject's form
    msg["Subject"] = f"Report Domain: {domain} Submitter: {receiver} Report-ID: <{meta.report_id}>"
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
    msg.set_content(
        f"This is a DMARC aggregate report for {domain} from {receiver}, covering "
        f"{meta.begin:%Y-%m-%d %H:%M} to {meta.end:%Y-%m-%d %H:%M} UTC.\n", cte="7bit")
    msg.add_attachment(gzip.compress(xml, mtime=0), maintype="application", subtype="gzip",
                       filename=report_filename(receiver, domain, meta.begin, meta.end))
    return msg.as_bytes()


# --- what `postroom dmarc report` and `postroom dmarc sources` show


def summarize(records: Iterable[DmarcRecord], by: str = "source") -> list[dict[str, Any]]:
    """Counts per source address (``by="source"``) or per result combination (``"result"``)."""
    table: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in records:
        if by == "source":
            key: tuple[str, ...] = (r.source_ip,)
            row = table.setdefault(key, {"source_ip": r.source_ip, "messages": 0, "pass": 0,
                                         "fail": 0, "spf_aligned": 0, "dkim_aligned": 0,
                                         "quarantined": 0, "rejected": 0})
            row["pass" if r.dmarc_result == "pass" else "fail"] += 1
            row["spf_aligned"] += int(r.spf_aligned)
            row["dkim_aligned"] += int(r.dkim_aligned)
            row["quarantined"] += int(r.disposition == "quarantine")
            row["rejected"] += int(r.disposition == "reject")
        elif by == "result":
            key = (r.dmarc_result, r.spf_result, r.dkim_result, r.disposition)
            row = table.setdefault(key, dict(zip(("dmarc", "spf", "dkim", "disposition"), key,
                                                 strict=True), messages=0))
        else:
            raise ValueError(f"unknown grouping {by!r}")
        row["messages"] += 1
    return sorted(table.values(), key=lambda row: (-row["messages"], *map(str, row.values())))


def sources(records: Iterable[DmarcRecord]) -> list[dict[str, Any]]:
    """Each sending address seen, the From domains it used, and whether its mail passes DMARC."""
    seen: dict[str, dict[str, Any]] = {}
    for r in records:
        row = seen.setdefault(r.source_ip, {"source_ip": r.source_ip, "from": set(),
                                            "messages": 0, "pass": 0, "last_seen": None})
        row["from"].add(r.header_from)
        row["messages"] += 1
        row["pass"] += int(r.dmarc_result == "pass")
        if r.received_at and (row["last_seen"] is None or r.received_at > row["last_seen"]):
            row["last_seen"] = r.received_at
    result = []
    for row in seen.values():
        verdict = ("passes" if row["pass"] == row["messages"] else
                   "fails" if row["pass"] == 0 else "mixed")
        result.append({**row, "from": ",".join(sorted(row["from"])), "status": verdict,
                       "last_seen": row["last_seen"].isoformat(timespec="seconds")
                       if row["last_seen"] else ""})
    return sorted(result, key=lambda row: (-row["messages"], row["source_ip"]))
