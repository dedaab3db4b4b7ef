"""Sending aggregate reports (RFC 7489 7.2): when, to which verified rua addresses, and only once.

Periods are POSTROOM_DMARC_REPORT_INTERVAL long and aligned to the Unix epoch
(a day is a UTC day). A little after a period ends, every reporting domain
with verdicts in it gets one report:

* the ``rua=mailto:`` addresses come from the domain's DMARC record, looked
  up now; a ``!size`` suffix caps the message size for that address;
* an address in another organizational domain is used only when
  ``<policy-domain>._report._dmarc.<rua-domain>`` has a ``v=DMARC1`` TXT
  record (RFC 7489 section 7.1), so nobody can aim our reports at a third
  party;
* the report mail is spooled and enqueued on ``outbound`` (the relay
  delivers it; failures never bounce: NOTIFY=NEVER).

Once per (domain, period), even with several dmarc replicas: the spool row
has a queue id derived from both, and it is made under a PostgreSQL advisory
transaction lock, so a second replica either sees the lock taken (and tries
again at its next tick) or finds the row already there.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from base64 import b32encode
from dataclasses import dataclass
from datetime import datetime

from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, defer_to_pool
from postroom.logs import get_logger
from postroom.mailauth import dmarcreport
from postroom.mailauth.dmarcdiscovery import Discoverer, lookup
from postroom.mailauth.dmarcrecord import DMARCRecord, is_dmarc
from postroom.net.dns import NXDomain, Resolver
from postroom.outgoing import Outgoing, originate
from postroom.queue.reconciler import Enqueuer
from postroom.store import dmarc as dmarc_store
from postroom.store import spool
from postroom.store.db import Database, StoreSession
from postroom.store.errors import NotFound
from postroom_dmarc.periodic import Outcome, PeriodicReports, ReportEvents

log = get_logger("dmarc-reports")

_SIZE = re.compile(r"^([0-9]{1,15})([kmgt]?)$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_ADDRESS = re.compile(r"^[^@\s<>(),;:\"\\]+@[A-Za-z0-9.-]+$")
MAX_TARGETS = 10  # a record listing more is abusive; the first ones are used


@dataclass(frozen=True)
class Target:
    """A report destination: a mailbox and the largest message it takes (None: any)."""

    address: str
    max_bytes: int | None = None

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()


@dataclass(frozen=True)
class Targets:
    """Where a domain's reports may go now, and which destinations were refused and why."""

    record: DMARCRecord | None
    accepted: tuple[Target, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ReportConfig:
    """Who we are in reports, and the period length."""

    receiver: str  # our host name: the file name's and Subject's "receiver"
    org_name: str
    sender: str  # envelope and From of the report mail
    interval: float  # seconds
    settle: float = 60.0  # wait this long after a period ends for its last verdicts


# --- rua= parsing and destination checks (blocking DNS: run in a thread pool)


def rua_value(raw_record: str) -> str:
    """The raw value of the ``rua`` tag of a DMARC record's text ('' when absent)."""
    for term in raw_record.split(";")[1:]:
        name, sep, value = term.partition("=")
        if sep and name.strip().lower() == "rua":
            return value.strip()
    return ""


def parse_rua(value: str) -> list[Target]:
    """``mailto:`` URIs of a rua value with their ``!size`` limits; other schemes are skipped."""
    targets: list[Target] = []
    for item in value.split(","):
        uri, _, size = item.strip().partition("!")
        if not uri.lower().startswith("mailto:"):
            continue
        address = urllib.parse.unquote(uri[len("mailto:"):].partition("?")[0]).strip()
        if not _ADDRESS.match(address):
            continue
        limit = None
        if size:
            match = _SIZE.match(size.strip())
            if not match:
                continue  # an unreadable limit: we cannot know what they accept
            limit = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
        target = Target(address, limit)
        if target.address.lower() not in {t.address.lower() for t in targets}:
            targets.append(target)
    return targets[:MAX_TARGETS]


def destination_verified(resolver: Resolver, policy_domain: str, rua_domain: str) -> bool:
    """RFC 7489 7.1: ``<policy-domain>._report._dmarc.<rua-domain>`` holds a v=DMARC1 record."""
    try:
        texts = resolver.txt(f"{policy_domain}._report._dmarc.{rua_domain}")
    except NXDomain:
        return False
    return any(is_dmarc(text) for text in texts)


def find_targets(resolver: Resolver, domain: str, discoverer: Discoverer) -> Targets:
    """The verified report destinations of ``domain`` (DNSTempError: try again later)."""
    found = lookup(domain, resolver)
    if found.record is None:
        return Targets(None)
    accepted, refused = [], []
    own_org = discoverer.org_domain(domain)
    for target in parse_rua(rua_value(found.record.raw)):
        if discoverer.org_domain(target.domain) != own_org and \
                not destination_verified(resolver, domain, target.domain):
            refused.append((target.address, "external destination not verified"))
            continue
        accepted.append(target)
    return Targets(found.record, tuple(accepted), tuple(refused))


# --- one report, spooled in one transaction


def report_id(domain: str, begin: datetime, end: datetime) -> str:
    """The report's id and queue id: the same for a (domain, period) on every replica."""
    digest = hashlib.sha256(f"{domain}|{begin.isoformat()}|{end.isoformat()}".encode()).digest()
    return f"DMARC-{begin:%Y%m%dT%H%M}-{b32encode(digest[:10]).decode()}"


def spool_report(session: StoreSession, domain: str, begin: datetime, end: datetime,
                 targets: Targets, config: ReportConfig, now: datetime,
                 outgoing: Outgoing | None = None) -> Outcome:
    """Build and spool ``domain``'s report for [begin, end) unless it exists or is being made.

    The report is mail we write: signed for the sender's domain and queued by
    postroom.outgoing.originate, as every message the suite writes.
    """
    queue_id = report_id(domain, begin, end)
    if not dmarc_store.try_lock_report(session, queue_id):
        return Outcome("busy", queue_id)
    try:
        spool.get_spool(session, queue_id)
        return Outcome("exists", queue_id)
    except NotFound:
        pass
    records = dmarc_store.results_for_report(session, domain, begin, end)
    if not records:
        return Outcome("empty", queue_id)
    stored = next((r.detail.get("record") for r in reversed(records) if r.detail.get("record")),
                  None)
    policy = dmarcreport.PolicyPublished.from_record(
        domain, stored or (targets.record.to_json() if targets.record else None))
    meta = dmarcreport.ReportMeta(org_name=config.org_name, email=config.sender,
                                  report_id=queue_id, begin=begin, end=end)
    xml = dmarcreport.build_xml(meta, policy, dmarcreport.aggregate(records))
    wanted = list(targets.accepted)
    while wanted:
        message = dmarcreport.build_message(
            meta, domain, xml, receiver=config.receiver, sender=config.sender,
            recipients=[t.address for t in wanted], message_id=f"<{queue_id}@{config.receiver}>",
            now=now)
        fitting = [t for t in wanted if t.max_bytes is None or len(message) <= t.max_bytes]
        if fitting == wanted:
            break
        for t in wanted:
            if t not in fitting:
                log.warning("dmarc report too large for destination", domain=domain,
                            to=t.address, size=len(message), limit=t.max_bytes)
        wanted = fitting
    if not wanted:
        return Outcome("too_large", queue_id)
    made = originate(session, outgoing or Outgoing(config.receiver), message,
                     mail_from=config.sender, rcpts=[t.address for t in wanted],
                     from_domain=config.sender.rpartition("@")[2], now=now, notify="NEVER",
                     queue_id=queue_id, why="dmarc report")
    return Outcome("spooled", queue_id, made.recipient_ids, tuple(t.address for t in wanted))


# --- the scheduler


class ReportScheduler(PeriodicReports):
    """Every little while, sends the DMARC aggregate reports of the last whole period that
    are not sent yet (the loop: postroom_dmarc.periodic)."""

    log = log
    events = ReportEvents(
        run_failed="dmarc report run failed", purged="dmarc results purged",
        deferred="dmarc report deferred", not_sent="dmarc report not sent",
        not_spooled="dmarc report not spooled", queued="dmarc report queued",
        skipped="dmarc report skipped")
    reporting_domains = staticmethod(dmarc_store.reporting_domains)
    purge_results = staticmethod(dmarc_store.purge_results)

    def __init__(self, database: Database, enqueuer: Enqueuer, resolver: Resolver,
                 config: ReportConfig, *, dns_pool: ThreadPool, reactor: ReactorThreads,
                 org_domain_mode: str = "psl", retention: float | None = None,
                 outgoing: Outgoing | None = None) -> None:
        super().__init__(database, enqueuer, resolver, config, dns_pool=dns_pool,
                         reactor=reactor, outgoing=outgoing or Outgoing(config.receiver),
                         retention=retention or 0.0)
        self.config: ReportConfig = config
        self.org_domain_mode = org_domain_mode

    async def destinations(self, domain: str, fields: dict[str, str]) -> Targets | None:
        """The verified rua targets of ``domain``'s DMARC record; refused ones logged."""
        discoverer = Discoverer(self.resolver, self.org_domain_mode)
        targets = await defer_to_pool(self.reactor, self.dns_pool, find_targets,
                                      self.resolver, domain, discoverer)
        for address, why in targets.refused:
            log.warning("dmarc report destination refused", to=address, reason=why, **fields)
        return targets if targets.accepted else None

    def spool(self, session: StoreSession, domain: str, begin: datetime, end: datetime,
              found: Targets, now: datetime) -> Outcome:
        return spool_report(session, domain, begin, end, found, self.config, now,
                            self.outgoing)
