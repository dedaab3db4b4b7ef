"""MX routing for the relay: which hosts and addresses to try for a domain, and trying them.

RFC 5321 section 5.1: MX records by ascending preference, in random order
among equal preferences; no MX at all means the domain itself is the one
"implicit MX" (its A/AAAA). A null MX (RFC 7505, a single ``0 .``) means the
domain accepts no mail: an immediate permanent failure ``556 5.1.10``. When a
null MX is mixed with real MX records (a misconfiguration the RFC forbids) the
``.`` is dropped and the rest is used.

Addresses in internal networks (loopback, RFC 1918, link-local, ...: see
postroom.net.destinations) are dropped before anything connects, unless the
operator allows their network (POSTROOM_RELAY_ALLOWED_NETWORKS): the domain's
owner writes its DNS, and mail anyone can make us send (bounces, vacation
replies) must not reach our own services. When nothing is left the domain is
treated like a null MX, ``556 5.1.10`` saying why.

DNS answers are had in a worker thread (``deferToThreadPool``; the resolver
blocks), never on the reactor. Temporary DNS failures are temporary results;
a domain that does not exist or has no address at all is a permanent one.
Hosts whose addresses cannot be resolved are skipped.

:func:`deliver_to_domain` tries each address of each host in order (IPv6
first, then IPv4), moving on after a connection failure or a failure before
MAIL FROM (4xx or 5xx greeting, EHLO, TLS, timeout), and stops at the first
server that answers for the recipients.

TLS policy per destination (see docs/decisions/0003): DANE first (RFC 7672,
only with TLSA records the resolver validated), then an enforced MTA-STS
policy (RFC 8461: only MX hosts its ``mx`` patterns allow, TLS required and
verified against the MX name), otherwise the caller's policy (opportunistic).
An MTA-STS ``testing`` policy changes nothing and only logs what enforcing
would have refused.

A smarthost route (``nexthop``, see postroom.net.nexthop and smarthost.py)
replaces the recipient domain's MX: ``[host]`` is tried at its own addresses,
``host`` by its MX records; the port and the TLS policy are the route's, and
neither MTA-STS nor DANE nor the internal-address check applies (the operator
named the host). A smarthost that cannot be resolved defers (``451 4.4.3``):
a typo in a setting must not bounce every message.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom.interfaces import ReactorThreads, defer_to_pool, global_reactor
from postroom.logs import Logger, get_logger
from postroom.net.destinations import STRICT, DestinationPolicy
from postroom.net.dns import DNSTempError, NXDomain, Resolver
from postroom.net.nexthop import NextHop
from postroom.smtp.replies import Reply
from postroom.store.tlsreports import TLSResult
from postroom_mta import dane
from postroom_mta.mtasts import NONE, Policy, PolicyFinder, policy_strings
from postroom_mta.sessioncache import SessionCache
from postroom_mta.smtpclient import (
    DEFAULT_TIMEOUTS,
    OPPORTUNISTIC,
    DeliveryResult,
    Envelope,
    Recipient,
    Timeouts,
    TLSPolicy,
    attempt,
    verifying_creator,
)
from postroom_mta.smtpclient_data import DEFAULT_CHUNK_SIZE, MessageSource, iter_chunks
from postroom_mta.smtpclient_parse import describe, scan_message
from postroom_mta.tlsresults import classify

log = get_logger("routing")

NULL_MX = Reply(556, "5.1.10", "Recipient address has null MX")
NO_SUCH_DOMAIN = Reply(550, "5.1.2", "Domain does not exist")
NO_ADDRESS = Reply(550, "5.1.2", "Domain has no MX and no address records")
DNS_TEMPORARY = Reply(451, "4.4.3", "DNS lookup failed temporarily")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in delivery")
MX_UNRESOLVABLE = Reply(451, "4.4.3", "No address found for any MX host")
STS_NO_MX = Reply(451, "4.7.5", "No MX host matches the MTA-STS policy")
TLSA_LOOKUP_FAILED = Reply(451, "4.7.5", "TLSA lookup failed")
SMARTHOST_UNRESOLVABLE = Reply(451, "4.4.3", "Smarthost not found")
# every address of every MX is internal: as final as a null MX (RFC 7505 section 4.3)
MX_INTERNAL = Reply(556, "5.1.10", "MX points to an internal address")

# Bounds on one delivery attempt, like Postfix's smtp_mx_address_limit.
DEFAULT_MAX_ADDRESSES = 10


class RouteError(Exception):
    """No host can be tried; ``reply`` is the result every recipient gets."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(describe(reply))
        self.reply = reply


@dataclass(frozen=True)
class Target:
    """One address to connect to and the MX host name it belongs to."""

    host: str
    address: str


def order_mx(records: Sequence[tuple[int, str]], rng: random.Random | None = None) -> list[str]:
    """Hosts by ascending preference, shuffled among equal preferences (RFC 5321 5.1)."""
    rng = rng or random.Random()
    keyed = [(pref, rng.random(), host) for pref, host in records]
    ordered: list[str] = []
    for _pref, _tiebreak, host in sorted(keyed):
        host = host.lower().rstrip(".")
        if host not in ordered:
            ordered.append(host)
    return ordered


def resolve_mx(resolver: Resolver, domain: str, rng: random.Random | None = None) -> list[str]:
    """The hosts to try for ``domain``, in order; raises RouteError. Blocking: call in a thread."""
    try:
        records = resolver.mx(domain)
    except NXDomain as exc:
        raise RouteError(NO_SUCH_DOMAIN.with_text(f"Domain {domain} does not exist")) from exc
    except DNSTempError as exc:
        raise RouteError(DNS_TEMPORARY.with_text(f"MX lookup for {domain} failed: {exc}")) from exc
    if not records:
        return [domain.lower().rstrip(".")]  # the implicit MX
    real = [(pref, host) for pref, host in records if host not in (".", "")]
    if not real:
        raise RouteError(NULL_MX.with_text(f"Domain {domain} accepts no mail (null MX)"))
    return order_mx(real, rng)


def resolve_addresses(resolver: Resolver, host: str) -> list[str]:
    """IPv6 then IPv4 addresses of ``host``; raises NXDomain or DNSTempError."""
    addresses = list(resolver.aaaa(host))
    addresses += resolver.a(host)
    return addresses


def plan_route(resolver: Resolver, domain: str, *, rng: random.Random | None = None,
               max_addresses: int = DEFAULT_MAX_ADDRESSES,
               allow: Callable[[str], bool] | None = None,
               destinations: DestinationPolicy = STRICT,
               refused: list[Target] | None = None) -> list[Target]:
    """Every address to try for ``domain`` in order; raises RouteError. Blocking.

    ``allow`` (an enforced MTA-STS policy's ``allows``) drops MX hosts it refuses;
    when it refuses all of them the mail is deferred, never sent elsewhere.
    Addresses ``destinations`` does not permit are dropped and appended to
    ``refused``; when they were all there was, the route fails with MX_INTERNAL.
    """
    hosts = resolve_mx(resolver, domain, rng)
    implicit = hosts == [domain.lower().rstrip(".")]
    if allow is not None:
        hosts = [host for host in hosts if allow(host)]
        if not hosts:
            raise RouteError(STS_NO_MX.with_text(
                f"No MX host of {domain} matches its MTA-STS policy"))
    targets: list[Target] = []
    dropped: list[Target] = []
    temp_errors: list[str] = []
    for host in hosts:
        try:
            addresses = resolve_addresses(resolver, host)
        except DNSTempError as exc:
            temp_errors.append(str(exc))
            continue
        except NXDomain:
            continue
        for addr in addresses:
            target = Target(host, addr)
            if not destinations.permits(addr):
                dropped.append(target)
            elif target not in targets:
                targets.append(target)
        if len(targets) >= max_addresses:
            break
    if refused is not None:
        refused.extend(dropped)
    if targets:
        return targets[:max_addresses]
    if temp_errors:
        raise RouteError(DNS_TEMPORARY.with_text(f"Address lookup failed: {temp_errors[0]}"))
    if dropped:
        first = dropped[0]
        what = (f"Domain {domain} has no MX and its address" if implicit
                else f"MX {first.host} of {domain}")
        raise RouteError(MX_INTERNAL.with_text(
            f"{what} points to an internal address ({first.address}); refused"))
    if implicit:
        raise RouteError(NO_ADDRESS.with_text(f"Domain {domain} has no MX and no address"))
    # MX hosts that do not resolve: often a DNS change in progress, so retry rather than bounce
    raise RouteError(MX_UNRESOLVABLE.with_text(f"No address for any MX host of {domain}"))


# a smarthost is the operator's choice: wherever it is, it may be connected to
ANYWHERE = DestinationPolicy.allowing(["0.0.0.0/0", "::/0"])


def plan_nexthop(resolver: Resolver, nexthop: NextHop, *, rng: random.Random | None = None,
                 max_addresses: int = DEFAULT_MAX_ADDRESSES) -> list[Target]:
    """The addresses of a smarthost: ``[host]`` its own, ``host`` its MX hosts'. Blocking.

    Raises RouteError, always temporary: the route is configuration, not the recipient's.
    """
    if nexthop.is_address:
        return [Target(nexthop.host, nexthop.host)]
    try:
        if nexthop.mx_lookup:
            return plan_route(resolver, nexthop.host, rng=rng, max_addresses=max_addresses,
                              destinations=ANYWHERE)
        addresses = resolve_addresses(resolver, nexthop.host)
    except RouteError as exc:
        if exc.reply.code < 500:
            raise
        raise RouteError(SMARTHOST_UNRESOLVABLE.with_text(
            f"Smarthost {nexthop}: {exc.reply.text}")) from exc
    except DNSTempError as exc:
        raise RouteError(DNS_TEMPORARY.with_text(
            f"Address lookup for smarthost {nexthop} failed: {exc}")) from exc
    except NXDomain as exc:
        raise RouteError(SMARTHOST_UNRESOLVABLE.with_text(
            f"Smarthost {nexthop} does not exist")) from exc
    if not addresses:
        raise RouteError(SMARTHOST_UNRESOLVABLE.with_text(f"Smarthost {nexthop} has no address"))
    return [Target(nexthop.host, a) for a in addresses[:max_addresses]]


def deliver_to_domain(domain: str, mail_from: str, recipients: Sequence[str | Recipient],
                      message: MessageSource, *, resolver: Resolver, port: int,
                      pool: ThreadPool, helo_name: str, reactor: ReactorThreads | None = None,
                      timeouts: Timeouts = DEFAULT_TIMEOUTS, tls: TLSPolicy = OPPORTUNISTIC,
                      ret: str | None = None, envid: str | None = None,
                      rng: random.Random | None = None,
                      max_addresses: int = DEFAULT_MAX_ADDRESSES,
                      chunk_size: int = DEFAULT_CHUNK_SIZE,
                      logger: Logger | None = None,
                      bind_address: str | None = None,
                      security: TLSSecurity | None = None,
                      sessions: SessionCache | None = None,
                      destinations: DestinationPolicy = STRICT,
                      refused_metric: Counter | None = None,
                      nexthop: NextHop | None = None,
                      tls_recorder: TLSRecorder | None = None) -> defer.Deferred[DeliveryResult]:
    """Send one message to ``recipients`` (all in ``domain``) via its MX hosts.

    ``port`` is POSTROOM_SMTP_OUTBOUND_PORT; ``pool`` is the (started) thread
    pool DNS runs in. The Deferred never fails: it fires with per-recipient
    results, ``tried`` listing earlier addresses that failed. ``logger`` may
    carry bound fields (``queue_id``) into every event. ``security`` turns on
    MTA-STS and DANE; without it ``tls`` applies to every MX. ``sessions`` (the
    relay's connection cache) reuses idle sessions and keeps new ones open.
    ``destinations`` says which internal networks MX addresses may be in (none
    by default); each address it refuses is logged and counted on ``refused_metric``.
    ``nexthop`` (a smarthost route) replaces the MX of ``domain``, with ``tls`` its policy.
    ``tls_recorder`` gets each MX attempt's TLS outcome for TLS reports (RFC 8460).
    """
    if reactor is None:
        reactor = global_reactor()
    envelope = Envelope.of(mail_from, recipients, ret=ret, envid=envid)
    logger = (logger or log).bind(domain=domain)

    def crashed(failure: Failure) -> DeliveryResult:
        # a bug must cost a retry, never the message
        logger.exception("delivery crashed", failure.value)
        return DeliveryResult.uniform(envelope, LOCAL_ERROR, "route")

    return defer.ensureDeferred(_deliver(
        reactor, domain, envelope, message, resolver=resolver, port=port, pool=pool,
        helo_name=helo_name, timeouts=timeouts, tls=tls, rng=rng, max_addresses=max_addresses,
        chunk_size=chunk_size, logger=logger, bind_address=bind_address,
        security=security, sessions=sessions, destinations=destinations,
        refused_metric=refused_metric, nexthop=nexthop,
        tls_recorder=tls_recorder)).addErrback(crashed)


async def _deliver(reactor: ReactorThreads, domain: str, envelope: Envelope,
                   message: MessageSource, *,
                   resolver: Resolver, port: int, pool: ThreadPool, helo_name: str,
                   timeouts: Timeouts, tls: TLSPolicy, rng: random.Random | None,
                   max_addresses: int, chunk_size: int, logger: Logger,
                   bind_address: str | None = None,
                   security: TLSSecurity | None = None,
                   sessions: SessionCache | None = None,
                   destinations: DestinationPolicy = STRICT,
                   refused_metric: Counter | None = None,
                   nexthop: NextHop | None = None,
                   tls_recorder: TLSRecorder | None = None) -> DeliveryResult:
    if nexthop is not None:
        # a smarthost is not the domain's MX: TLS reports are about the domain's own hosts
        port, security, tls_recorder = nexthop.port, None, None
    policy = None
    if security is not None and security.sts is not None:
        policy = await defer_to_pool(reactor, pool, security.sts.find, domain)
        if policy is not None and policy.mode == NONE:
            policy = None
    enforced = policy is not None and policy.enforced
    refused: list[Target] = []
    try:
        if nexthop is not None:
            targets = await defer_to_pool(reactor, pool, plan_nexthop, resolver, nexthop,
                                          rng=rng, max_addresses=max_addresses)
        else:
            targets = await defer_to_pool(reactor, pool, plan_route, resolver, domain, rng=rng,
                                          max_addresses=max_addresses,
                                          allow=policy.allows if policy and enforced else None,
                                          destinations=destinations, refused=refused)
    except RouteError as exc:
        _log_refused(logger, refused, refused_metric)
        logger.info("route failed", reply=describe(exc.reply))
        return DeliveryResult.uniform(envelope, exc.reply, "route")
    _log_refused(logger, refused, refused_metric)
    # scanning a large file blocks too, so it runs in the pool as well
    traits = await defer_to_pool(reactor, pool, lambda: scan_message(
        iter_chunks(message, chunk_size)))
    tried: list[str] = []
    result: DeliveryResult | None = None
    if policy is not None and not enforced:
        for host in sorted({t.host for t in targets if not policy.allows(t.host)}):
            logger.warning("mta-sts testing policy would refuse mx", mx=host)
    # a cached session is tried first; if it is dead the cache reconnects to the same address
    send = sessions.attempt if sessions is not None else attempt
    for target in targets:
        target_tls = tls
        if security is not None:
            try:
                target_tls = await security.for_host(reactor, pool, target.host, port, enforced,
                                                     default=tls, logger=logger)
            except dane.TLSALookupError as exc:
                # RFC 7672 2.2.2: this MX is unusable for now; never try it in clear instead
                result = TLSSecurity.lookup_failed(envelope, target, exc)
                if tls_recorder is not None:
                    tls_recorder.record(TLSResult(
                        policy_domain=domain, policy_type="tlsa", mx_host=target.host,
                        result_type="dnssec-invalid", sending_ip=bind_address,
                        receiving_ip=target.address, failure_detail=str(exc)[:300]))
                tried.append(f"{target.host}[{target.address}]: {result.recipients[0].text}")
                logger.warning("mx skipped, tlsa lookup failed", mx=target.host,
                               address=target.address, error=str(exc))
                continue
        result = await send(reactor, envelope, message, traits, address=target.address,
                            port=port, helo_name=helo_name, host=target.host,
                            timeouts=timeouts, tls=target_tls, chunk_size=chunk_size,
                            logger=logger, bind_address=bind_address)
        if tls_recorder is not None and target_tls.use_tls:
            _record_tls(tls_recorder, domain, target, target_tls, policy, result, bind_address)
        if not result.session_failure:
            break
        first = result.recipients[0] if result.recipients else None
        tried.append(f"{target.host}[{target.address}]: {first.text if first else ''}")
        logger.info("mx attempt failed", mx=target.host,
                 address=target.address, error=first.text if first else None)
    assert result is not None  # plan_route never returns an empty list
    return DeliveryResult(result.recipients, result.host, result.address, result.tls,
                          result.session_failure, tuple(tried))


class TLSRecorder(Protocol):
    """Where TLS outcomes go (postroom_mta.tlsresults.TLSResultRecorder)."""

    def record(self, row: TLSResult) -> None: ...


def _record_tls(recorder: TLSRecorder, domain: str, target: Target, tls: TLSPolicy,
                policy: Policy | None, result: DeliveryResult, bind_address: str | None) -> None:
    """One MX attempt's TLS outcome, with the policy that applied: DANE, MTA-STS or none."""
    strings: tuple[str, ...] | None = None
    if isinstance(tls.creator, dane.DANEPolicy):
        kind = "tlsa"
        strings = tuple(f"{r.usage} {r.selector} {r.mtype} {r.data.hex()}"
                        for r in tls.creator.records)
    elif policy is not None:
        kind, strings = "sts", policy_strings(policy)
    else:
        kind = "no-policy-found"
    outcome = classify(result, kind)
    if outcome is None:
        return
    result_type, detail = outcome
    recorder.record(TLSResult(policy_domain=domain, policy_type=kind, policy_string=strings,
                              mx_host=target.host, sending_ip=bind_address,
                              receiving_ip=target.address, result_type=result_type,
                              failure_detail=detail))


def _log_refused(logger: Logger, refused: Sequence[Target], metric: Counter | None) -> None:
    for target in refused:
        logger.warning("mx address refused, internal network", mx=target.host,
                       address=target.address)
    if metric is not None and refused:
        metric.inc(len(refused))


class TLSSecurity:
    """MTA-STS and DANE for the relay: which TLSPolicy each MX host gets.

    DANE (see postroom_mta.dane) wins over MTA-STS (RFC 8461 section 2). A
    secure TLSA RRset with only unusable records still makes TLS mandatory,
    unauthenticated (RFC 7672 section 2.2). A failed TLSA lookup raises
    :class:`dane.TLSALookupError` from :meth:`for_host`: the router then skips
    this MX for this attempt (:meth:`lookup_failed`), RFC 7672 section 2.2.2.
    """

    def __init__(self, resolver: Resolver, *, sts: PolicyFinder | None = None,
                 dane_enabled: bool = False, ca_file: str | None = None) -> None:
        self.resolver = resolver
        self.sts = sts
        self.dane_enabled = dane_enabled
        self.verified = TLSPolicy(required=True, creator=verifying_creator(ca_file))

    def tlsa(self, host: str, port: int) -> list[dane.TLSA] | None:
        """Validated TLSA records of ``host`` (usable or not), None when DANE does not apply.

        Raises dane.TLSALookupError when the lookup failed for a host whose
        address records are secure (or whose security could not be told). Blocking.
        """
        if not self.dane_enabled:
            return None
        try:
            return dane.lookup_tlsa(self.resolver, host, port)
        except dane.TLSALookupError as exc:
            if dane.addresses_secure(self.resolver, host):
                raise
            log.info("tlsa lookup failed for an insecure mx, dane does not apply", mx=host,
                     error=str(exc))
            return None

    async def for_host(self, reactor: ReactorThreads, pool: ThreadPool, host: str, port: int,
                       sts_enforced: bool, *, default: TLSPolicy,
                       logger: Logger) -> TLSPolicy:
        """DANE when the MX has validated TLSA records, else MTA-STS enforce, else ``default``.

        Raises dane.TLSALookupError: the MX must not be used now.
        """
        records = await defer_to_pool(reactor, pool, self.tlsa, host, port)
        if records:
            usable = [r for r in records if r.usable]
            if usable:
                logger.info("dane tlsa found", mx=host, records=len(usable))
                return TLSPolicy(required=True, creator=dane.DANEPolicy(tuple(usable)))
            logger.info("dane tlsa unusable, tls required", mx=host, records=len(records))
            return self.verified if sts_enforced else TLSPolicy(required=True)
        return self.verified if sts_enforced else default

    @staticmethod
    def lookup_failed(envelope: Envelope, target: Target,
                      error: dane.TLSALookupError) -> DeliveryResult:
        """The result of skipping ``target`` after a failed TLSA lookup: deferred, 4.7.5."""
        reply = TLSA_LOOKUP_FAILED.with_text(f"TLSA lookup for {target.host} failed: {error}")
        return DeliveryResult.uniform(envelope, reply, "tls", host=target.host,
                                      address=target.address, session_failure=True)
