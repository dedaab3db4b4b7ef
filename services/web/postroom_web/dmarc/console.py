"""What the DMARC pages and API share: who may see a domain, the time range asked for, and the
process's one source-name cache and DNS pool.

A domain's DMARC data is shown to global admins for any domain with data (ours, or a
sender domain only seen in the From: of mail we received), and to a domain manager only
for the domains it manages and their subdomains: a manager never sees the senders that
wrote to its users from other domains (that is mail about other people's domains).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from postroom.config import Settings
from postroom.interfaces import ReactorThreads, defer_to_pool
from postroom.metrics import Metrics
from postroom.net.dns import Resolver
from postroom.store import dmarcstats
from postroom.store import domains as store_domains
from postroom.store.addresses import normalise_domain
from postroom.store.db import StoreSession
from postroom.store.dmarcstats import RangeError
from postroom.store.webaccess import Principal
from postroom_web.dmarc.dashboard import Dashboard, Figures, assemble, load_figures
from postroom_web.dmarc.readiness import current_record
from postroom_web.dmarc.sources import SourceName, SourceNames

# the range picker's choices; a custom range is from one UTC day to another (both included)
RANGES: dict[str, timedelta] = {"24h": timedelta(hours=24), "7d": timedelta(days=7),
                                "30d": timedelta(days=30)}
DEFAULT_RANGE = "7d"
# the current DMARC record is looked up within this many seconds (then: "not read")
RECORD_BUDGET = 2.0
LOOKUP_THREADS = 4


class Hidden(Exception):
    """The caller may not see the domain's DMARC data (403, whether or not there is any)."""


class NoData(Exception):
    """Not one of our domains and no verdict or report about it (404)."""


def may_see(principal: Principal, domain: str) -> bool:
    """Admins see every domain; a manager its domains and their subdomains."""
    if principal.is_admin:
        return True
    return any(domain == d or domain.endswith("." + d) for d in principal.domains)


def is_ours(session: StoreSession, domain: str) -> bool:
    """``domain`` is one of our domains or a subdomain of one."""
    labels = domain.split(".")
    return any(store_domains.is_local_domain(session, ".".join(labels[i:]))
               for i in range(len(labels) - 1))


@dataclass(frozen=True)
class Visible:
    domain: str   # normalised
    local: bool   # ours (or a subdomain of ours)


def visible_domain(session: StoreSession, principal: Principal, domain: str) -> Visible:
    """The normalised ``domain`` when the caller may see its data and there is a dashboard
    of it to show: :class:`Hidden` when it may not (checked before anything is read, so no
    one learns which domains have data), :class:`NoData` when it is not ours and has none."""
    try:
        name = normalise_domain(domain)
    except ValueError:
        raise NoData(domain[:255]) from None
    if not may_see(principal, name):
        raise Hidden(name)
    local = is_ours(session, name)
    if not local and not dmarcstats.has_data(session, name):
        raise NoData(name)
    return Visible(name, local)


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def api_range(start: datetime | None, end: datetime | None, now: datetime) -> tuple[datetime,
                                                                                      datetime]:
    """The API's ``?start=&end=``: either may be left out (end: now; start: 7 days before
    the end); a time without a zone is UTC. :class:`RangeError` when unusable."""
    try:
        stop = _utc(end) if end is not None else now
        begin = _utc(start) if start is not None else stop - RANGES[DEFAULT_RANGE]
    except (OverflowError, ValueError):
        raise RangeError("the range is outside the dates the dashboard can show") from None
    dmarcstats.bucket_for(begin, stop)
    return begin, stop


@dataclass(frozen=True)
class PageRange:
    """What the page's range picker chose, and the range it means."""

    choice: str         # 24h, 7d, 30d or custom
    start: datetime
    end: datetime
    first_day: str      # the custom form's fields (YYYY-MM-DD), filled in for any choice
    last_day: str
    error: str | None = None


def page_range(args: dict[str, str], now: datetime) -> PageRange:
    """The page's ``?range=24h|7d|30d`` or ``?range=custom&from=YYYY-MM-DD&to=YYYY-MM-DD``
    (whole UTC days, both included); anything else is the default with an error to show."""
    choice = args.get("range", DEFAULT_RANGE)
    if choice == "custom":
        try:
            first = date.fromisoformat(args.get("from", "")[:10])
            last = date.fromisoformat(args.get("to", "")[:10])
            start = datetime(first.year, first.month, first.day, tzinfo=UTC)
            end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
            dmarcstats.bucket_for(start, end)
        except (ValueError, OverflowError) as exc:
            message = str(exc) if isinstance(exc, RangeError) else \
                "give both days as YYYY-MM-DD"
            fallback = page_range({}, now)
            return PageRange(fallback.choice, fallback.start, fallback.end,
                             args.get("from", "")[:10], args.get("to", "")[:10],
                             f"That range cannot be shown: {message}.")
        return PageRange("custom", start, end, first.isoformat(), last.isoformat())
    if choice not in RANGES:
        return PageRange(DEFAULT_RANGE, now - RANGES[DEFAULT_RANGE], now,
                         *_days(now - RANGES[DEFAULT_RANGE], now), "Unknown range; "
                         "showing the last 7 days.")
    start = now - RANGES[choice]
    return PageRange(choice, start, now, *_days(start, now))


def _days(start: datetime, end: datetime) -> tuple[str, str]:
    return start.date().isoformat(), (end - timedelta(microseconds=1)).date().isoformat()


class DmarcConsole:
    """The process's source-name cache and the threads that wait for DNS, so that no
    database connection does: figures are loaded in a ``db`` transaction, then named and
    judged here."""

    def __init__(self, settings: Settings, metrics: Metrics | None, reactor: ReactorThreads,
                 pool: ThreadPool | None, *, resolver: Resolver | None = None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.pool = pool
        self.resolver = resolver or Resolver.from_settings(settings)
        self.names = SourceNames(self.resolver, metrics=metrics)

    def close(self) -> None:
        self.names.close()

    def _call(self, fn: Any, *args: Any) -> Deferred[Any]:
        if self.pool is None:
            from twisted.internet.defer import maybeDeferred
            return maybeDeferred(fn, *args)
        return defer_to_pool(self.reactor, self.pool, fn, *args)

    def assemble(self, figures: Figures, *, local: bool) -> Deferred[Dashboard]:
        """The dashboard of ``figures``: names (within their budget), the current record
        (within RECORD_BUDGET), charts and readiness; off the reactor."""
        return self._call(self._assemble, figures, local)

    def _assemble(self, figures: Figures, local: bool) -> Dashboard:
        record = current_record(self.resolver.until(time.monotonic() + RECORD_BUDGET),
                                figures.domain)
        report_address = (self.settings.dmarc_report_mailbox or None) if local else None
        return assemble(figures, names=self.names, record=record,
                        report_address=report_address)

    def lookup(self, ips: list[str]) -> Deferred[dict[str, SourceName]]:
        """Names of ``ips`` from the cache, and some looked up now within the budget."""
        return self._call(self.names.lookup, ips)


def load(session: StoreSession, principal: Principal, domain: str, start: datetime,
         end: datetime) -> tuple[Figures, bool]:
    """In one ``db`` transaction: the visibility checks, then the figures (and whether the
    domain is ours)."""
    seen = visible_domain(session, principal, domain)
    return load_figures(session, seen.domain, start, end), seen.local


def load_reporters(session: StoreSession, principal: Principal, domain: str, start: datetime,
                   end: datetime) -> list[dmarcstats.ReporterCounts]:
    """The visibility checks, then what each reporting organisation said."""
    seen = visible_domain(session, principal, domain)
    return dmarcstats.reporters(session, seen.domain, start, end)


__all__ = [
    "DEFAULT_RANGE",
    "RANGES",
    "DmarcConsole",
    "Hidden",
    "NoData",
    "PageRange",
    "RangeError",
    "Visible",
    "api_range",
    "is_ours",
    "load",
    "load_reporters",
    "may_see",
    "page_range",
    "visible_domain",
]
