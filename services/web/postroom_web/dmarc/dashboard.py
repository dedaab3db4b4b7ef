"""The DMARC dashboard of one domain and time range: everything its page and its API show.

Two halves, so a page need not hold a database connection while DNS answers:
:func:`load_figures` runs in a ``db`` transaction (``Database.run``) and only
reads :mod:`postroom.store.dmarcstats`; :func:`assemble` looks up source
names and the current record (DNS, bounded) and builds the charts, tables
and readiness. :func:`build_dashboard` does both for callers that do not
mind (the bench, the tests). :func:`dashboard_json` is the API's form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from markupsafe import Markup

from postroom.mailauth.dmarcreport import source_status
from postroom.net.dns import Resolver
from postroom.store import dmarcstats
from postroom.store.db import StoreSession
from postroom.store.dmarcstats import Bucket, Counts, ReporterCounts, SourceCounts, Totals
from postroom_web.dmarc import charts
from postroom_web.dmarc.readiness import (
    CurrentRecord,
    Readiness,
    Thresholds,
    assess,
    current_record,
)
from postroom_web.dmarc.sources import UNKNOWN, SourceName, SourceNames

TEMPLATE = "dmarc/_dashboard.html"  # the fragment rendering a Dashboard (as ``dashboard``)
SOURCES_LIMIT = 100  # per origin: every source above 1% of the mail fits
FAILING_LIMIT = 10
CHART_SOURCES = 10


@dataclass(frozen=True)
class Figures:
    """What the database says about a domain over a range (no DNS yet)."""

    domain: str
    start: datetime
    end: datetime
    bucket: str
    totals: Totals
    buckets: list[Bucket]
    sources: list[SourceCounts]  # both origins, each the busiest first
    failing: list[SourceCounts]  # both origins, each the most failures first
    reporters: list[ReporterCounts]


@dataclass(frozen=True)
class Dashboard:
    """A domain's dashboard: charts (safe SVG), a table of rows under each, the verdict."""

    domain: str
    start: datetime
    end: datetime
    bucket: str  # hour or day
    totals: list[dict[str, Any]]  # one row per origin and one for both
    rates_chart: Markup
    rates_table: list[dict[str, Any]]
    volume_chart: Markup
    volume_table: list[dict[str, Any]]
    sources_chart: Markup
    sources: list[dict[str, Any]]
    failing_sources: list[dict[str, Any]]
    reporters: list[dict[str, Any]]
    readiness: Readiness
    names_pending: int = 0  # addresses whose names were not known in time
    notes: list[str] = field(default_factory=list)


def load_figures(session: StoreSession, domain: str, start: datetime,
                 end: datetime) -> Figures:
    """The domain's figures over [start, end) (:class:`dmarcstats.RangeError` if unusable)."""
    domain = domain.strip().lower().rstrip(".")
    bucket = dmarcstats.bucket_for(start, end)
    busiest, failing = dmarcstats.source_lists(session, domain, start, end,
                                               limit=SOURCES_LIMIT, failing_limit=FAILING_LIMIT)
    return Figures(
        domain, start, end, bucket,
        totals=dmarcstats.totals(session, domain, start, end),
        buckets=dmarcstats.buckets(session, domain, start, end, bucket),
        sources=busiest
        + dmarcstats.reported_sources(session, domain, start, end, limit=SOURCES_LIMIT),
        failing=failing
        + dmarcstats.reported_sources(session, domain, start, end, limit=FAILING_LIMIT,
                                      failing=True),
        reporters=dmarcstats.reporters(session, domain, start, end))


def _rate(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def _rates(counts: Counts) -> dict[str, Any]:
    return {"messages": counts.messages, "spf_pass": counts.spf_pass,
            "dkim_pass": counts.dkim_pass, "dmarc_pass": counts.dmarc_pass,
            "dmarc_fail": counts.dmarc_fail,
            "spf_rate": _rate(counts.spf_pass, counts.messages),
            "dkim_rate": _rate(counts.dkim_pass, counts.messages),
            "dmarc_rate": _rate(counts.dmarc_pass, counts.messages)}


def bucket_label(start: datetime, bucket: str) -> str:
    """How a bucket is named on an axis and in its table: a UTC day or hour."""
    return start.strftime("%Y-%m-%d") if bucket == "day" else start.strftime("%m-%d %H:00")


def _iso(when: datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when is not None else None


def source_row(s: SourceCounts, names: Mapping[str, SourceName]) -> dict[str, Any]:
    """A source's row in the tables and the API."""
    name = names.get(s.source_ip) or SourceName(s.source_ip)
    return {"source_ip": s.source_ip, "origin": s.origin, "ptr": name.ptr_shown,
            "confirmed": name.confirmed, "organisation": name.organisation_shown,
            "header_from": ", ".join(s.header_from), "last_seen": _iso(s.last_seen),
            "status": source_status(s.counts.dmarc_pass, s.counts.messages),
            **_rates(s.counts)}


def reporter_row(r: ReporterCounts) -> dict[str, Any]:
    """A reporting organisation's row in the table and the API."""
    return {"org_name": r.org_name or UNKNOWN, "reports": r.reports,
            "first_begin": _iso(r.first_begin), "last_end": _iso(r.last_end),
            "disposition_none": r.dispositions.get("none", 0),
            "disposition_quarantine": r.dispositions.get("quarantine", 0),
            "disposition_reject": r.dispositions.get("reject", 0), **_rates(r.counts)}


def assemble(figures: Figures, *, names: SourceNames | None = None,
             record: CurrentRecord | None = None, thresholds: Thresholds | None = None,
             report_address: str | None = None) -> Dashboard:
    """Charts, tables and readiness from ``figures``; ``names`` looks up source names within
    its budget (None: names unknown); ``record`` is the domain's current DMARC record."""
    domain, bucket = figures.domain, figures.bucket
    ips = list(dict.fromkeys(s.source_ip for s in [*figures.failing, *figures.sources]))
    found = names.lookup(ips) if names is not None else {}
    known = {ip: n for ip, n in found.items() if n.looked_up}
    labels = [bucket_label(b.start, bucket) for b in figures.buckets]
    combined = [b.combined for b in figures.buckets]
    unit_name = "hour" if bucket == "hour" else "day"

    rates_chart = charts.line_chart(
        f"DMARC, SPF and DKIM pass rates per {unit_name} for {domain}", labels,
        [charts.Series("DMARC", "dmarc", [_rate(c.dmarc_pass, c.messages) for c in combined]),
         charts.Series("SPF aligned", "spf", [_rate(c.spf_pass, c.messages) for c in combined]),
         charts.Series("DKIM aligned", "dkim",
                       [_rate(c.dkim_pass, c.messages) for c in combined])])
    rates_table = [{"bucket": label, "start": _iso(b.start), **_rates(b.combined)}
                   for label, b in zip(labels, figures.buckets, strict=True)]
    volume_chart = charts.stacked_bar_chart(
        f"Messages per {unit_name} for {domain}, passing and failing DMARC", labels,
        [charts.Series("Pass", "pass", [c.dmarc_pass for c in combined]),
         charts.Series("Fail", "fail", [c.dmarc_fail for c in combined])])
    volume_table = [{"bucket": label, "start": _iso(b.start), "seen": b.seen.messages,
                     "reported": b.reported.messages, "messages": b.combined.messages,
                     "dmarc_pass": b.combined.dmarc_pass, "dmarc_fail": b.combined.dmarc_fail}
                    for label, b in zip(labels, figures.buckets, strict=True)]

    sources = sorted((source_row(s, found) for s in figures.sources),
                     key=lambda r: (-r["messages"], r["source_ip"], r["origin"]))
    per_ip: dict[str, Counts] = {}
    for s in figures.sources:
        per_ip[s.source_ip] = per_ip.get(s.source_ip, Counts()) + s.counts
    top = sorted(per_ip.items(), key=lambda item: (-item[1].messages, item[0]))[:CHART_SOURCES]

    def chart_label(ip: str) -> str:
        name = found.get(ip)
        return f"{ip} {name.organisation}" if name and name.organisation else ip

    sources_chart = charts.horizontal_bar_chart(
        f"Busiest sending sources for {domain}, passing and failing DMARC",
        [chart_label(ip) for ip, _ in top],
        [charts.Series("Pass", "pass", [c.dmarc_pass for _, c in top]),
         charts.Series("Fail", "fail", [c.dmarc_fail for _, c in top])])
    failing = sorted((source_row(s, found) for s in figures.failing),
                     key=lambda r: (-r["dmarc_fail"], -r["messages"], r["source_ip"]))
    reporters = [reporter_row(r) for r in figures.reporters]
    t = figures.totals
    totals = [{"origin": "seen", **_rates(t.seen), "sources": t.seen_sources,
               "days": t.seen_days},
              {"origin": "reported", **_rates(t.reported), "reports": t.reports,
               "days": t.reported_days},
              {"origin": "both", **_rates(t.combined)}]
    readiness = assess(domain, t, figures.sources, record, names=known,
                       thresholds=thresholds, report_address=report_address)
    notes = []
    pending = sum(1 for ip in ips if ip not in known) if names is not None else 0
    if pending:
        notes.append(f"{pending} source names are still being looked up; they show on a "
                     "later visit.")
    return Dashboard(domain, figures.start, figures.end, bucket, totals, rates_chart,
                     rates_table, volume_chart, volume_table, sources_chart, sources,
                     failing[:FAILING_LIMIT], reporters, readiness, pending, notes)


def build_dashboard(session: StoreSession, domain: str, start: datetime, end: datetime, *,
                    resolver: Resolver | None = None, names: SourceNames | None = None,
                    thresholds: Thresholds | None = None,
                    report_address: str | None = None) -> Dashboard:
    """:func:`load_figures` then :func:`assemble`. ``resolver`` reads the current DMARC
    record and, when ``names`` (the long-lived cache) is not given, source names for this
    render only; without either, names are unknown and the record is not read."""
    figures = load_figures(session, domain, start, end)
    if names is None and resolver is not None:
        names = SourceNames(resolver)
        try:
            return _finish(figures, names, resolver, thresholds, report_address)
        finally:
            names.close()
    return _finish(figures, names, resolver, thresholds, report_address)


def _finish(figures: Figures, names: SourceNames | None, resolver: Resolver | None,
            thresholds: Thresholds | None, report_address: str | None) -> Dashboard:
    record = current_record(resolver, figures.domain) if resolver is not None else None
    return assemble(figures, names=names, record=record, thresholds=thresholds,
                    report_address=report_address)


def dashboard_json(d: Dashboard) -> dict[str, Any]:
    """The dashboard as the API returns it: the figures and the verdict, no SVG."""
    r = d.readiness
    return {"domain": d.domain, "start": _iso(d.start), "end": _iso(d.end),
            "bucket": d.bucket, "totals": d.totals, "rates": d.rates_table,
            "volume": d.volume_table, "sources": d.sources,
            "failing_sources": d.failing_sources, "reporters": d.reporters,
            "readiness": {"verdict": r.verdict, "reasons": list(r.reasons),
                          "dns_record": r.dns_record, "current_record": r.current_record,
                          "policy": r.policy, "problem_sources": list(r.problem_sources)},
            "names_pending": d.names_pending, "notes": list(d.notes)}
