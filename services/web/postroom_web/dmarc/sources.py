"""Who a sending address is: its reverse name (PTR) and organisation, looked up within a budget.

A dashboard shows hundreds of addresses; a page must not wait for hundreds
of reverse lookups. :class:`SourceNames` keeps answers in a bounded TTL
cache shared by every render, and looks up at most ``per_render`` addresses
it does not know yet, in a few threads, all bounded by one deadline
(``budget`` seconds, through :meth:`postroom.net.dns.Resolver.until`). An
address not answered in time, or beyond ``per_render``, is shown as unknown
("—") and asked again by a later render.

The organisation is the organizational domain (public suffix list,
:func:`postroom.mailauth.dmarcdiscovery.psl_org_domain`) of the reverse name,
only when the name is forward-confirmed (it resolves back to the address:
anyone can put ``mail.google.com`` in their own reverse zone), shown by a
friendly name for the well-known senders.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from postroom.logs import get_logger
from postroom.mailauth.dmarcdiscovery import psl_org_domain
from postroom.metrics import Metrics
from postroom.net.dns import DNSError, DNSTempError, NXDomain, Resolver
from postroom.ttlcache import TTLCache

log = get_logger("web-dmarc-sources")

UNKNOWN = "\u2014"  # what a page shows for a name or organisation not known

# organizational domain -> the name people know the sender by
FRIENDLY: dict[str, str] = {
    "google.com": "Google",
    "googlemail.com": "Google",
    "outlook.com": "Microsoft",
    "hotmail.com": "Microsoft",
    "microsoft.com": "Microsoft",
    "office365.com": "Microsoft",
    "amazonses.com": "Amazon SES",
    "amazonaws.com": "Amazon Web Services",
    "sendgrid.net": "SendGrid",
    "mcsv.net": "Mailchimp",
    "rsgsv.net": "Mailchimp",
    "mcdlv.net": "Mailchimp",
    "mandrillapp.com": "Mailchimp (Mandrill)",
    "mailchimp.com": "Mailchimp",
    "mailgun.net": "Mailgun",
    "mailgun.org": "Mailgun",
    "sparkpostmail.com": "SparkPost",
    "postmarkapp.com": "Postmark",
    "mtasv.net": "Postmark",
    "zoho.com": "Zoho",
    "zoho.eu": "Zoho",
    "yahoo.com": "Yahoo",
    "yahoodns.net": "Yahoo",
    "protonmail.ch": "Proton",
    "proton.me": "Proton",
    "fastmail.com": "Fastmail",
    "messagingengine.com": "Fastmail",
    "salesforce.com": "Salesforce",
    "exacttarget.com": "Salesforce Marketing Cloud",
    "hubspotemail.net": "HubSpot",
    "mailjet.com": "Mailjet",
    "brevo.com": "Brevo",
    "sendinblue.com": "Brevo",
    "icloud.com": "Apple iCloud",
    "apple.com": "Apple",
}


def organisation_of(name: str | None) -> tuple[str | None, str | None]:
    """(organizational domain, organisation shown) of a confirmed reverse name."""
    if not name:
        return None, None
    org = psl_org_domain(name.lower().rstrip("."))
    return org, FRIENDLY.get(org, org)


@dataclass(frozen=True)
class SourceName:
    """What is known of one address; None where nothing is (yet)."""

    ip: str
    ptr: str | None = None  # the first reverse name
    confirmed: bool = False  # the reverse name resolves back to the address
    org_domain: str | None = None  # only for a confirmed name
    organisation: str | None = None  # friendly name, or the organizational domain
    looked_up: bool = False  # False: not looked up (budget spent); a later render may know

    @property
    def ptr_shown(self) -> str:
        return self.ptr or UNKNOWN

    @property
    def organisation_shown(self) -> str:
        return self.organisation or UNKNOWN


def resolve_name(resolver: Resolver, ip: str) -> SourceName:
    """The reverse name of ``ip``, whether it is forward-confirmed, and its organisation.

    :class:`postroom.net.dns.DNSTempError` (a timeout, the deadline) propagates.
    """
    try:
        names = resolver.ptr(ip)
    except NXDomain:
        return SourceName(ip, looked_up=True)
    if not names:
        return SourceName(ip, looked_up=True)
    name = names[0]
    version = ipaddress.ip_address(ip).version
    try:
        addresses = resolver.a(name) if version == 4 else resolver.aaaa(name)
    except NXDomain:
        addresses = []
    wanted = ipaddress.ip_address(ip)
    confirmed = any(ipaddress.ip_address(a) == wanted for a in addresses)
    org, shown = organisation_of(name) if confirmed else (None, None)
    return SourceName(ip, ptr=name, confirmed=confirmed, org_domain=org, organisation=shown,
                      looked_up=True)


class SourceNames:
    """Reverse names and organisations of addresses: a TTL cache and a per-render budget.

    Thread-safe; one instance serves every render of a process. ``per_render``
    new addresses at most are looked up by one :meth:`lookup`, in
    ``workers`` threads, all within ``budget`` seconds; answers are kept
    ``ttl`` seconds (a temporary failure ``retry_after``), ``max_entries`` at most.
    """

    def __init__(self, resolver: Resolver, *, ttl: float = 3600.0, retry_after: float = 120.0,
                 max_entries: int = 10_000, per_render: int = 32, budget: float = 1.5,
                 workers: int = 8, clock: Callable[[], float] = time.monotonic,
                 metrics: Metrics | None = None) -> None:
        self.resolver = resolver
        self.ttl = ttl
        self.retry_after = retry_after
        self.max_entries = max_entries
        self.per_render = per_render
        self.budget = budget
        self.clock = clock
        # address -> what is known of it (postroom.ttlcache), under self._lock
        self._cache: TTLCache[str, SourceName] = TTLCache(max_entries, clock)
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="web-ptr")
        # postroom_web_source_lookups_total{outcome}: confirmed, unconfirmed, none, temperror,
        # and over_budget for addresses a render stopped waiting for
        self._lookups = metrics.counter(
            "web_source_lookups_total", "Reverse lookups of sending addresses for the DMARC "
            "dashboard, by outcome", ["outcome"]) if metrics is not None else None

    def close(self) -> None:
        """Stop the lookup threads (lookups in flight are abandoned)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def cached(self, ip: str) -> SourceName | None:
        with self._lock:
            return self._cache.get(ip)

    def _store(self, ip: str, name: SourceName, ttl: float) -> None:
        with self._lock:
            self._cache.put(ip, name, ttl)

    def _one(self, resolver: Resolver, ip: str) -> SourceName:
        try:
            name, ttl = resolve_name(resolver, ip), self.ttl
            outcome = ("confirmed" if name.confirmed else
                       "unconfirmed" if name.ptr else "none")
        except DNSTempError:
            # a timeout or the render's deadline: unknown for now, asked again soon
            name, ttl, outcome = SourceName(ip), self.retry_after, "temperror"
        except (DNSError, ValueError):
            name, ttl, outcome = SourceName(ip, looked_up=True), self.ttl, "none"
        finally:
            with self._lock:
                self._pending.discard(ip)
        self._store(ip, name, ttl)
        self._count(outcome)
        return name

    def _count(self, outcome: str, n: int = 1) -> None:
        if self._lookups is not None:
            self._lookups.labels(outcome=outcome).inc(n)

    def lookup(self, ips: Iterable[str]) -> dict[str, SourceName]:
        """A :class:`SourceName` for each address (in order, duplicates once): cached ones,
        up to ``per_render`` looked up now within the budget, the rest unknown."""
        result: dict[str, SourceName] = {}
        todo: list[str] = []
        for ip in ips:
            if ip in result:
                continue
            known = self.cached(ip)
            result[ip] = known or SourceName(ip)
            if known is None:
                with self._lock:
                    if ip in self._pending or len(todo) >= self.per_render:
                        continue
                    self._pending.add(ip)
                todo.append(ip)
        if not todo:
            return result
        resolver = self.resolver.until(time.monotonic() + self.budget)
        futures: dict[Future[SourceName], str] = {}
        for ip in todo:
            futures[self._pool.submit(self._one, resolver, ip)] = ip
        done, late = wait(futures, timeout=self.budget)
        for future in done:
            if future.exception() is None:
                result[futures[future]] = future.result()
        if late:
            self._count("over_budget", len(late))
            log.info("reverse lookups over budget", addresses=len(late), budget=self.budget)
        return result
