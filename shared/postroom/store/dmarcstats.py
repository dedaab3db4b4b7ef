"""DMARC figures of one domain over a time range, aggregated in SQL for the web console's dashboard.

Two origins, kept apart in every result: ``seen`` is our own verdicts
(``dmarc_results`` whose reporting domain, the From: domain, is the domain)
and ``reported`` is the rows of the aggregate reports other receivers sent
about it (``dmarc_incoming_reports``, the domain or a subdomain as
:func:`postroom.store.dmarc.reports_on` says, a report counting in the range
its ``begin_at`` falls in). "SPF" and "DKIM" are the DMARC-aligned passes,
"DMARC" a pass of either (RFC 7489 section 4.2), as in the reports
themselves and in :class:`postroom.mailauth.dmarcreport.IncomingRow`.

Every figure is a GROUP BY in PostgreSQL; no function here loads the rows.
The verdict queries use ``ix_dmarc_results_reporting_domain_received_at``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Select,
    Text,
    cast,
    column,
    distinct,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Session

from postroom.store.dmarc import reports_on
from postroom.store.models import DmarcIncomingReport, DmarcResult, Domain

BUCKETS = ("hour", "day")
HOURLY_UP_TO = timedelta(days=2)  # a longer range is drawn by day
MAX_RANGE = timedelta(days=400)  # at most 400 daily buckets in one answer
ORIGINS = ("seen", "reported")


class RangeError(ValueError):
    """A time range the dashboard does not draw: empty, reversed or too long."""


@dataclass(frozen=True)
class Counts:
    """Messages and how many of them passed: aligned SPF, aligned DKIM, DMARC."""

    messages: int = 0
    spf_pass: int = 0
    dkim_pass: int = 0
    dmarc_pass: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.messages + other.messages, self.spf_pass + other.spf_pass,
                      self.dkim_pass + other.dkim_pass, self.dmarc_pass + other.dmarc_pass)

    @property
    def dmarc_fail(self) -> int:
        return self.messages - self.dmarc_pass


@dataclass(frozen=True)
class Totals:
    """A domain's figures over the range, per origin."""

    seen: Counts
    reported: Counts
    seen_sources: int  # distinct source addresses in our verdicts
    seen_days: int  # distinct UTC days with at least one verdict
    reported_days: int  # distinct UTC days some report began on
    reports: int
    first_at: datetime | None  # the earliest verdict or report start
    last_at: datetime | None  # the latest verdict or report end

    @property
    def combined(self) -> Counts:
        return self.seen + self.reported


@dataclass(frozen=True)
class Bucket:
    """One hour or day (UTC) of the range, every bucket present even when empty."""

    start: datetime
    seen: Counts
    reported: Counts

    @property
    def combined(self) -> Counts:
        return self.seen + self.reported


@dataclass(frozen=True)
class SourceCounts:
    """One sending address and what became of its mail, from one origin."""

    source_ip: str
    origin: str  # "seen" or "reported"
    counts: Counts
    last_seen: datetime | None  # a verdict's time, or the end of the latest report
    header_from: tuple[str, ...]  # the From: domains it used (at most a few)


@dataclass(frozen=True)
class ReporterCounts:
    """What one reporting organisation said about the domain in its aggregate reports."""

    org_name: str
    reports: int
    counts: Counts
    dispositions: dict[str, int]  # none / quarantine / reject: what the receiver applied
    first_begin: datetime | None
    last_end: datetime | None


def bucket_for(start: datetime, end: datetime) -> str:
    """``hour`` for a range of up to two days, ``day`` beyond; :class:`RangeError` if unusable."""
    if start.tzinfo is None or end.tzinfo is None:
        raise RangeError("the range's ends must carry a time zone")
    if end <= start:
        raise RangeError("the range ends before it starts")
    if end - start > MAX_RANGE:
        raise RangeError(f"the range is longer than {MAX_RANGE.days} days")
    return "hour" if end - start <= HOURLY_UP_TO else "day"


def _domain(domain: str) -> str:
    return domain.strip().lower().rstrip(".")


# --- our verdicts (dmarc_results)

_SEEN_COUNTS = """
count(*) AS messages,
count(*) FILTER (WHERE spf_aligned) AS spf_pass,
count(*) FILTER (WHERE dkim_aligned) AS dkim_pass,
count(*) FILTER (WHERE dmarc_result = 'pass') AS dmarc_pass"""

# the counts above added up over groups of them
_SUMS = """
sum(messages) AS messages, sum(spf_pass) AS spf_pass, sum(dkim_pass) AS dkim_pass,
sum(dmarc_pass) AS dmarc_pass"""

_SEEN_RANGE = "reporting_domain = :domain AND received_at >= :start AND received_at < :end"


def _counts(row: Any, prefix: str = "") -> Counts:
    m = row._mapping
    return Counts(int(m[prefix + "messages"] or 0), int(m[prefix + "spf_pass"] or 0),
                  int(m[prefix + "dkim_pass"] or 0), int(m[prefix + "dmarc_pass"] or 0))


# --- the aggregate reports' rows (dmarc_incoming_reports.rows, one JSON object each)


def _reports(domain: str, start: datetime, end: datetime) -> Any:
    r = DmarcIncomingReport
    return (select(r.id, r.org_name, r.begin_at, r.end_at, r.rows)
            .where(r.status == "stored", reports_on(domain), r.begin_at >= start,
                   r.begin_at < end)
            .subquery("report"))


def _report_rows(report: Any) -> tuple[Any, Any, Any, Any, Any]:
    """The rows of ``report`` laterally expanded; (row, count, spf, dkim, dmarc) expressions."""
    row = (func.jsonb_array_elements(report.c.rows)
           .table_valued(column("value", JSONB)).lateral("row"))
    value = row.c.value
    count = func.coalesce(cast(value["count"].astext, BigInteger), 0)
    spf = value["spf"].astext == "pass"
    dkim = value["dkim"].astext == "pass"
    # IncomingRow.passes: DMARC passes when either aligned identifier does
    return row, count, spf, dkim, or_(spf, dkim)


def _report_sums(count: Any, spf: Any, dkim: Any, dmarc: Any) -> list[Any]:
    zero = 0
    return [func.coalesce(func.sum(count), zero).label("messages"),
            func.coalesce(func.sum(count).filter(spf), zero).label("spf_pass"),
            func.coalesce(func.sum(count).filter(dkim), zero).label("dkim_pass"),
            func.coalesce(func.sum(count).filter(dmarc), zero).label("dmarc_pass")]


def _params(domain: str, start: datetime, end: datetime) -> dict[str, Any]:
    return {"domain": _domain(domain), "start": start, "end": end}


def totals(session: Session, domain: str, start: datetime, end: datetime) -> Totals:
    """The domain's totals over [start, end), per origin."""
    bucket_for(start, end)
    p = _params(domain, start, end)
    # grouped by (address, day) first: a hash aggregate, then DISTINCT over a few thousand
    # groups instead of a sort of every verdict
    seen = session.execute(text(f"""
        WITH per AS (
            SELECT source_ip, CAST(received_at AT TIME ZONE 'UTC' AS date) AS day,
                   {_SEEN_COUNTS},
                   min(received_at) AS first_at, max(received_at) AS last_at
            FROM dmarc_results WHERE {_SEEN_RANGE} GROUP BY 1, 2)
        SELECT {_SUMS}, count(DISTINCT source_ip) AS sources, count(DISTINCT day) AS days,
               min(first_at) AS first_at, max(last_at) AS last_at
        FROM per"""), p).one()  # noqa: S608 -- constant fragments; values bound
    report = _reports(p["domain"], start, end)
    row, count, spf, dkim, dmarc = _report_rows(report)
    reported = session.execute(
        select(*_report_sums(count, spf, dkim, dmarc),
               func.count(distinct(report.c.id)).label("reports"),
               func.count(distinct(func.date_trunc("day", report.c.begin_at, "UTC")))
               .label("days"),
               func.min(report.c.begin_at).label("first_at"),
               func.max(report.c.end_at).label("last_at"))
        .select_from(report.outerjoin(row, true()))).one()
    firsts = [t for t in (seen.first_at, reported.first_at) if t is not None]
    lasts = [t for t in (seen.last_at, reported.last_at) if t is not None]
    return Totals(seen=_counts(seen), reported=_counts(reported),
                  seen_sources=int(seen.sources), seen_days=int(seen.days),
                  reported_days=int(reported.days), reports=int(reported.reports),
                  first_at=min(firsts) if firsts else None,
                  last_at=max(lasts) if lasts else None)


def buckets(session: Session, domain: str, start: datetime, end: datetime,
            bucket: str | None = None) -> list[Bucket]:
    """Every hour or day (UTC) from the one holding ``start`` to the one holding ``end``'s
    last instant, oldest first, with each origin's counts (zero when nothing happened)."""
    chosen = bucket_for(start, end)
    bucket = bucket or chosen
    if bucket not in BUCKETS:
        raise RangeError(f"bucket must be one of {', '.join(BUCKETS)}")
    if bucket == "hour" and end - start > timedelta(days=31):
        raise RangeError("hourly buckets are drawn for at most 31 days")
    p = _params(domain, start, end)
    report = _reports(p["domain"], start, end)
    row, count, spf, dkim, dmarc = _report_rows(report)
    reported = {b.start: _counts(b) for b in session.execute(
        select(func.date_trunc(bucket, report.c.begin_at, "UTC").label("start"),
               *_report_sums(count, spf, dkim, dmarc))
        .select_from(report.join(row, true())).group_by(text("1")))}
    # the unit is one of BUCKETS, checked above: never text from a caller
    rows = session.execute(text(f"""
        WITH seen AS (
            -- AT TIME ZONE then date_trunc: half the cost of date_trunc(unit, t, 'UTC')
            SELECT date_trunc('{bucket}', received_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                   AS start, {_SEEN_COUNTS}
            FROM dmarc_results WHERE {_SEEN_RANGE} GROUP BY 1)
        SELECT g.start, seen.messages, seen.spf_pass, seen.dkim_pass, seen.dmarc_pass
        FROM generate_series(date_trunc('{bucket}', CAST(:start AS timestamptz), 'UTC'),
                             CAST(:end AS timestamptz) - interval '1 microsecond',
                             interval '1 {bucket}') AS g(start)
        LEFT JOIN seen ON seen.start = g.start
        ORDER BY g.start"""), p)  # noqa: S608 -- constant fragments; values bound
    return [Bucket(r.start, _counts(r), reported.get(r.start, Counts())) for r in rows]


def source_lists(session: Session, domain: str, start: datetime, end: datetime, *,
                 limit: int = 50, failing_limit: int = 10,
                 ) -> tuple[list[SourceCounts], list[SourceCounts]]:
    """Our verdicts per source address, in one pass: the ``limit`` busiest, and the
    ``failing_limit`` whose mail failed DMARC most (most failures, then most mail, first)."""
    p = {**_params(domain, start, end), "limit": max(0, int(limit)),
         "failing_limit": max(0, int(failing_limit))}
    # grouped by (address, From: domain) first, a hash aggregate; the few groups then by
    # address, once for both lists
    rows = session.execute(text(f"""
        WITH per AS (
            SELECT source_ip, header_from, {_SEEN_COUNTS}, max(received_at) AS last_seen
            FROM dmarc_results WHERE {_SEEN_RANGE} GROUP BY 1, 2),
        source AS (
            SELECT host(source_ip) AS source_ip, {_SUMS}, max(last_seen) AS last_seen,
                   (array_agg(header_from ORDER BY messages DESC, header_from))[1:5]
                   AS header_from
            FROM per GROUP BY per.source_ip)
        (SELECT false AS failing, * FROM source
         ORDER BY messages DESC, source_ip LIMIT :limit)
        UNION ALL
        (SELECT true, * FROM source WHERE messages > dmarc_pass
         ORDER BY messages - dmarc_pass DESC, messages DESC, source_ip LIMIT :failing_limit)
        """), p)  # noqa: S608 -- constant fragments; values bound
    lists: tuple[list[SourceCounts], list[SourceCounts]] = ([], [])
    for r in rows:
        lists[int(r.failing)].append(SourceCounts(r.source_ip, "seen", _counts(r), r.last_seen,
                                                  tuple(r.header_from)))
    return lists


def sources(session: Session, domain: str, start: datetime, end: datetime, *,
            limit: int = 50, failing: bool = False) -> list[SourceCounts]:
    """One of :func:`source_lists`: the busiest sources, or (``failing``) the most failing."""
    if failing:
        return source_lists(session, domain, start, end, limit=0, failing_limit=limit)[1]
    return source_lists(session, domain, start, end, limit=limit, failing_limit=0)[0]


def reported_sources(session: Session, domain: str, start: datetime, end: datetime, *,
                     limit: int = 50, failing: bool = False) -> list[SourceCounts]:
    """The aggregate reports' rows per source address, as :func:`sources` orders them."""
    report = _reports(_domain(domain), start, end)
    row, count, spf, dkim, dmarc = _report_rows(report)
    ip = row.c.value["source_ip"].astext
    sums = _report_sums(count, spf, dkim, dmarc)
    fails = func.coalesce(func.sum(count).filter(~dmarc), 0)
    query: Select[Any] = (
        select(ip.label("source_ip"), *sums, func.max(report.c.end_at).label("last_seen"),
               func.array_agg(distinct(row.c.value["header_from"].astext)).label("header_from"))
        .select_from(report.join(row, true())).group_by(ip))
    if failing:
        query = query.having(fails > 0).order_by(fails.desc(), sums[0].desc(), ip)
    else:
        query = query.order_by(sums[0].desc(), ip)
    return [SourceCounts(r.source_ip, "reported", _counts(r), r.last_seen,
                         tuple(r.header_from[:5]))
            for r in session.execute(query.limit(max(0, int(limit))))]


def reporters(session: Session, domain: str, start: datetime,
              end: datetime) -> list[ReporterCounts]:
    """Per reporting organisation: its reports on the domain, their messages and results."""
    report = _reports(_domain(domain), start, end)
    row, count, spf, dkim, dmarc = _report_rows(report)
    disposition = row.c.value["disposition"].astext
    sums = _report_sums(count, spf, dkim, dmarc)
    query = (select(func.coalesce(report.c.org_name, "").label("org_name"),
                    func.count(distinct(report.c.id)).label("reports"), *sums,
                    *[func.coalesce(func.sum(count).filter(disposition == d), 0).label(d)
                      for d in ("none", "quarantine", "reject")],
                    func.min(report.c.begin_at).label("first_begin"),
                    func.max(report.c.end_at).label("last_end"))
             .select_from(report.outerjoin(row, true()))
             .group_by(text("1")).order_by(sums[0].desc(), text("1")))
    return [ReporterCounts(r.org_name, int(r.reports), _counts(r),
                           {d: int(getattr(r, d)) for d in ("none", "quarantine", "reject")},
                           r.first_begin, r.last_end)
            for r in session.execute(query)]


def source_page(session: Session, domain: str, start: datetime, end: datetime, *,
                origin: str | None = None, offset: int = 0,
                limit: int = 50) -> tuple[list[SourceCounts], int]:
    """One page of every source address over the range, of one origin (``seen`` or
    ``reported``) or of both (an address in both is on two rows), the busiest first; and
    how many rows there are in all."""
    if origin is not None and origin not in ORIGINS:
        raise RangeError(f"origin must be one of {', '.join(ORIGINS)}")
    bucket_for(start, end)
    name = _domain(domain)
    parts: list[Any] = []
    if origin in (None, "seen"):
        r = DmarcResult
        parts.append(
            select(func.host(r.source_ip).label("source_ip"),
                   literal_column("'seen'").label("origin"),
                   func.count().label("messages"),
                   func.count().filter(r.spf_aligned).label("spf_pass"),
                   func.count().filter(r.dkim_aligned).label("dkim_pass"),
                   func.count().filter(r.dmarc_result == "pass").label("dmarc_pass"),
                   func.max(r.received_at).label("last_seen"),
                   cast(func.array_agg(distinct(r.header_from)), ARRAY(Text))
                   .label("header_from"))
            .where(r.reporting_domain == name, r.received_at >= start, r.received_at < end)
            .group_by(r.source_ip))
    if origin in (None, "reported"):
        report = _reports(name, start, end)
        row, count, spf, dkim, dmarc = _report_rows(report)
        ip = row.c.value["source_ip"].astext
        parts.append(
            select(ip.label("source_ip"), literal_column("'reported'").label("origin"),
                   *_report_sums(count, spf, dkim, dmarc),
                   func.max(report.c.end_at).label("last_seen"),
                   cast(func.array_agg(distinct(row.c.value["header_from"].astext)),
                        ARRAY(Text)).label("header_from"))
            .select_from(report.join(row, true())).group_by(ip))
    combined: Any = parts[0] if len(parts) == 1 else union_all(*parts)
    every: Any = combined.subquery("source")
    query = (select(every, func.count().over().label("total"))
             .order_by(every.c.messages.desc(), every.c.source_ip, every.c.origin)
             .offset(max(0, int(offset))).limit(max(0, int(limit))))
    rows = session.execute(query).all()
    if not rows and offset > 0:
        total = int(session.execute(select(func.count()).select_from(every)).scalar_one())
    else:
        total = int(rows[0].total) if rows else 0
    return [SourceCounts(r.source_ip, r.origin, _counts(r), r.last_seen,
                         tuple(sorted(h for h in r.header_from if h)[:5]))
            for r in rows], total


def has_data(session: Session, domain: str) -> bool:
    """Whether any verdict or stored report is about ``domain`` (one index probe each)."""
    name = _domain(domain)
    seen = session.execute(select(literal(1)).where(
        select(DmarcResult.id).where(DmarcResult.reporting_domain == name).exists())).first()
    if seen is not None:
        return True
    r = DmarcIncomingReport
    return session.execute(select(literal(1)).where(
        select(r.id).where(r.status == "stored", reports_on(name)).exists())).first() is not None


@dataclass(frozen=True)
class DomainWithData:
    """A domain the dashboard can show: ours (a local domain) or only seen in From:."""

    domain: str
    local: bool
    seen: bool  # has verdicts
    reported: bool  # has stored aggregate reports


def domains_with_data(session: Session, *, local_only: bool = False) -> list[DomainWithData]:
    """Every domain with verdicts or stored reports, local domains first, then by name.

    The distinct reporting domains are read by skipping through the
    (reporting_domain, received_at) index, one probe per domain, not by
    scanning every verdict.
    """
    seen = {r[0] for r in session.execute(text("""
        WITH RECURSIVE d(name) AS (
            (SELECT reporting_domain FROM dmarc_results ORDER BY reporting_domain LIMIT 1)
            UNION ALL
            SELECT (SELECT reporting_domain FROM dmarc_results
                    WHERE reporting_domain > d.name ORDER BY reporting_domain LIMIT 1)
            FROM d WHERE d.name IS NOT NULL)
        SELECT name FROM d WHERE name IS NOT NULL"""))}
    r = DmarcIncomingReport
    reported = {str(name) for name in session.execute(
        select(r.domain).where(r.status == "stored", r.domain.is_not(None)).distinct()).scalars()}
    local = set(session.execute(select(Domain.name)).scalars())

    def is_local(name: str) -> bool:
        return any(name == d or name.endswith("." + d) for d in local)

    names = sorted(seen | reported, key=lambda n: (not is_local(n), n))
    return [DomainWithData(n, is_local(n), n in seen, n in reported)
            for n in names if is_local(n) or not local_only]


__all__ = ["BUCKETS", "Bucket", "Counts", "DomainWithData", "RangeError", "ReporterCounts",
           "SourceCounts", "Totals", "bucket_for", "buckets", "domains_with_data", "has_data",
           "reported_sources", "reporters", "source_lists", "source_page", "sources", "totals"]
