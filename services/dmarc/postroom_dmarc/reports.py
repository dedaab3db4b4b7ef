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
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.internet import defer, task
from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, defer_to_pool, twisted_clock
from postroom.logs import get_logger
from postroom.mailauth import dmarcreport
from postroom.mailauth.dmarcdiscovery import Discoverer, lookup
from postroom.mailauth.dmarcrecord import DMARCRecord, is_dmarc
from postroom.net.dns import DNSTempError, NXDomain, Resolver
from postroom.queue.envelope import Envelope
from postroom.queue.reconciler import Enqueuer
from postroom.store import dmarc as dmarc_store
from postroom.store import spool
from postroom.store.db import Database, StoreSession
from postroom.store.errors import NotFound

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


@dataclass(frozen=True)
class Outcome:
    """What became of one domain's report for one period."""

    status: str  # spooled, exists, busy, empty, too_large, no_destination, retry
    queue_id: str | None = None
    recipient_ids: tuple[int, ...] = ()
    recipients: tuple[str, ...] = ()


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


def period_of(now: datetime, interval: float, settle: float = 0.0) -> tuple[datetime, datetime]:
    """The last whole period that ended at least ``settle`` seconds before ``now``."""
    seconds = now.timestamp() - settle
    end = int(seconds // interval * interval)
    begin = int(end - interval)
    return datetime.fromtimestamp(begin, UTC), datetime.fromtimestamp(end, UTC)


def report_id(domain: str, begin: datetime, end: datetime) -> str:
    """The report's id and queue id: the same for a (domain, period) on every replica."""
    digest = hashlib.sha256(f"{domain}|{begin.isoformat()}|{end.isoformat()}".encode()).digest()
    return f"DMARC-{begin:%Y%m%dT%H%M}-{b32encode(digest[:10]).decode()}"


def spool_report(session: StoreSession, domain: str, begin: datetime, end: datetime,
                 targets: Targets, config: ReportConfig, now: datetime) -> Outcome:
    """Build and spool ``domain``'s report for [begin, end) unless it exists or is being made."""
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
    spool.create_spool(session, kind="local", mail_from=config.sender,
                       recipients=[spool.NewRecipient(t.address, "outbound", None, "NEVER")
                                   for t in wanted],
                       message=message, size=len(message), body="7BIT", queue_id=queue_id,
                       enqueued_at=now)
    info = spool.get_spool(session, queue_id)
    return Outcome("spooled", queue_id, tuple(r.id for r in info.recipients),
                   tuple(t.address for t in wanted))


# --- the scheduler


class ReportScheduler:
    """Every little while, sends the reports of the last whole period that are not sent yet."""

    def __init__(self, database: Database, enqueuer: Enqueuer, resolver: Resolver,
                 config: ReportConfig, *, dns_pool: ThreadPool, reactor: ReactorThreads,
                 org_domain_mode: str = "psl", retention: float | None = None) -> None:
        self.database = database
        self.enqueuer = enqueuer
        self.resolver = resolver
        self.config = config
        self.dns_pool = dns_pool
        self.reactor = reactor
        self.org_domain_mode = org_domain_mode
        # verdicts are kept at least two periods, so a late tick still finds its period's
        self.retention = max(retention or 0.0, 2 * config.interval + config.settle)
        self._period: datetime | None = None
        self._finished: set[str] = set()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = twisted_clock(reactor)
        self._current: defer.Deferred[Any] | None = None

    @property
    def check_every(self) -> float:
        return max(1.0, min(self.config.interval / 4, 900.0))

    def start(self) -> None:
        """Tick now and every :attr:`check_every` seconds until :meth:`stop`."""
        self._loop.start(self.check_every, now=True)

    def stop(self) -> defer.Deferred[Any]:
        """Stop ticking; fires when a tick in progress has finished."""
        if self._loop.running:
            self._loop.stop()
        current = self._current
        return current if current is not None else defer.succeed(None)

    def _tick(self) -> defer.Deferred[Any]:
        d = defer.Deferred.fromCoroutine(self.run_once())
        d.addErrback(lambda f: log.error("dmarc report run failed", error=f.getErrorMessage(),
                                         traceback=f.getTraceback()))
        self._current = d
        return d

    async def run_once(self, now: datetime | None = None) -> list[Outcome]:
        """Report the last whole period for each domain not done yet; purge old verdicts."""
        now = now or datetime.now(UTC)
        begin, end = period_of(now, self.config.interval, self.config.settle)
        if begin != self._period:
            self._period, self._finished = begin, set()
        domains = await self.database.run(dmarc_store.reporting_domains, begin, end)
        outcomes = []
        for domain in domains:
            if domain in self._finished:
                continue
            outcome = await self.report(domain, begin, end, now)
            outcomes.append(outcome)
            if outcome.status not in ("busy", "retry"):
                self._finished.add(domain)
        purged = await self.database.run(dmarc_store.purge_results,
                                         now - timedelta(seconds=self.retention))
        if purged:
            log.info("dmarc results purged", rows=purged)
        return outcomes

    async def report(self, domain: str, begin: datetime, end: datetime,
                     now: datetime) -> Outcome:
        """One domain's report for [begin, end): find destinations, spool, enqueue."""
        fields = {"domain": domain, "begin": begin.isoformat(), "end": end.isoformat()}
        discoverer = Discoverer(self.resolver, self.org_domain_mode)
        try:
            targets = await defer_to_pool(self.reactor, self.dns_pool, find_targets,
                                          self.resolver, domain, discoverer)
        except DNSTempError as exc:
            log.warning("dmarc report deferred", reason="DNS", error=str(exc), **fields)
            return Outcome("retry")
        for address, why in targets.refused:
            log.warning("dmarc report destination refused", to=address, reason=why, **fields)
        if not targets.accepted:
            log.info("dmarc report not sent", reason="no usable rua", **fields)
            return Outcome("no_destination")
        try:
            outcome: Outcome = await self.database.run(spool_report, domain, begin, end, targets,
                                                       self.config, now)
        except Exception as exc:  # noqa: BLE001 - one domain's failure must not stop the others
            log.error("dmarc report not spooled", error=str(exc), **fields)
            return Outcome("retry")
        if outcome.status == "spooled":
            assert outcome.queue_id is not None
            await self.enqueuer.after_commit(
                Envelope(outcome.queue_id, outcome.recipient_ids, "outbound"))
            log.info("dmarc report queued", queue_id=outcome.queue_id,
                     to=list(outcome.recipients), **fields)
        else:
            log.info("dmarc report skipped", queue_id=outcome.queue_id, reason=outcome.status,
                     **fields)
        return outcome
