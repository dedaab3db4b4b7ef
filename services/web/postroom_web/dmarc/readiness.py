"""Is a domain ready for p=quarantine or p=reject? A verdict, its reasons, the record to publish.

Pure: it reads the figures :mod:`postroom.store.dmarcstats` gives, the
names :mod:`postroom_web.dmarc.sources` found and the domain's current
record (:func:`current_record`, the only DNS here). The rules, with their
thresholds in :class:`Thresholds` and their reasons in docs/web.md:

* no verdict and no report in the range: ``no_data``;
* no usable record, too few messages or too few days: ``not_ready``;
* a *source with volume* sends at least ``source_min_messages`` and
  ``source_min_share`` of the mail; it *looks legitimate* when at least
  ``legit_min_pass`` of its mail passes DMARC or it is a known sending
  service (a forward-confirmed reverse name of a well-known organisation).
  One below ``quarantine_pass`` makes ``not_ready``; one below
  ``reject_pass``, or legitimate mail less than ``reject_dkim`` DKIM-aligned
  (SPF alone fails once mail is forwarded), make ``ready_for_quarantine``;
  otherwise ``ready_for_reject``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from postroom.mailauth import dnsrecords
from postroom.mailauth.dmarcdiscovery import Discoverer, normalise
from postroom.mailauth.dmarcrecord import DMARCRecord
from postroom.net.dns import DNSTempError, Resolver
from postroom.store.dmarcstats import Counts, SourceCounts, Totals
from postroom_web.dmarc.sources import FRIENDLY, SourceName

VERDICTS = ("ready_for_reject", "ready_for_quarantine", "not_ready", "no_data")
_RANK = {"none": 0, "quarantine": 1, "reject": 2}
_TARGET = {"ready_for_reject": "reject", "ready_for_quarantine": "quarantine"}
_KNOWN_SENDERS = frozenset(FRIENDLY.values())
# a term kept from the current record: printable ASCII without quotes or backslashes, so
# the zone line stays one well-formed TXT string
_SAFE_TERM = re.compile(r"[!#-\[\]-~ ]{1,200}")
_MAX_NAMED = 5  # sources named in the reasons; the table lists all


@dataclass(frozen=True)
class Thresholds:
    """The numbers behind the verdict (docs/web.md explains each)."""

    min_messages: int = 100
    min_days: int = 14
    source_min_messages: int = 10
    source_min_share: float = 0.01
    legit_min_pass: float = 0.5
    quarantine_pass: float = 0.95
    reject_pass: float = 0.99
    reject_dkim: float = 0.90


@dataclass(frozen=True)
class CurrentRecord:
    """The DMARC record applying to a domain, as DNS serves it now."""

    domain: str
    policy_domain: str | None = None  # where it was found: the domain or its organization's
    record: DMARCRecord | None = None
    error: str | None = None  # malformed: receivers ignore it
    unavailable: bool = False  # DNS did not answer

    @property
    def text(self) -> str | None:
        return self.record.raw if self.record is not None else None


def current_record(resolver: Resolver, domain: str) -> CurrentRecord:
    """The record for ``domain`` found as receivers find it (RFC 7489 6.6.3, by PSL)."""
    domain = normalise(domain)
    try:
        found = Discoverer(resolver).discover(domain)
    except DNSTempError:
        return CurrentRecord(domain, unavailable=True)
    return CurrentRecord(domain, found.policy_domain, found.record, found.error)


@dataclass(frozen=True)
class Readiness:
    """The verdict, why (plain sentences), and the zone line to publish next (None: none)."""

    verdict: str
    reasons: tuple[str, ...]
    dns_record: str | None
    current_record: str | None = None
    policy: str | None = None  # the current p=
    problem_sources: tuple[str, ...] = field(default=())  # addresses holding the verdict back


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "\u2014"


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _merge(sources: Iterable[SourceCounts]) -> dict[str, Counts]:
    merged: dict[str, Counts] = {}
    for s in sources:
        merged[s.source_ip] = merged.get(s.source_ip, Counts()) + s.counts
    return merged


def _describe(ip: str, names: Mapping[str, SourceName]) -> str:
    name = names.get(ip)
    if name is None or not name.ptr:
        return ip
    extra = name.ptr + (f", {name.organisation}" if name.organisation else "")
    return f"{ip} ({extra})"


def next_record(current: DMARCRecord | None, policy: str, domain: str,
                report_address: str | None = None) -> str:
    """The record's value with ``p=policy``, every other tag of ``current`` kept in order."""
    if current is None:
        base = dnsrecords.dmarc_starter(domain, report_address)
    else:
        base = current.raw
    terms = [t.strip() for t in base.split(";")[1:] if t.strip()]
    kept = [t for t in terms if _SAFE_TERM.fullmatch(t)
            and t.partition("=")[0].strip().lower() != "p"]
    return "; ".join(["v=DMARC1", f"p={policy}", *kept])


def assess(domain: str, totals: Totals, sources: Sequence[SourceCounts],
           current: CurrentRecord | None, *, names: Mapping[str, SourceName] | None = None,
           thresholds: Thresholds | None = None,
           report_address: str | None = None) -> Readiness:
    """The readiness of ``domain`` from its figures (both origins) and its current record."""
    th = thresholds or Thresholds()
    names = names or {}
    domain = normalise(domain)
    reasons: list[str] = []
    record = current.record if current else None
    policy = record.p if record else None
    raw = record.raw if record else None
    total = totals.combined
    days = max(totals.seen_days, totals.reported_days)

    def verdict_of(verdict: str, problems: Sequence[str] = ()) -> Readiness:
        return Readiness(verdict, tuple(reasons), _record_line(verdict), raw, policy,
                         tuple(problems))

    def _record_line(verdict: str) -> str | None:
        if current is None or current.unavailable:
            return None
        if record is None:
            return dnsrecords.dmarc_record(domain, next_record(None, "none", domain,
                                                               report_address))
        target = _TARGET.get(verdict)
        if target is None or _RANK[target] <= _RANK[record.p]:
            return None
        return dnsrecords.dmarc_record(domain, next_record(record, target, domain))

    # --- the record
    if current is None:
        reasons.append(f"The DMARC record of {domain} was not looked up; the record to "
                       "publish is shown when it is.")
    elif current.unavailable:
        reasons.append(f"The DMARC record of {domain} could not be read from DNS now; "
                       "the record to publish is shown once it can be.")
    elif current.error is not None:
        reasons.append(f"The DMARC record at _dmarc.{current.policy_domain} is malformed "
                       f"({current.error}): receivers ignore it. Publish a valid p=none "
                       "record with rua= first.")
    elif record is None:
        reasons.append(f"{domain} has no DMARC record: receivers send no aggregate reports. "
                       "Publish a p=none record with rua= first and collect reports.")
    else:
        if current.policy_domain and current.policy_domain != domain:
            reasons.append(f"{domain} has no record of its own; the one at "
                           f"_dmarc.{current.policy_domain} applies (its "
                           f"{'sp' if record.sp else 'p'}= governs {domain}). The record "
                           f"below is {domain}'s own, which then takes precedence.")
        if record.pct < 100:
            reasons.append(f"pct={record.pct}: the policy applies to {record.pct}% of failing "
                           "mail only; the rest is treated as one step less strict. Raise "
                           "it to 100 before the next step.")
        if record.sp is not None and _RANK[record.sp] < _RANK[record.p]:
            reasons.append(f"sp={record.sp} leaves subdomains less protected than "
                           f"p={record.p}; tighten sp= once subdomains' mail passes too.")
        if not record.rua:
            reasons.append("The record has no rua=: receivers send no aggregate reports, so "
                           "only the mail we receive ourselves is measured. Add rua=.")

    # --- enough data?
    if total.messages == 0:
        reasons.insert(0, f"No DMARC verdicts or aggregate reports for {domain} in this "
                          "range.")
        return verdict_of("no_data")
    # a record DNS could not give now leaves the verdict to the figures (and no record to
    # publish); a missing or malformed one means receivers apply nothing and report nothing
    unusable = current is not None and not current.unavailable and record is None
    short = []
    if total.messages < th.min_messages:
        short.append(f"only {total.messages:,} messages were measured (at least "
                     f"{th.min_messages:,} are needed)")
    if days < th.min_days:
        short.append(f"they span {days} day{'s' if days != 1 else ''} (at least "
                     f"{th.min_days} are needed, to see weekly and monthly senders)")
    if short:
        reasons.append("Not enough data: " + " and ".join(short) + ".")

    # --- sources
    merged = _merge(sources)
    floor = max(th.source_min_messages, th.source_min_share * total.messages)
    legit: list[tuple[str, Counts]] = []
    suspicious: list[tuple[str, Counts]] = []
    for ip, counts in sorted(merged.items(), key=lambda item: -item[1].messages):
        if counts.messages < floor:
            continue
        known = names.get(ip)
        known_sender = known is not None and known.organisation in _KNOWN_SENDERS
        if _rate(counts.dmarc_pass, counts.messages) >= th.legit_min_pass or known_sender:
            legit.append((ip, counts))
        else:
            suspicious.append((ip, counts))
    blocking = [(ip, c) for ip, c in legit
                if _rate(c.dmarc_pass, c.messages) < th.quarantine_pass]
    short_of_reject = [(ip, c) for ip, c in legit
                       if th.quarantine_pass <= _rate(c.dmarc_pass, c.messages) < th.reject_pass]
    for label, group, step in (("quarantine", blocking, th.quarantine_pass),
                               ("reject", short_of_reject, th.reject_pass)):
        for ip, c in group[:_MAX_NAMED]:
            reasons.append(f"{_describe(ip, names)} sent {c.messages:,} messages and "
                           f"{_pct(c.dmarc_pass, c.messages)} pass DMARC (SPF aligned "
                           f"{_pct(c.spf_pass, c.messages)}, DKIM aligned "
                           f"{_pct(c.dkim_pass, c.messages)}): below the {step:.0%} needed "
                           f"for p={label}. Authorise it in SPF or have it sign with "
                           "your domain's DKIM key.")
        if len(group) > _MAX_NAMED:
            reasons.append(f"{len(group) - _MAX_NAMED} more such sources are in the table.")
    legit_total = sum((c for _, c in legit), Counts())
    dkim_short = legit_total.messages > 0 and \
        _rate(legit_total.dkim_pass, legit_total.messages) < th.reject_dkim
    if dkim_short:
        reasons.append(f"Only {_pct(legit_total.dkim_pass, legit_total.messages)} of the mail "
                       "from legitimate-looking sources has an aligned DKIM signature (at "
                       f"least {th.reject_dkim:.0%} for p=reject): SPF alone fails when mail "
                       "is forwarded, and forwarded mail would be rejected.")
    if suspicious:
        spoofed = sum(c.messages for _, c in suspicious)
        reasons.append(f"{len(suspicious)} source{'s' if len(suspicious) != 1 else ''} that "
                       f"mostly fail and are not known senders sent {spoofed:,} messages "
                       f"({_pct(spoofed, total.messages)}): spoofing or unknown forwarders, "
                       "what a stricter policy stops. Check that none is yours.")

    problems = [ip for ip, _ in blocking + short_of_reject]
    if unusable or short or blocking:
        verdict = "not_ready"
    elif short_of_reject or dkim_short:
        verdict = "ready_for_quarantine"
    else:
        verdict = "ready_for_reject"
    if verdict != "not_ready":
        reasons.insert(0, f"{_pct(total.dmarc_pass, total.messages)} of {total.messages:,} "
                          f"messages over {days} days pass DMARC, and every legitimate-looking "
                          "source with volume passes enough.")
    if record is not None and verdict in _TARGET and _RANK[_TARGET[verdict]] <= _RANK[record.p]:
        reasons.append(f"The record already says p={record.p}: nothing to change.")
    elif record is not None and verdict == "not_ready" and record.p != "none" and blocking:
        reasons.append(f"The record says p={record.p} while legitimate-looking mail fails: "
                       "that mail is being "
                       f"{'rejected' if record.p == 'reject' else 'sent to spam'} now.")
    return verdict_of(verdict, problems)
