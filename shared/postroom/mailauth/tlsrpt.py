"""SMTP TLS Reporting (RFC 8460): the ``_smtp._tls`` record, report JSON and mail, ours and others'.

Pure functions of bytes and plain data: the mta records results
(postroom.store.tlsreports), the dmarc service builds and sends the daily
report with :func:`build_report` and :func:`build_message`, and reads the
reports others send with :func:`parse_report_message`, which bounds every
size (the gzip attachment, the JSON after it, the nesting, the arrays).
"""

from __future__ import annotations

import gzip
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any

from postroom.mailauth.dmarcreport import IncomingLimits, ReportError, gunzip_bounded

# RFC 8460 section 4.3 (TLS negotiation, DANE, MTA-STS) and 4.4 (general failures)
RESULT_TYPES = (
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
    "certificate-not-trusted", "validation-failure",
    "tlsa-invalid", "dnssec-invalid", "dane-required",
    "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid",
)
POLICY_TYPES = ("sts", "tlsa", "no-policy-found")
MEDIA_TYPE = "application/tlsrpt+gzip"  # RFC 8460 section 6.4
JSON_MEDIA_TYPE = "application/tlsrpt+json"
MAX_RUA = 10  # a record listing more is abusive; the first ones are used
_MAX_LINES = 1000  # policy-string and mx-host entries of one policy
_ADDRESS = re.compile(r"^[^@\s<>(),;:\"\\]+@[A-Za-z0-9.-]+$")


# --- the _smtp._tls record (RFC 8460 section 3)


@dataclass(frozen=True)
class Record:
    """A parsed TLSRPTv1 record: its ``rua`` URIs, as written."""

    rua: tuple[str, ...]

    @property
    def mailto(self) -> tuple[str, ...]:
        """The mail addresses of its ``mailto:`` URIs (bad ones left out)."""
        found: list[str] = []
        for uri in self.rua:
            if uri.lower().startswith("mailto:"):
                address = urllib.parse.unquote(uri[len("mailto:"):].partition("?")[0]).strip()
                if _ADDRESS.match(address) and address.lower() not in \
                        {a.lower() for a in found}:
                    found.append(address)
        return tuple(found[:MAX_RUA])

    @property
    def https(self) -> tuple[str, ...]:
        return tuple(u for u in self.rua if u.lower().startswith("https:"))[:MAX_RUA]


def parse_record(text: str) -> Record | None:
    """The record, or None unless ``text`` is a well-formed ``v=TLSRPTv1; rua=...`` record."""
    terms = [t.strip() for t in text.split(";")]
    if not terms or terms[0].replace(" ", "") != "v=TLSRPTv1":
        return None
    rua: list[str] = []
    for term in terms[1:]:
        name, sep, value = term.partition("=")
        if not sep:
            if term:
                return None
            continue
        if name.strip().lower() == "rua":
            rua = [u.strip() for u in value.split(",") if u.strip()]
    if not rua:
        return None
    return Record(tuple(rua))


def find_record(texts: Iterable[str]) -> Record | None:
    """The one TLSRPTv1 record among a name's TXT strings (none, or several: None)."""
    found = [r for r in (parse_record(t) for t in texts) if r is not None]
    return found[0] if len(found) == 1 else None


def record_text(rua: str) -> str:
    """The record we suggest publishing: reports to ``rua`` (a mail address)."""
    return f"v=TLSRPTv1; rua=mailto:{rua}"


# --- building our report (RFC 8460 section 4)


@dataclass(frozen=True)
class ResultRow:
    """One session counted for a report: the policy applied and what happened."""

    policy_type: str
    policy_string: tuple[str, ...] | None
    mx_host: str
    sending_ip: str | None
    receiving_ip: str | None
    result_type: str | None  # None: success
    failure_detail: str | None = None
    count: int = 1


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sts_mx(policy_string: Sequence[str] | None) -> list[str]:
    return [line.partition(":")[2].strip() for line in policy_string or ()
            if line.partition(":")[0].strip().lower() == "mx"]


def build_report(*, org_name: str, contact: str, report_id: str, policy_domain: str,
                 begin: datetime, end: datetime, rows: Iterable[ResultRow]) -> dict[str, Any]:
    """The report JSON object (RFC 8460 section 4.4) for one policy domain and day."""
    policies: dict[tuple[str, tuple[str, ...] | None], dict[str, Any]] = {}
    failures: dict[tuple[str, tuple[str, ...] | None], dict[tuple[Any, ...], int]] = {}
    for row in rows:
        key = (row.policy_type, row.policy_string)
        entry = policies.get(key)
        if entry is None:
            policy: dict[str, Any] = {"policy-type": row.policy_type,
                                      "policy-domain": policy_domain}
            if row.policy_string:
                policy["policy-string"] = list(row.policy_string)
            if row.policy_type == "sts" and _sts_mx(row.policy_string):
                policy["mx-host"] = _sts_mx(row.policy_string)
            entry = policies[key] = {"policy": policy, "summary": {
                "total-successful-session-count": 0, "total-failure-session-count": 0}}
            failures[key] = {}
        if row.result_type is None:
            entry["summary"]["total-successful-session-count"] += row.count
            continue
        entry["summary"]["total-failure-session-count"] += row.count
        detail = (row.result_type, row.sending_ip, row.receiving_ip, row.mx_host,
                  row.failure_detail)
        failures[key][detail] = failures[key].get(detail, 0) + row.count
    out = []
    for key, entry in policies.items():
        details = []
        for (kind, sending, receiving, mx, why), count in failures[key].items():
            item: dict[str, Any] = {"result-type": kind, "failed-session-count": count}
            if sending:
                item["sending-mta-ip"] = sending
            if receiving:
                item["receiving-ip"] = receiving
            if mx:
                item["receiving-mx-hostname"] = mx
            if why:
                item["failure-reason-code"] = why[:200]
            details.append(item)
        if details:
            entry["failure-details"] = details
        out.append(entry)
    return {
        "organization-name": org_name,
        "date-range": {"start-datetime": _stamp(begin), "end-datetime": _stamp(end)},
        "contact-info": contact,
        "report-id": report_id,
        "policies": out,
    }


def report_filename(submitter: str, policy_domain: str, begin: datetime, end: datetime,
                    unique: str = "") -> str:
    """``submitter!policy-domain!begin!end[!unique].json.gz`` (RFC 8460 section 5.3)."""
    name = f"{submitter}!{policy_domain}!{int(begin.timestamp())}!{int(end.timestamp())}"
    return f"{name}!{unique}.json.gz" if unique else f"{name}.json.gz"


def build_message(report: Mapping[str, Any], policy_domain: str, *, submitter: str,
                  sender: str, recipients: Sequence[str], message_id: str,
                  now: datetime | None = None) -> bytes:
    """The report mail (RFC 8460 section 5.3): multipart/report; report-type="tlsrpt",
    a short text part and the gzip-compressed JSON as application/tlsrpt+gzip."""
    now = now or datetime.now(UTC)
    msg = EmailMessage(policy=SMTP.clone(max_line_length=998))
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = (f"Report Domain: {policy_domain} Submitter: {submitter} "
                      f"Report-ID: <{report['report-id']}>")
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = message_id
    msg["TLS-Report-Domain"] = policy_domain
    msg["TLS-Report-Submitter"] = submitter
    msg["Auto-Submitted"] = "auto-generated"
    begin = report["date-range"]["start-datetime"]
    end = report["date-range"]["end-datetime"]
    msg.set_content(f"This is an SMTP TLS report (RFC 8460) for {policy_domain} from "
                    f"{submitter}, covering {begin} to {end}.\n", cte="7bit")
    body = json.dumps(report, separators=(",", ":"), sort_keys=False).encode()
    msg.add_attachment(gzip.compress(body, mtime=0), maintype="application",
                       subtype="tlsrpt+gzip",
                       filename=report_filename(submitter, policy_domain,
                                                datetime.fromisoformat(begin),
                                                datetime.fromisoformat(end)))
    # the attachment helpers make multipart/mixed; a report is multipart/report
    msg.replace_header("Content-Type", 'multipart/report; report-type="tlsrpt"; '
                       f'boundary="{msg.get_boundary()}"')
    return msg.as_bytes()


# --- reading the reports others send (RFC 8460 section 5.3), bounded throughout


@dataclass(frozen=True)
class TLSLimits:
    """Caps on one incoming TLS report."""

    max_compressed: int = 5 * 1024 * 1024
    max_json: int = 20 * 1024 * 1024
    max_policies: int = 1000
    max_details: int = 1000  # failure-details per policy
    max_string: int = 1000  # characters kept of any string field


@dataclass(frozen=True)
class IncomingTLSReport:
    """A parsed TLS report: who sent it, which period, the domains and policies it covers."""

    org_name: str
    report_id: str
    contact: str
    begin: datetime
    end: datetime
    domains: tuple[str, ...]
    policies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def successes(self) -> int:
        return sum(p["summary"]["total-successful-session-count"] for p in self.policies)

    @property
    def failures(self) -> int:
        return sum(p["summary"]["total-failure-session-count"] for p in self.policies)


def is_report_message(message: bytes) -> bool:
    """Whether a mail looks like a TLS report (its header fields or its top media type).

    Cheap: reads the header only, so the DMARC report reader can hand the mail over.
    """
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0][:65536].lower()
    return b"tls-report-domain:" in head or b"report-type=\"tlsrpt\"" in head \
        or b"report-type=tlsrpt" in head


def _string(value: Any, limits: TLSLimits, what: str, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ReportError(f"{what} is not a string")
    return value[:limits.max_string]


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 2**53:
        raise ReportError(f"{what} is not a count")
    return value


def _datetime(value: Any, what: str) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise ReportError(f"{what} is not a date-time")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ReportError(f"{what} is not a date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _policy(item: Any, limits: TLSLimits) -> dict[str, Any]:
    """One ``policies`` entry, checked and cut to the fields the RFC names."""
    if not isinstance(item, dict) or not isinstance(item.get("policy"), dict) \
            or not isinstance(item.get("summary"), dict):
        raise ReportError("a policy entry lacks policy or summary")
    raw, summary = item["policy"], item["summary"]
    policy: dict[str, Any] = {
        "policy-type": _string(raw.get("policy-type"), limits, "policy-type"),
        "policy-domain": _string(raw.get("policy-domain"), limits,
                                 "policy-domain").lower().rstrip("."),
    }
    for name in ("policy-string", "mx-host"):
        values = raw.get(name)
        if values is not None:
            if not isinstance(values, list) or len(values) > _MAX_LINES:
                raise ReportError(f"{name} is not a list")
            policy[name] = [_string(v, limits, name) for v in values]
    details = item.get("failure-details", [])
    if not isinstance(details, list):
        raise ReportError("failure-details is not a list")
    if len(details) > limits.max_details:
        raise ReportError(f"more than {limits.max_details} failure-details")
    kept = []
    for detail in details:
        if not isinstance(detail, dict):
            raise ReportError("a failure-details entry is not an object")
        entry: dict[str, Any] = {
            "result-type": _string(detail.get("result-type"), limits, "result-type"),
            "failed-session-count": _count(detail.get("failed-session-count"),
                                           "failed-session-count")}
        for name in ("sending-mta-ip", "receiving-mx-hostname", "receiving-mx-helo",
                     "receiving-ip", "additional-information", "failure-reason-code"):
            if detail.get(name) is not None:
                entry[name] = _string(detail[name], limits, name)
        kept.append(entry)
    out: dict[str, Any] = {"policy": policy, "summary": {
        "total-successful-session-count": _count(
            summary.get("total-successful-session-count"), "total-successful-session-count"),
        "total-failure-session-count": _count(
            summary.get("total-failure-session-count"), "total-failure-session-count")}}
    if kept:
        out["failure-details"] = kept
    return out


def parse_report_json(data: bytes, limits: TLSLimits | None = None) -> IncomingTLSReport:
    """A TLS report from its JSON text; ReportError unless it has the RFC's shape."""
    limits = limits or TLSLimits()
    if len(data) > limits.max_json:
        raise ReportError(f"report larger than {limits.max_json} bytes")
    try:
        doc = json.loads(data)
    except RecursionError:
        raise ReportError("report JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise ReportError("report is not JSON") from None
    if not isinstance(doc, dict):
        raise ReportError("report is not a JSON object")
    dates = doc.get("date-range")
    if not isinstance(dates, dict):
        raise ReportError("report lacks date-range")
    policies = doc.get("policies")
    if not isinstance(policies, list):
        raise ReportError("report lacks policies")
    if len(policies) > limits.max_policies:
        raise ReportError(f"more than {limits.max_policies} policies")
    kept = [_policy(p, limits) for p in policies]
    domains = tuple(dict.fromkeys(p["policy"]["policy-domain"] for p in kept))
    return IncomingTLSReport(
        org_name=_string(doc.get("organization-name"), limits, "organization-name"),
        report_id=_string(doc.get("report-id"), limits, "report-id"),
        contact=_string(doc.get("contact-info"), limits, "contact-info", required=False),
        begin=_datetime(dates.get("start-datetime"), "start-datetime"),
        end=_datetime(dates.get("end-datetime"), "end-datetime"),
        domains=domains, policies=kept)


_TYPES = (MEDIA_TYPE, JSON_MEDIA_TYPE, "application/gzip", "application/x-gzip",
          "application/json", "application/octet-stream")


def parse_report_message(message: bytes, limits: TLSLimits | None = None) -> IncomingTLSReport:
    """The TLS report a report mail carries (gzip or plain JSON attachment)."""
    limits = limits or TLSLimits()
    gunzip_limits = IncomingLimits(max_compressed=limits.max_compressed,
                                   max_xml=limits.max_json)
    msg = message_from_bytes(message, policy=email_policy.default)
    for part in msg.walk():
        if part.is_multipart():
            continue
        name = (part.get_filename() or "").lower()
        if part.get_content_type() not in _TYPES and not name.endswith((".json", ".json.gz")):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload:
            continue
        if len(payload) > limits.max_compressed:
            raise ReportError(f"attachment larger than {limits.max_compressed} bytes")
        if payload[:2] == b"\x1f\x8b":
            payload = gunzip_bounded(payload, gunzip_limits)
        return parse_report_json(payload, limits)
    raise ReportError("no TLS report attachment")
