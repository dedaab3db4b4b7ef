"""Sending TLS reports (RFC 8460): one a day per policy domain we sent mail to, once.

The period is the DMARC reports' (POSTROOM_DMARC_REPORT_INTERVAL, a UTC day by
default). A little after each period ends, every recipient domain the relay recorded
TLS sessions for (``tls_results``) whose ``_smtp._tls.<domain>`` TXT record
is a valid ``v=TLSRPTv1`` record gets one report: the JSON of RFC 8460
section 4, gzip-compressed, in a ``multipart/report; report-type="tlsrpt"``
mail to its ``rua=mailto:`` addresses, written through postroom.outgoing
(DKIM-signed for our sender's domain, spooled, queued on ``outbound``).

``rua=https:`` URIs are not POSTed: the URL is chosen by whoever runs the
receiving domain's DNS, and a POST from our servers to any address it names
is a request forgery channel; they are logged and skipped (a domain that
lists only https gets no report). Once per (domain, day) across replicas,
exactly as the DMARC reports: a queue id derived from both, made under a
PostgreSQL advisory lock.
"""

from __future__ import annotations

import hashlib
from base64 import b32encode
from dataclasses import dataclass
from datetime import datetime

from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, defer_to_pool
from postroom.logs import get_logger
from postroom.mailauth import tlsrpt
from postroom.net.dns import NXDomain, Resolver
from postroom.outgoing import Outgoing, originate
from postroom.queue.reconciler import Enqueuer
from postroom.store import dmarc as dmarc_store
from postroom.store import spool, tlsreports
from postroom.store.db import Database, StoreSession
from postroom.store.errors import NotFound
from postroom_dmarc.periodic import Outcome, PeriodicReports, ReportEvents

log = get_logger("tls-reports")

DAY = 86400.0
SETTLE = 60.0  # wait this long after midnight: the relay flushes its results every few seconds
RETENTION = 3 * DAY  # results are kept this long, so a late run still finds its day


@dataclass(frozen=True)
class TLSReportConfig:
    """Who we are in TLS reports."""

    submitter: str  # our host name: TLS-Report-Submitter, the file name
    org_name: str
    sender: str  # envelope and From of the report mail
    contact: str  # contact-info
    interval: float = DAY
    settle: float = SETTLE


def lookup_record(resolver: Resolver, domain: str) -> tlsrpt.Record | None:
    """The TLSRPT record of ``domain`` (None: none, or not one valid record). Blocking."""
    try:
        return tlsrpt.find_record(resolver.txt(f"_smtp._tls.{domain}"))
    except NXDomain:
        return None


def report_id(domain: str, begin: datetime, end: datetime) -> str:
    """The report's id and queue id: the same for a (domain, day) on every replica."""
    digest = hashlib.sha256(f"tls|{domain}|{begin.isoformat()}|{end.isoformat()}"
                            .encode()).digest()
    return f"TLSRPT-{begin:%Y%m%d}-{b32encode(digest[:10]).decode()}"


def spool_report(session: StoreSession, domain: str, begin: datetime, end: datetime,
                 record: tlsrpt.Record, config: TLSReportConfig, now: datetime,
                 outgoing: Outgoing) -> Outcome:
    """Build and spool ``domain``'s TLS report for [begin, end) unless done or in progress."""
    queue_id = report_id(domain, begin, end)
    if not dmarc_store.try_lock_report(session, queue_id):
        return Outcome("busy", queue_id)
    try:
        spool.get_spool(session, queue_id)
        return Outcome("exists", queue_id)
    except NotFound:
        pass
    rows = tlsreports.results_for_report(session, domain, begin, end)
    if not rows:
        return Outcome("empty", queue_id)
    report = tlsrpt.build_report(org_name=config.org_name, contact=config.contact,
                                 report_id=queue_id, policy_domain=domain, begin=begin,
                                 end=end, rows=rows)
    rcpts = list(record.mailto)
    message = tlsrpt.build_message(report, domain, submitter=config.submitter,
                                   sender=config.sender, recipients=rcpts,
                                   message_id=f"<{queue_id}@{config.submitter}>", now=now)
    made = originate(session, outgoing, message, mail_from=config.sender, rcpts=rcpts,
                     from_domain=config.sender.rpartition("@")[2], now=now, notify="NEVER",
                     queue_id=queue_id, why="tls report")
    return Outcome("spooled", queue_id, made.recipient_ids, tuple(rcpts))


class TLSReportScheduler(PeriodicReports):
    """Every little while, sends the TLS reports of the last whole day not sent yet (the
    loop: postroom_dmarc.periodic)."""

    log = log
    events = ReportEvents(
        run_failed="tls report run failed", purged="tls results purged",
        deferred="tls report deferred", not_sent="tls report not sent",
        not_spooled="tls report not spooled", queued="tls report queued",
        skipped="tls report skipped")
    reporting_domains = staticmethod(tlsreports.reporting_domains)
    purge_results = staticmethod(tlsreports.purge_results)

    def __init__(self, database: Database, enqueuer: Enqueuer, resolver: Resolver,
                 config: TLSReportConfig, *, dns_pool: ThreadPool, reactor: ReactorThreads,
                 outgoing: Outgoing) -> None:
        super().__init__(database, enqueuer, resolver, config, dns_pool=dns_pool,
                         reactor=reactor, outgoing=outgoing, retention=RETENTION)
        self.config: TLSReportConfig = config

    async def destinations(self, domain: str,
                           fields: dict[str, str]) -> tlsrpt.Record | None:
        """``domain``'s TLSRPT record when it has mailto: addresses; https: ones logged."""
        record = await defer_to_pool(self.reactor, self.dns_pool, lookup_record,
                                     self.resolver, domain)
        if record is not None and record.https:
            log.info("tls report https rua skipped", rua=list(record.https)[:3], **fields)
        return record if record is not None and record.mailto else None

    def spool(self, session: StoreSession, domain: str, begin: datetime, end: datetime,
              found: tlsrpt.Record, now: datetime) -> Outcome:
        return spool_report(session, domain, begin, end, found, self.config, now,
                            self.outgoing)
