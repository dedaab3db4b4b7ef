"""The whole check: SPF, DKIM, ARC and DMARC combined into one JSON-able verdict for the MTA.

:func:`evaluate` is blocking (DNS) and runs in the `policy` thread pool. Its
verdict's ``disposition`` tells the MTA what to do: ``inbox``, ``junk``
(quarantine), ``reject`` (554 5.7.1 with ``reason``) or ``tempfail`` (451).
The content checks (:mod:`postroom_dmarc.content`) join in through
:func:`with_content`: the stricter of the two decides.
Rules that keep it safe:

* a temporary DNS failure never leads to ``reject``: a DMARC temperror with
  a policy other than none becomes ``tempfail``;
* ``pct`` sampling and ``t=y`` downgrade reject to quarantine and quarantine
  to none (RFC 7489 6.6.4, RFC 9989); the sampler is injectable for tests;
* operator overrides (monitor-only domains, trusted forwarder networks,
  trusted ARC sealers) downgrade a failing message to ``inbox`` and are
  reported with the RFC 7489 Appendix C override type;
* a check given a deadline (the API's) stops its own work there: every DNS
  lookup ends by it, and the DKIM step has its own smaller budget and cap.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from postroom.config import DmarcOverride, Network
from postroom.logs import get_logger
from postroom.mailauth import authres
from postroom.mailauth.dmarcdiscovery import Discoverer, Lookup, normalise
from postroom.mailauth.dmarcrecord import json_copy
from postroom.net.dns import DNSTempError, Resolver
from postroom_dmarc import dkimcheck, spfcheck
from postroom_dmarc.content import DISPOSITION, ContentResult, combine
from postroom_dmarc.fromheader import author_domains

log = get_logger("dmarc")

DISPOSITIONS = ("inbox", "junk", "reject", "tempfail")
_STRICTNESS = {"none": 0, "quarantine": 1, "reject": 2}
_DOWNGRADE = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@dataclass(frozen=True)
class Options:
    """How to evaluate: our authserv-id, the org-domain method and the operator's overrides."""

    authserv_id: str
    org_domain_mode: str = "psl"  # or "treewalk" (RFC 9989)
    reject_malformed_from: bool = True
    check_helo: bool = True
    trusted_forwarders: tuple[Network, ...] = ()
    trusted_arc_sealers: frozenset[str] = frozenset()
    # keyed by domain; matched against each recipient domain and each author domain
    overrides: Mapping[str, DmarcOverride] = field(default_factory=dict)
    min_rsa_bits: int = dkimcheck.MIN_RSA_BITS
    spf_time_budget: float = 10.0
    dkim_max_signatures: int = dkimcheck.MAX_SIGNATURES  # verified per message, aligned first
    dkim_budget: float = dkimcheck.BUDGET  # seconds for the whole DKIM step
    sampler: Callable[[], float] = random.random  # in [0, 1), for pct


@dataclass(frozen=True)
class CheckRequest:
    """What the MTA knows at the end of DATA."""

    client_ip: str
    helo: str
    mail_from: str  # "" for the null reverse-path
    recipients: tuple[str, ...]
    message: bytes
    queue_id: str | None = None
    # the caller asked for the verdict's short form (``"verdict": "mta"``: Verdict.to_json)
    short: bool = False


@dataclass(frozen=True)
class DMARCResult:
    """The DMARC outcome for the message (strictest author domain when there are several)."""

    result: str  # pass, fail, none, temperror, permerror
    from_domain: str
    policy_domain: str | None = None
    org_domain: str | None = None
    policy: str | None = None  # p, sp or np as published and selected for this domain
    applied_policy: str = "none"  # after pct, t= and overrides
    override: str | None = None  # sampled_out, local_policy, trusted_forwarder, forwarded
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""
    record: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        # dataclasses.asdict, written out (see postroom.mailauth.dmarcrecord.json_copy)
        return {"result": self.result, "from_domain": self.from_domain,
                "policy_domain": self.policy_domain, "org_domain": self.org_domain,
                "policy": self.policy, "applied_policy": self.applied_policy,
                "override": self.override, "spf_aligned": self.spf_aligned,
                "dkim_aligned": self.dkim_aligned, "reason": self.reason,
                "record": json_copy(self.record)}


@dataclass(frozen=True)
class Verdict:
    """Everything the MTA needs and the aggregate report will store."""

    spf: spfcheck.SPFResult
    spf_helo: spfcheck.SPFResult | None
    dkim: list[dkimcheck.DKIMResult]
    arc: dkimcheck.ARCResult
    dmarc: DMARCResult
    disposition: str
    reason: str
    authentication_results: str  # the field value; prepend "Authentication-Results: " + CRLF
    # what the DKIM step's cap and budget left undone (its results are ``dkim``); not in JSON
    dkim_run: dkimcheck.DKIMRun | None = None
    # each content check's result (attachments, spam, viruses), in the order they ran
    content: tuple[ContentResult, ...] = ()
    # the content check that decided the disposition, when one did (else DMARC did)
    decided_by: str | None = None

    def to_json(self, short: bool = False) -> dict[str, Any]:
        """The verdict's JSON; ``short``: only what the mta reads (docs/dmarc-api.md)."""
        if short:
            # disposition, reason, the header to add, the DMARC result for its log line
            # and the content checks' fields and outcomes: a fifth of the full body's bytes
            # to encode here and to parse in the mta (issue 23)
            body: dict[str, Any] = {
                "disposition": self.disposition, "reason": self.reason,
                "authentication_results": self.authentication_results,
                "dmarc": {"result": self.dmarc.result}}
            if self.content:
                body["content"] = [{"check": c.check, "action": c.action}
                                   for c in self.content]
                body["headers"] = [[name, value] for c in self.content
                                   for name, value in c.headers]
                body["decided_by"] = self.decided_by
            return body
        body = {
            "spf": self.spf.to_json(),
            "spf_helo": self.spf_helo.to_json() if self.spf_helo else None,
            "dkim": [d.to_json() for d in self.dkim],
            "arc": self.arc.to_json(),
            "dmarc": self.dmarc.to_json(),
            "disposition": self.disposition,
            "reason": self.reason,
            "authentication_results": self.authentication_results,
        }
        if self.content:
            body["content"] = [c.to_json() for c in self.content]
            # the fields to add to the stored message, every check's, in order
            body["headers"] = [[name, value] for c in self.content for name, value in c.headers]
            body["decided_by"] = self.decided_by
        return body


_SEVERITY = {"inbox": 0, "junk": 1, "tempfail": 2, "reject": 3}


def with_content(verdict: Verdict, results: Sequence[ContentResult]) -> Verdict:
    """``verdict`` with the content checks' results: the stricter disposition wins.

    A content check's reason replaces the DMARC one only when it decides.
    """
    if not results:
        return verdict
    winner = combine(results)
    disposition, reason, decided_by = verdict.disposition, verdict.reason, None
    wanted = DISPOSITION[winner.action]
    if _SEVERITY[wanted] > _SEVERITY[disposition]:
        disposition, reason, decided_by = wanted, winner.reason, winner.check
    return dataclasses.replace(verdict, disposition=disposition, reason=reason,
                               content=tuple(results), decided_by=decided_by)


def aligned(a: str, b: str, mode: str, discoverer: Discoverer) -> bool:
    """Identifier alignment (RFC 7489 3.1): strict is equality, relaxed same org domain."""
    a, b = normalise(a), normalise(b)
    if not a or not b:
        return False
    if a == b:
        return True
    return mode == "r" and discoverer.org_domain(a) == discoverer.org_domain(b)


def _in_networks(ip: str, networks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)


def _domain_matches(domain: str, key: str) -> bool:
    return domain == key or domain.endswith("." + key)


def _overrides_for(request: CheckRequest, author: str, options: Options) -> list[DmarcOverride]:
    domains = {r.rpartition("@")[2].lower().rstrip(".") for r in request.recipients} | {author}
    found = [o for key, o in options.overrides.items()
             if key != "*" and any(_domain_matches(d, key.lower()) for d in domains)]
    if "*" in options.overrides:
        found.append(options.overrides["*"])
    return found


def _evaluate_domain(author: str, request: CheckRequest, spf: spfcheck.SPFResult,
                     dkim: list[dkimcheck.DKIMResult], arc: dkimcheck.ARCResult,
                     discoverer: Discoverer, options: Options,
                     sample: Callable[[], float]) -> DMARCResult:
    try:
        found = discoverer.discover(author)
    except DNSTempError as exc:
        return DMARCResult("temperror", author, reason=f"policy lookup failed: {exc}")
    if found.error is not None:
        return DMARCResult("permerror", author, found.policy_domain,
                           reason=f"malformed DMARC record: {found.error}")
    record = found.record
    if record is None:
        return DMARCResult("none", author, reason="no DMARC record")
    try:
        org = discoverer.org_domain(author)
        spf_aligned = spf.result == "pass" and aligned(spf.domain, author, record.aspf, discoverer)
        dkim_aligned = any(
            d.result == "pass" and aligned(d.domain, author, record.adkim, discoverer)
            for d in dkim)
        temp = (
            (spf.result == "temperror" and aligned(spf.domain, author, record.aspf, discoverer))
            or any(d.result == "temperror" and aligned(d.domain, author, record.adkim, discoverer)
                   for d in dkim))
        policy = record.p
        if found.policy_domain != author:
            policy = record.sp or record.p
            if record.np and not discoverer.resolver.domain_exists(author):
                policy = record.np  # RFC 9091 / RFC 9989: a non-existent subdomain
    except DNSTempError as exc:
        return DMARCResult("temperror", author, found.policy_domain, reason=f"DNS: {exc}",
                           record=record.to_json())
    base: dict[str, Any] = {
        "from_domain": author, "policy_domain": found.policy_domain, "org_domain": org,
        "policy": policy, "spf_aligned": spf_aligned, "dkim_aligned": dkim_aligned,
        "record": record.to_json()}
    if spf_aligned or dkim_aligned:
        return DMARCResult("pass", **base, reason="aligned " + ("SPF" if spf_aligned else "DKIM"))
    if temp:
        return DMARCResult("temperror", **base, applied_policy=policy,
                           reason="an aligned identifier had a temporary DNS failure")
    applied, override = policy, None
    if record.pct < 100 and sample() * 100 >= record.pct:
        applied, override = _DOWNGRADE[applied], "sampled_out"
    if record.t:
        applied, override = _DOWNGRADE[applied], override or "policy_test_mode"
    if applied != "none":
        overrides = _overrides_for(request, author, options)
        forwarders = list(options.trusted_forwarders)
        for o in overrides:
            forwarders.extend(o.trusted_forwarders)
        if any(o.monitor_only for o in overrides):
            applied, override = "none", "local_policy"
        elif _in_networks(request.client_ip, forwarders):
            applied, override = "none", "trusted_forwarder"
        elif arc.result == "pass" and arc.sealers() and \
                arc.sealers()[0] in options.trusted_arc_sealers:
            applied, override = "none", "forwarded"
    return DMARCResult("fail", **base, applied_policy=applied, override=override,
                       reason="neither SPF nor DKIM aligned with the From domain")


def _strictest(results: list[DMARCResult]) -> DMARCResult:
    order = {"fail": 4, "temperror": 3, "permerror": 2, "pass": 1, "none": 0}
    return max(results, key=lambda r: (order[r.result], _STRICTNESS[r.applied_policy]))


def _auth_results(request: CheckRequest, spf: spfcheck.SPFResult,
                  spf_helo: spfcheck.SPFResult | None, dkim: list[dkimcheck.DKIMResult],
                  arc: dkimcheck.ARCResult, dmarc: DMARCResult, authserv_id: str) -> str:
    clauses = []
    if spf.identity == "mailfrom":
        clauses.append(authres.resinfo("spf", spf.result, [("smtp.mailfrom", spf.sender)]))
    else:
        clauses.append(authres.resinfo("spf", spf.result, [("smtp.helo", request.helo)]))
    if spf_helo is not None:
        clauses.append(authres.resinfo("spf", spf_helo.result, [("smtp.helo", request.helo)]))
    if not dkim:
        clauses.append("dkim=none")
    for d in dkim:
        note = d.reason if d.result != "pass" else (f"{d.key_bits}-bit key" if d.key_bits else None)
        clauses.append(authres.resinfo("dkim", d.result, [
            ("header.d", d.domain), ("header.s", d.selector), ("header.a", d.algorithm),
            ("header.b", d.b)], note))
    clauses.append(authres.resinfo("arc", arc.result))
    props = [("header.from", dmarc.from_domain)]
    note = None
    if dmarc.policy is not None:
        note = f"p={dmarc.policy} dis={dmarc.applied_policy}"
        props.append(("policy.dmarc", dmarc.applied_policy))
    clauses.append(authres.resinfo("dmarc", dmarc.result, props, note))
    return authres.header_value(authserv_id, clauses)


def evaluate(request: CheckRequest, resolver: Resolver, options: Options, *,
             deadline: float | None = None) -> Verdict:
    """Check ``request`` and decide what happens to the message.

    With a ``deadline`` (a time.monotonic() value) every DNS lookup ends by
    it: past it, what is still unknown is a temperror and the check finishes
    at once rather than working on for an answer nobody waits for.
    """
    verdict = _decide(request, resolver, options, options.sampler, deadline)
    _log_verdict(request, verdict, options)
    return verdict


def _decide(request: CheckRequest, resolver: Resolver, options: Options,
            sample: Callable[[], float], deadline: float | None = None) -> Verdict:
    if deadline is not None:
        resolver = resolver.until(deadline)
    spf = _spf(request.client_ip, request.mail_from, request.helo, resolver, options)
    spf_helo = None
    if options.check_helo and spf.identity == "mailfrom" and request.helo:
        spf_helo = _spf(request.client_ip, "", request.helo, resolver, options)
    headers = dkimcheck.parse_headers(request.message)
    authors = author_domains(request.message)
    dkim_run = dkimcheck.verify(request.message, resolver, min_rsa_bits=options.min_rsa_bits,
                                headers=headers or [], authors=authors.domains,
                                max_signatures=options.dkim_max_signatures,
                                budget=options.dkim_budget)
    dkim = dkim_run.results
    arc = dkimcheck.verify_arc(request.message, resolver, min_rsa_bits=options.min_rsa_bits,
                               headers=headers)
    discoverer = _MemoDiscoverer(resolver, options.org_domain_mode)
    if authors.problem is not None:
        dmarc = DMARCResult("permerror", "", reason=f"malformed message: {authors.problem}")
    else:
        dmarc = _strictest([_evaluate_domain(a, request, spf, dkim, arc, discoverer, options,
                                             sample) for a in authors.domains])
    disposition, reason = _disposition(dmarc, authors.problem, options)
    header = _auth_results(request, spf, spf_helo, dkim, arc, dmarc, options.authserv_id)
    return Verdict(spf, spf_helo, dkim, arc, dmarc, disposition, reason, header, dkim_run)


def _log_verdict(request: CheckRequest, verdict: Verdict, options: Options) -> None:
    run = verdict.dkim_run
    if run is not None and run.skipped:
        log.info("dkim signature cap reached", queue_id=request.queue_id,
                 signatures=run.signatures, verified=len(run.results), skipped=run.skipped,
                 max_signatures=options.dkim_max_signatures)
    if run is not None and run.out_of_time:
        log.warning("dkim time budget exhausted", queue_id=request.queue_id,
                    budget=options.dkim_budget, signatures=run.signatures,
                    unfinished=run.unfinished)
    dmarc = verdict.dmarc
    log.info("dmarc verdict", queue_id=request.queue_id, client_ip=request.client_ip,
             from_domain=dmarc.from_domain, spf=verdict.spf.result,
             dkim=[d.result for d in verdict.dkim], arc=verdict.arc.result, dmarc=dmarc.result,
             policy=dmarc.policy, applied_policy=dmarc.applied_policy, override=dmarc.override,
             disposition=verdict.disposition)


# --- evaluating from the resolver's cache alone, on the reactor thread

# Larger messages, or ones with more signature fields, are always checked in the `policy`
# pool: hashing their bodies would hold up the reactor.
CACHED_MAX_MESSAGE = 128 * 1024
CACHED_MAX_SIGNATURES = 4


class _CacheMiss(DNSTempError):
    """An answer the cache does not hold: the evaluation is thrown away and done in a thread.

    A DNSTempError, so that every caller's DNS handling stops at it without
    touching the network (and nothing treats it as hostile input).
    """


class _Memo:
    """Results evaluated from cached answers, each kept until the first of them expires.

    Two per resolver: SPF evaluations, and DMARC record lookups (``_dmarc.<domain>``
    read and parsed, :class:`_MemoDiscoverer`).

    An SPF evaluation is a pure function of the client address, the MAIL FROM,
    the HELO name, our receiver name and the DNS answers it reads (pyspf's limits
    and macros included); while every answer it read is still fresh, evaluating
    it again gives the same result. A busy sender's messages share one, which
    was pyspf's parsing and matching on every message (more with real records'
    include: chains). Temporary errors and evaluations that missed the cache are
    never kept; nor are DMARC lookups that raised. Bounded (least recently used
    first out); thread-safe.
    """

    MAX_ENTRIES = 4096
    MAX_AGE = 3600.0  # an evaluation that read no answer at all (no lookup) is redone hourly

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, ...], tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...], now: float) -> Any:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            if found[0] <= now:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return found[1]

    def put(self, key: tuple[str, ...], expires: float, result: Any) -> None:
        with self._lock:
            self._entries[key] = (expires, result)
            self._entries.move_to_end(key)
            while len(self._entries) > self.MAX_ENTRIES:
                self._entries.popitem(last=False)


_clock = time.monotonic  # the memo's clock (the resolver's own): tests move this one alone


def _spf(ip: str, mail_from: str, helo: str, resolver: Resolver,
         options: Options) -> spfcheck.SPFResult:
    """:func:`spfcheck.check`, from the memo of :class:`_Memo` when ``resolver`` answers
    from the cache alone (the reactor's first try); a full evaluation reads no memo."""
    if not isinstance(resolver, _CachedAnswers):
        return spfcheck.check(ip, mail_from, helo, resolver, receiver=options.authserv_id,
                              time_budget=options.spf_time_budget)
    key = (ip, mail_from, helo, options.authserv_id)
    now = _clock()
    memo = resolver.memos[0]
    result: spfcheck.SPFResult | None = memo.get(key, now)
    if result is not None:
        return result
    missed, resolver.missed, resolver.earliest = resolver.missed, False, now + _Memo.MAX_AGE
    result = spfcheck.check(ip, mail_from, helo, resolver, receiver=options.authserv_id,
                            time_budget=options.spf_time_budget)
    if not resolver.missed and result.result != "temperror" and resolver.earliest > now:
        memo.put(key, resolver.earliest, result)
    resolver.missed = resolver.missed or missed
    return result


class _CachedAnswers(Resolver):
    """The same resolver (its cache shared, not copied) that never queries a server.

    It notes the earliest expiry of the answers it gave (:attr:`earliest`), for the
    memos (SPF, DMARC lookups), which live on the resolver it views (one per service).
    """

    def __init__(self, resolver: Resolver) -> None:  # a view of ``resolver``: no super()
        memos = resolver.__dict__.get("memos")
        if memos is None:  # first check on this resolver
            memos = resolver.__dict__.setdefault("memos", (_Memo(), _Memo()))
        self.__dict__.update(vars(resolver))
        self.memos: tuple[_Memo, _Memo] = memos  # SPF, DMARC lookups
        self.missed = False
        self.earliest = math.inf

    def _lookup(self, qname: str, qtype: Any, now: float) -> Any:
        self.missed = True
        raise _CacheMiss(f"{qname}: not cached")

    def _from_entry(self, qname: str, entry: Any) -> list[object]:  # type: ignore[override]
        # every answer a view gives comes from a cache entry, through here
        self.earliest = min(self.earliest, entry.expires)
        return Resolver._from_entry(qname, entry)

    def until(self, deadline: float) -> Resolver:
        return self  # it never waits; a copy would not report its misses here


class _MemoDiscoverer(Discoverer):
    """A Discoverer whose DMARC lookups from cached answers are kept as SPF results are
    (:class:`_Memo`): ``_dmarc.<domain>`` read and its record parsed once while fresh."""

    def _lookup(self, domain: str) -> Lookup:
        resolver = self.resolver
        if domain in self._lookups or not isinstance(resolver, _CachedAnswers):
            return super()._lookup(domain)
        now = _clock()
        memo = resolver.memos[1]
        found: Lookup | None = memo.get((domain,), now)
        if found is not None:
            self._lookups[domain] = found
            return found
        missed, resolver.missed, resolver.earliest = resolver.missed, False, now + _Memo.MAX_AGE
        try:
            found = super()._lookup(domain)  # a DNS error propagates, and is not kept
            if not resolver.missed and resolver.earliest > now:
                memo.put((domain,), resolver.earliest, found)
        finally:
            resolver.missed = resolver.missed or missed
        return found


class PendingCheck:
    """A check tried from the DNS cache first; :meth:`evaluate` finishes it in a thread if needed.

    :meth:`from_cache` runs on the reactor thread and never blocks: it
    answers when every DNS answer the check needs is cached and fresh (the
    usual case for a sender seen in the last minutes), else it returns None
    and the caller runs :meth:`evaluate` in the `policy` pool. The verdict is
    the one :func:`evaluate` would give; values drawn for ``pct`` sampling by
    an abandoned attempt are replayed to the second, so it decides as the
    first would have.
    """

    def __init__(self, request: CheckRequest, resolver: Resolver, options: Options) -> None:
        self.request = request
        self.resolver = resolver
        self.options = options
        self._drawn: list[float] = []
        self._replay = 0

    def _sample(self) -> float:
        if self._replay < len(self._drawn):
            self._replay += 1
            return self._drawn[self._replay - 1]
        value = self.options.sampler()
        self._drawn.append(value)
        self._replay = len(self._drawn)
        return value

    def _cached_eligible(self) -> bool:
        message = self.request.message
        if len(message) > CACHED_MAX_MESSAGE:
            return False
        lowered = message.lower()
        return lowered.count(b"signature") + lowered.count(b"arc-seal") <= CACHED_MAX_SIGNATURES

    def from_cache(self) -> Verdict | None:
        """The verdict from cached DNS answers alone, or None (never raises, never blocks)."""
        if not self._cached_eligible():
            return None
        cached = _CachedAnswers(self.resolver)
        try:
            verdict = _decide(self.request, cached, self.options, self._sample)
        except Exception:  # noqa: BLE001 - the thread's evaluation fails (and is logged) alike
            return None
        if cached.missed:
            self._replay = 0
            return None
        _log_verdict(self.request, verdict, self.options)
        return verdict

    def evaluate(self, deadline: float | None = None) -> Verdict:
        """:func:`evaluate` (blocking: in the `policy` pool) after :meth:`from_cache` gave up."""
        self._replay = 0
        verdict = _decide(self.request, self.resolver, self.options, self._sample, deadline)
        _log_verdict(self.request, verdict, self.options)
        return verdict


def _disposition(dmarc: DMARCResult, from_problem: str | None,
                 options: Options) -> tuple[str, str]:
    if from_problem is not None:
        if options.reject_malformed_from:
            return "reject", (f"message rejected: {from_problem}; RFC 5322 requires exactly "
                              "one From header field with an address")
        return "inbox", ""
    if dmarc.result == "temperror":
        if dmarc.policy is not None and dmarc.applied_policy == "none" and dmarc.policy == "none":
            return "inbox", ""
        return "tempfail", f"temporary DNS failure evaluating DMARC for {dmarc.from_domain}"
    if dmarc.result != "fail":
        return "inbox", ""
    if dmarc.applied_policy == "reject":
        return "reject", (f"DMARC policy of {dmarc.policy_domain} rejects unauthenticated mail "
                          f"from {dmarc.from_domain}")
    if dmarc.applied_policy == "quarantine":
        return "junk", ""
    return "inbox", ""
