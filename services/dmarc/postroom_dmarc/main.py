"""The dmarc service's declaration for `postroom serve dmarc`, and its wiring from settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from postroom.config import DmarcOverride, Settings
from postroom.internalauth import warn_if_exposed
from postroom.mailauth import dmarcreport
from postroom.net.clamd import clamd_metrics
from postroom.net.dns import Resolver
from postroom.outgoing import Outgoing
from postroom.queue.reconciler import Enqueuer
from postroom.queue.streams import QueueClient
from postroom.runtime import ServiceContext
from postroom.service import ServiceSpec
from postroom_dmarc.api import CheckResource, build_site
from postroom_dmarc.content.attachments import AttachmentCheck, policy_from_settings
from postroom_dmarc.content.checks import ContentChecks, Entry, PooledCheck
from postroom_dmarc.content.clamd import ClamdCheck
from postroom_dmarc.content.learning import LearnWorker, learn_metrics
from postroom_dmarc.content.rspamd import RspamdClient, RspamdMetrics
from postroom_dmarc.incoming import IncomingScanner
from postroom_dmarc.reports import ReportConfig, ReportScheduler
from postroom_dmarc.results import ResultRecorder
from postroom_dmarc.tlsreports import TLSReportConfig, TLSReportScheduler
from postroom_dmarc.verdict import Options

# threads for pyspf/dkimpy evaluations; each mostly waits on DNS
POLICY_THREADS = 16
MAX_INFLIGHT = 64
# report runs enqueue one entry per domain: short blocking Redis calls
REDIS_THREADS = 2
# base64 grows a message by 4/3; leave room for the JSON around it
_JSON_OVERHEAD = 64 * 1024


def combine(*sources: Mapping[str, DmarcOverride]) -> dict[str, DmarcOverride]:
    """Several override maps as one; a domain in several gets the union of its options."""
    result: dict[str, DmarcOverride] = {}
    for source in sources:
        for domain, override in source.items():
            earlier = result.get(domain)
            result[domain] = earlier.merged(override) if earlier else override
    return result


def options_from_settings(settings: Settings) -> Options:
    """Evaluation options from POSTROOM_DMARC_* (parsed and checked by postroom.config)."""
    monitored = {domain: DmarcOverride(monitor_only=True)
                 for domain in settings.dmarc_monitor_only}
    return Options(authserv_id=settings.hostname, org_domain_mode=settings.dmarc_org_domain,
                   trusted_forwarders=settings.dmarc_trusted_forwarders,
                   trusted_arc_sealers=frozenset(settings.dmarc_trusted_arc_sealers),
                   overrides=combine(monitored, settings.dmarc_overrides),
                   dkim_max_signatures=settings.dkim_max_signatures,
                   dkim_budget=settings.dkim_budget)


def deadline_for(settings: Settings) -> float:
    """How long one check may take: a few DNS timeouts, well under the SMTP client's patience."""
    return min(max(settings.dns_timeout * 4, 5.0), 120.0)


def report_config(settings: Settings) -> ReportConfig:
    """Who we are in aggregate reports, from POSTROOM_HOSTNAME and POSTROOM_DMARC_REPORT_*."""
    sender = settings.dmarc_report_from or f"dmarc-noreply@{settings.hostname}"
    return ReportConfig(receiver=settings.hostname,
                        org_name=settings.dmarc_report_org or settings.hostname, sender=sender,
                        interval=settings.dmarc_report_interval,
                        settle=dmarcreport.report_settle(settings.dmarc_report_interval))


def build_scheduler(ctx: ServiceContext, resolver: Resolver, pool: ThreadPool) -> ReportScheduler:
    """The aggregate report scheduler over the context's database and Redis."""
    settings = ctx.settings
    queue = QueueClient(ctx.redis_client, settings.redis_prefix)
    enqueuer = Enqueuer(queue, ctx.thread_pool("redis", REDIS_THREADS), ctx.reactor)
    return ReportScheduler(ctx.db, enqueuer, resolver, report_config(settings),
                           dns_pool=pool, reactor=ctx.reactor,
                           org_domain_mode=settings.dmarc_org_domain,
                           retention=settings.dmarc_results_retention,
                           outgoing=Outgoing.from_settings(settings, ctx.metrics))


def build_tls_scheduler(ctx: ServiceContext, resolver: Resolver,
                        pool: ThreadPool) -> TLSReportScheduler:
    """The TLS report (RFC 8460) sender: the DMARC reports' identity and period (a UTC day by
    default, as RFC 8460 asks; shorter only for tests)."""
    settings = ctx.settings
    dmarc = report_config(settings)
    queue = QueueClient(ctx.redis_client, settings.redis_prefix)
    enqueuer = Enqueuer(queue, ctx.thread_pool("redis", REDIS_THREADS), ctx.reactor)
    config = TLSReportConfig(submitter=settings.hostname, org_name=dmarc.org_name,
                             sender=dmarc.sender, contact=dmarc.sender,
                             interval=dmarc.interval, settle=dmarc.settle)
    return TLSReportScheduler(ctx.db, enqueuer, resolver, config, dns_pool=pool,
                              reactor=ctx.reactor,
                              outgoing=Outgoing.from_settings(settings, ctx.metrics))


def build_scanner(ctx: ServiceContext, pool: ThreadPool) -> IncomingScanner:
    """The reader of incoming aggregate reports in POSTROOM_DMARC_REPORT_MAILBOX."""
    settings = ctx.settings
    limits = dmarcreport.IncomingLimits(max_compressed=settings.dmarc_report_max_size,
                                        max_xml=settings.dmarc_report_max_xml_size)
    return IncomingScanner(ctx.db, settings.dmarc_report_mailbox, pool=pool,
                           reactor=ctx.reactor, interval=settings.dmarc_report_scan_interval,
                           limits=limits)


def build_content(ctx: ServiceContext, pool: ThreadPool) -> ContentChecks:
    """The content checks the settings turn on: the attachment policy (in ``pool``),
    clamd (POSTROOM_CLAMD_ADDRESS) and rspamd (POSTROOM_RSPAMD_URL)."""
    settings = ctx.settings
    # every scanner's metric families exist from the start, configured or not: a
    # dashboard reads 0 rather than "no data", and docs/metrics.md lists them all
    RspamdMetrics(ctx.metrics)
    clamd_metrics(ctx.metrics)
    learn_metrics(ctx.metrics)
    extra: list[Entry] = []
    if settings.attachment_policy:
        extra.append(PooledCheck(AttachmentCheck(policy_from_settings(settings)), pool,
                                 ctx.reactor, deadline=deadline_for(settings),
                                 max_inflight=MAX_INFLIGHT))
    rspamd = None
    if settings.rspamd_url:
        rspamd = RspamdClient(settings.rspamd_url, reactor=ctx.reactor,
                              timeout=settings.rspamd_timeout, password=settings.rspamd_password,
                              fail_open=settings.rspamd_fail_open,
                              controller_url=settings.rspamd_controller_url,
                              metrics=ctx.metrics)
    clamd = None
    if settings.clamd_address:
        clamd = ClamdCheck(settings.clamd_address, reactor=ctx.reactor,
                           timeout=settings.clamd_timeout,
                           max_stream=settings.clamd_max_stream, metrics=ctx.metrics)
    return ContentChecks(rspamd=rspamd, clamd=clamd, extra=extra, metrics=ctx.metrics)


async def _start(ctx: ServiceContext) -> None:
    settings = ctx.settings
    options = options_from_settings(settings)
    resolver = Resolver.from_settings(settings)
    pool = ctx.thread_pool("policy", POLICY_THREADS)
    recorder = ResultRecorder(ctx.db)
    content = build_content(ctx, pool)
    check = CheckResource(resolver, options, pool, ctx.reactor, max_inflight=MAX_INFLIGHT,
                          deadline=deadline_for(settings), recorder=recorder,
                          metrics=ctx.metrics, token=settings.internal_token, content=content)
    scheduler = build_scheduler(ctx, resolver, pool) if settings.dmarc_reports else None
    scanner = build_scanner(ctx, pool) if settings.dmarc_report_mailbox else None
    tls_scheduler = build_tls_scheduler(ctx, resolver, pool) if settings.tls_reports else None
    site: Any = build_site(check, settings.max_message_size * 4 // 3 + _JSON_OVERHEAD)
    # stop hooks run newest first: the scheduler stops, then the last verdict rows are written
    ctx.on_stop(recorder.drain)
    ctx.on_stop(lambda: Deferred.fromCoroutine(content.close()))
    warn_if_exposed("/v1/check", settings.dmarc_listen, settings.internal_token)
    await ctx.listen_all(settings.dmarc_listen, site)
    if scheduler is not None:
        ctx.on_stop(scheduler.stop)
        scheduler.start()
    if tls_scheduler is not None:
        ctx.on_stop(tls_scheduler.stop)
        tls_scheduler.start()
    if scanner is not None:
        ctx.on_stop(scanner.stop)
        scanner.start()
    if content.rspamd is not None and settings.rspamd_controller_url:
        learner = LearnWorker(content.rspamd, ctx.db, ctx.redis_client, settings.redis_prefix,
                              ctx.thread_pool("learn", 1), ctx.reactor,
                              max_attempts=settings.rspamd_learn_attempts,
                              claim_idle=settings.queue_claim_idle,
                              reconcile_interval=settings.reconcile_interval,
                              metrics=ctx.metrics)
        ctx.on_stop(learner.stop)
        learner.start()


def start(ctx: ServiceContext) -> Deferred[Any]:
    return Deferred.fromCoroutine(_start(ctx))


SERVICE = ServiceSpec(
    name="dmarc",
    description="SPF, DKIM, ARC and DMARC verdicts for the MTA over an internal HTTP API; "
                "aggregate (rua) reports",
    start=start,
    needs_database=True,  # verdicts are stored for aggregate reports
    needs_redis=True,  # reports are enqueued on `outbound`
    listen_settings=("dmarc_listen",),
)
