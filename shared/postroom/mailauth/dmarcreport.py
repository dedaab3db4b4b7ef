"""DMARC aggregate report documents (RFC 7489 7.2, Appendix C): ours built, others' parsed.

Pure functions of stored verdicts (:class:`postroom.store.dmarc.DmarcRecord`):
no DNS and no SQL here, so the dmarc service (which sends reports) and
`postroom dmarc report` (which shows them) build the same thing. A verdict's
``detail`` holds what the table's columns do not: every DKIM signature
(``dkim``), the SPF scope (``spf_scope``), the override (``override``) and the
policy record in force (``record``).

The XML has no namespace and carries ``<version>1.0</version>``, as the large
reporters send it; every element RFC 7489's schema requires is present.

Incoming reports (other receivers' reports about our domains) are parsed by
:func:`parse_report_message`, a pure function of the mail's bytes with caps on
every stage (see the section at the end).
"""

from __future__ import annotations

import gzip
import io
import ipaddress
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any
from xml.etree import ElementTree as ET

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from postroom.store.dmarc import DmarcRecord

XML_VERSION = "1.0"

# When reports are sent (the dmarc service) and how long their spool rows must live (the
# mta's retention) follow one rule, kept here because the services never import each other:
# a period is reported once it ended at least its settle time ago, and only the last whole
# period ever is; the settle time is a tenth of the interval, at most MAX_REPORT_SETTLE.
MAX_REPORT_SETTLE = 60.0


def report_settle(interval: float) -> float:
    """Seconds the dmarc service waits after a period ends for the period's last verdicts."""
    return min(MAX_REPORT_SETTLE, interval / 10)


def report_row_lifetime(interval: float) -> float:
    """Least age (seconds) a report's spool row must reach before it may be purged.

    The row makes a report once per (domain, period): the period stays the last
    whole one for an interval (plus the settle delay) after it ended, so two
    intervals plus the longest settle cover it with a whole period to spare.
    """
    return 2 * interval + MAX_REPORT_SETTLE
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


def source_status(passed: int, messages: int) -> str:
    """A source's DMARC status from its counts: ``passes`` (all), ``fails`` (none) or ``mixed``."""
    return "passes" if passed == messages else "fails" if passed == 0 else "mixed"


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
        result.append({**row, "from": ",".join(sorted(row["from"])),
                       "status": source_status(row["pass"], row["messages"]),
                       "last_seen": row["last_seen"].isoformat(timespec="seconds")
                       if row["last_seen"] else ""})
    return sorted(result, key=lambda row: (-row["messages"], row["source_ip"]))


# --- incoming aggregate reports (from other receivers, about our domains)
#
# Hostile input: the attachment is untrusted, so every stage is bounded. The
# compressed attachment is capped, decompression stops as soon as the output
# passes its cap or a suspicious ratio (a "bomb"), a zip may hold only a few
# members, and the XML is parsed by defusedxml with DTDs forbidden, so entity
# expansion (billion laughs) and external entities never happen.


class ReportError(ValueError):
    """An incoming report was refused: not a report, too big, a bomb, or unsafe XML."""


@dataclass(frozen=True)
class IncomingLimits:
    """Caps applied to one incoming report (defaults suit every real reporter's daily files)."""

    max_compressed: int = 10 * 1024 * 1024  # the attachment as sent
    max_xml: int = 50 * 1024 * 1024  # the XML after decompression
    max_ratio: int = 200  # uncompressed / compressed, checked past 1 MiB of output
    max_members: int = 4  # zip members (reports carry one)
    max_records: int = 100_000


_RATIO_FLOOR = 1024 * 1024
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class IncomingRow:
    """One <record> of an incoming report: a source and what the reporter saw of it."""

    source_ip: str
    count: int
    disposition: str
    dkim: str  # DMARC-aligned DKIM: pass or fail
    spf: str  # DMARC-aligned SPF: pass or fail
    header_from: str
    envelope_from: str = ""
    dkim_results: tuple[Auth, ...] = ()
    spf_results: tuple[Auth, ...] = ()
    reasons: tuple[str, ...] = ()

    @property
    def passes(self) -> bool:
        return self.dkim == "pass" or self.spf == "pass"

    def to_json(self) -> dict[str, Any]:
        return {"source_ip": self.source_ip, "count": self.count,
                "disposition": self.disposition, "dkim": self.dkim, "spf": self.spf,
                "header_from": self.header_from, "envelope_from": self.envelope_from,
                "dkim_results": [list(a) for a in self.dkim_results],
                "spf_results": [list(a) for a in self.spf_results],
                "reasons": list(self.reasons)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IncomingRow:
        return cls(source_ip=str(data["source_ip"]), count=int(data["count"]),
                   disposition=str(data["disposition"]), dkim=str(data["dkim"]),
                   spf=str(data["spf"]), header_from=str(data["header_from"]),
                   envelope_from=str(data.get("envelope_from") or ""),
                   dkim_results=tuple(tuple(a) for a in data.get("dkim_results", ())),  # type: ignore[misc]
                   spf_results=tuple(tuple(a) for a in data.get("spf_results", ())),  # type: ignore[misc]
                   reasons=tuple(data.get("reasons", ())))


@dataclass(frozen=True)
class IncomingReport:
    """A parsed aggregate report: who sent it, about which domain and period, and its rows."""

    org_name: str
    email: str
    report_id: str
    domain: str  # policy_published/domain
    begin: datetime
    end: datetime
    policy: dict[str, str] = field(default_factory=dict)
    rows: tuple[IncomingRow, ...] = ()


def _gunzip(data: bytes, limits: IncomingLimits) -> bytes:
    inflater = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header, auto-detected
    out = bytearray()
    pending = data
    while pending or not inflater.eof:
        # max_length bounds each step, so a bomb never inflates more than one chunk past a cap
        chunk = inflater.decompress(pending, _CHUNK)
        pending = inflater.unconsumed_tail
        out += chunk
        _check_growth(len(out), len(data), limits)
        if not chunk and not pending:
            break
    if not inflater.eof:
        raise ReportError("truncated gzip data")
    return bytes(out)


def _check_growth(produced: int, compressed: int, limits: IncomingLimits) -> None:
    if produced > limits.max_xml:
        raise ReportError(f"report expands past {limits.max_xml} bytes")
    if produced > _RATIO_FLOOR and produced > limits.max_ratio * max(compressed, 1):
        raise ReportError(f"report compression ratio above {limits.max_ratio}")


def _unzip(data: bytes, limits: IncomingLimits) -> bytes:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ReportError(f"unreadable zip: {exc}") from None
    if len(members) > limits.max_members:
        raise ReportError(f"zip holds {len(members)} members (at most {limits.max_members})")
    xml = [m for m in members if m.filename.lower().endswith(".xml") and not m.is_dir()]
    if len(xml) != 1:
        raise ReportError("zip must hold exactly one .xml report")
    member = xml[0]
    # the declared size may lie: it only refuses early; the read below is what bounds memory
    if member.file_size > limits.max_xml:
        raise ReportError(f"report expands past {limits.max_xml} bytes")
    out = bytearray()
    try:
        with archive.open(member) as stream:
            while chunk := stream.read(_CHUNK):
                out += chunk
                _check_growth(len(out), len(data), limits)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
            EOFError, OSError) as exc:
        raise ReportError(f"unreadable zip member: {exc}") from None
    return bytes(out)


def _xml_of(payload: bytes, limits: IncomingLimits) -> bytes:
    """The report XML from an attachment, whatever its packing (sniffed, not trusted by name)."""
    if len(payload) > limits.max_compressed:
        raise ReportError(f"attachment larger than {limits.max_compressed} bytes")
    if payload[:2] == b"\x1f\x8b":
        return _gunzip(payload, limits)
    if payload[:4] == b"PK\x03\x04":
        return _unzip(payload, limits)
    if payload.lstrip()[:1] == b"<":
        if len(payload) > limits.max_xml:
            raise ReportError(f"report larger than {limits.max_xml} bytes")
        return payload
    raise ReportError("attachment is neither gzip, zip nor XML")


_REPORT_TYPES = ("application/gzip", "application/x-gzip", "application/zip",
                 "application/x-zip-compressed", "application/xml", "text/xml",
                 "application/octet-stream")
_REPORT_SUFFIXES = (".xml", ".xml.gz", ".gz", ".zip")


def extract_report_xml(message: bytes, limits: IncomingLimits | None = None) -> bytes:
    """The aggregate report XML carried by a report mail (RFC 7489 7.2.1.1)."""
    limits = limits or IncomingLimits()
    msg = message_from_bytes(message, policy=email_policy.default)
    for part in msg.walk():
        if part.is_multipart():
            continue
        name = (part.get_filename() or "").lower()
        if part.get_content_type() not in _REPORT_TYPES and not name.endswith(_REPORT_SUFFIXES):
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes) and payload:
            return _xml_of(payload, limits)
    raise ReportError("no aggregate report attachment")


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]  # DMARCbis reports use a namespace; RFC 7489 ones do not


def _child(element: Any, name: str) -> Any:
    for child in element:
        if isinstance(child.tag, str) and _local(child.tag) == name:
            return child
    return None


def _children(element: Any, name: str) -> list[Any]:
    return [c for c in element if isinstance(c.tag, str) and _local(c.tag) == name]


def _text(element: Any, path: str, default: str = "") -> str:
    for name in path.split("/"):
        if element is None:
            return default
        element = _child(element, name)
    if element is None or element.text is None:
        return default
    return str(element.text).strip()


def _required(element: Any, path: str) -> str:
    value = _text(element, path)
    if not value:
        raise ReportError(f"report has no {path}")
    return value


def _timestamp(element: Any, path: str) -> datetime:
    try:
        return datetime.fromtimestamp(int(_required(element, path)), UTC)
    except (ValueError, OverflowError, OSError):
        raise ReportError(f"report {path} is not a Unix time") from None


def _auth(element: Any, kind: str, middle: str) -> tuple[Auth, ...]:
    return tuple((_text(a, "domain").lower(), _text(a, middle), _text(a, "result", "none").lower())
                 for a in _children(element, kind) if a is not None)


def _row(record: Any) -> IncomingRow:
    row = _child(record, "row")
    if row is None:
        raise ReportError("record without row")
    source = _required(row, "source_ip")
    try:
        source = str(ipaddress.ip_address(source))
    except ValueError:
        raise ReportError(f"record source_ip {source[:64]!r} is not an address") from None
    try:
        count = int(_required(row, "count"))
    except ValueError:
        raise ReportError("record count is not a number") from None
    if count < 0:
        raise ReportError("record count is negative")
    evaluated = _child(row, "policy_evaluated")
    auth = _child(record, "auth_results")
    return IncomingRow(
        source_ip=source, count=count,
        disposition=_text(evaluated, "disposition", "none").lower(),
        dkim=_text(evaluated, "dkim", "fail").lower(), spf=_text(evaluated, "spf", "fail").lower(),
        header_from=_text(record, "identifiers/header_from").lower().rstrip("."),
        envelope_from=_text(record, "identifiers/envelope_from").lower(),
        dkim_results=_auth(auth, "dkim", "selector") if auth is not None else (),
        spf_results=_auth(auth, "spf", "scope") if auth is not None else (),
        reasons=tuple(_text(r, "type") for r in _children(evaluated, "reason"))
        if evaluated is not None else ())


def parse_report_xml(xml: bytes, limits: IncomingLimits | None = None) -> IncomingReport:
    """An aggregate report document, parsed without DTDs or entities (defusedxml)."""
    limits = limits or IncomingLimits()
    if len(xml) > limits.max_xml:
        raise ReportError(f"report larger than {limits.max_xml} bytes")
    try:
        root = SafeET.fromstring(xml, forbid_dtd=True, forbid_entities=True,
                                 forbid_external=True)
    except DefusedXmlException as exc:
        raise ReportError(f"unsafe XML refused: {type(exc).__name__}") from None
    except ET.ParseError as exc:
        raise ReportError(f"malformed XML: {exc}") from None
    if _local(root.tag) != "feedback":
        raise ReportError("root element is not feedback")
    records = _children(root, "record")
    if len(records) > limits.max_records:
        raise ReportError(f"report has more than {limits.max_records} records")
    published = _child(root, "policy_published")
    if published is None:
        raise ReportError("report has no policy_published")
    policy = {_local(c.tag): (c.text or "").strip()[:64] for c in published
              if isinstance(c.tag, str) and _local(c.tag) != "domain"}
    begin = _timestamp(root, "report_metadata/date_range/begin")
    end = _timestamp(root, "report_metadata/date_range/end")
    return IncomingReport(
        org_name=_required(root, "report_metadata/org_name")[:255],
        email=_text(root, "report_metadata/email")[:255],
        report_id=_required(root, "report_metadata/report_id")[:255],
        domain=_required(published, "domain").lower().rstrip(".")[:255],
        begin=begin, end=end, policy=policy, rows=tuple(_row(r) for r in records))


def parse_report_message(message: bytes, limits: IncomingLimits | None = None) -> IncomingReport:
    """A report mail's attachment, unpacked and parsed; :class:`ReportError` when refused."""
    limits = limits or IncomingLimits()
    return parse_report_xml(extract_report_xml(message, limits), limits)


def incoming_sources(rows: Iterable[tuple[str, IncomingRow]]) -> list[dict[str, Any]]:
    """Per source address, from (reporter, row) pairs: message counts and whether DMARC passes."""
    seen: dict[str, dict[str, Any]] = {}
    for reporter, r in rows:
        row = seen.setdefault(r.source_ip, {"source_ip": r.source_ip, "reporters": set(),
                                            "from": set(), "messages": 0, "pass": 0,
                                            "spf_aligned": 0, "dkim_aligned": 0})
        row["reporters"].add(reporter)
        row["from"].add(r.header_from)
        row["messages"] += r.count
        row["pass"] += r.count if r.passes else 0
        row["spf_aligned"] += r.count if r.spf == "pass" else 0
        row["dkim_aligned"] += r.count if r.dkim == "pass" else 0
    result = []
    for row in seen.values():
        result.append({**row, "reporters": ",".join(sorted(row["reporters"])),
                       "from": ",".join(sorted(row["from"])),
                       "status": source_status(row["pass"], row["messages"])})
    return sorted(result, key=lambda row: (-row["messages"], row["source_ip"]))
