"""The one DNS resolver all of Postroom uses: configurable servers, TTL cache, typed answers.

Built on dnspython and meant to be called from worker threads (the `policy`
pool, the relay's MX lookups), never from the reactor thread: every call may
block for up to ``timeout`` seconds. Three outcomes are kept apart because
mail decisions depend on them:

* the name does not exist (NXDOMAIN): :class:`NXDomain` is raised;
* the name exists but has no records of that type: an empty list;
* the answer could not be had (timeout, SERVFAIL, REFUSED, no server
  reachable): :class:`DNSTempError` is raised, which callers turn into a
  ``temperror`` / 4xx and never into a rejection.

Answers (positive and negative) are cached for their TTL, bounded in entries,
so a burst of messages from one sender costs one set of queries.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from postroom.logs import get_logger

if TYPE_CHECKING:
    from postroom.config import Settings

log = get_logger("dns")

# Negative answers (NXDOMAIN, no data) are cached for at most this long even when
# the zone's SOA says more, so a record published during an incident shows up soon.
DEFAULT_NEGATIVE_TTL = 60
DEFAULT_MAX_ENTRIES = 10_000
# Cap on any TTL, so a huge TTL cannot pin an entry for days.
MAX_TTL = 86_400


class DNSError(Exception):
    """Base of the resolver's errors."""


class DNSTempError(DNSError):
    """The question could not be answered now (timeout, SERVFAIL, no server): try later."""


class NXDomain(DNSError):
    """The name does not exist (authoritative NXDOMAIN)."""


@dataclass(frozen=True)
class _Entry:
    expires: float
    nxdomain: bool
    records: tuple[object, ...]


class Resolver:
    """A thread-safe stub resolver with a bounded TTL cache.

    ``servers`` is a sequence of ``(host, port)``; empty means the system's
    resolvers (/etc/resolv.conf). ``timeout`` bounds the whole of one lookup,
    all servers and retries included; :meth:`until` bounds it further by a
    deadline.
    """

    # a time.monotonic() value past which no query is sent (see until())
    deadline: float | None = None

    def __init__(self, servers: Sequence[tuple[str, int]] = (), timeout: float = 5.0, *,
                 max_entries: int = DEFAULT_MAX_ENTRIES,
                 negative_ttl: int = DEFAULT_NEGATIVE_TTL) -> None:
        self.servers = tuple((host, int(port)) for host, port in servers)
        self.timeout = float(timeout)
        self.max_entries = max_entries
        self.negative_ttl = negative_ttl
        self._cache: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()

    def until(self, deadline: float) -> Resolver:
        """This resolver, its cache shared, whose lookups all end by ``deadline`` (monotonic).

        A lookup's timeout is cut to the time left; once none is left, an
        answer the cache does not hold raises :class:`DNSTempError` at once, so
        work whose answer is no longer awaited stops by itself. Bounds nest:
        the earlier deadline wins.
        """
        view = copy.copy(self)  # shallow: the cache, its lock and the per-thread resolvers shared
        view.deadline = deadline if self.deadline is None else min(deadline, self.deadline)
        return view

    def time_left(self) -> float:
        """The longest a lookup may take now: ``timeout``, less near the deadline (<= 0: none)."""
        if self.deadline is None:
            return self.timeout
        return min(self.timeout, self.deadline - time.monotonic())

    @classmethod
    def from_settings(cls, settings: Settings) -> Resolver:
        """The resolver configured by POSTROOM_DNS_SERVERS and POSTROOM_DNS_TIMEOUT."""
        return cls(settings.dns_servers, settings.dns_timeout)

    # --- the dnspython resolver, one per thread: its objects are not documented as thread-safe

    def _dnspython(self) -> dns.resolver.Resolver:
        res: dns.resolver.Resolver | None = getattr(self._local, "resolver", None)
        if res is None:
            if self.servers:
                res = dns.resolver.Resolver(configure=False)
                res.nameservers = [dns.nameserver.Do53Nameserver(host, port)
                                   for host, port in self.servers]
            else:
                res = dns.resolver.Resolver(configure=True)
            res.timeout = self.timeout
            res.lifetime = self.timeout
            # SERVFAIL is a temporary failure for us; retrying it only burns the deadline
            res.retry_servfail = False
            res.cache = None
            self._local.resolver = res
        return res

    # --- the core query

    def query(self, name: str, rdtype: str | int) -> list[object]:
        """The rdata objects of ``name``'s records of ``rdtype`` (CNAMEs followed).

        Raises NXDomain or DNSTempError; returns [] when the name has no such records.
        """
        qname = _normalise(name)
        qtype = dns.rdatatype.RdataType.make(rdtype)
        key = (qname, int(qtype))
        now = time.monotonic()
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                if entry.expires > now:
                    self._cache.move_to_end(key)
                    return self._from_entry(qname, entry)
                del self._cache[key]
        entry = self._lookup(qname, qtype, now)
        if entry.expires > now:
            with self._lock:
                self._cache[key] = entry
                self._cache.move_to_end(key)
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        return self._from_entry(qname, entry)

    @staticmethod
    def _from_entry(qname: str, entry: _Entry) -> list[object]:
        if entry.nxdomain:
            raise NXDomain(qname)
        return list(entry.records)

    def _lookup(self, qname: str, qtype: dns.rdatatype.RdataType, now: float) -> _Entry:
        lifetime = self.time_left()
        if lifetime <= 0:
            raise DNSTempError(f"{qname} {qtype.name}: no time left before the deadline")
        started = time.monotonic()
        try:
            answer = self._dnspython().resolve(qname, qtype, search=False,
                                               raise_on_no_answer=False, lifetime=lifetime)
        except dns.resolver.NXDOMAIN as exc:
            return _Entry(now + self._negative_ttl(exc.responses().values()), True, ())
        except dns.resolver.YXDOMAIN as exc:
            raise DNSTempError(f"{qname}: YXDOMAIN") from exc
        except dns.resolver.LifetimeTimeout as exc:
            log.info("dns timeout", name=qname, rdtype=qtype.name,
                     elapsed=round(time.monotonic() - started, 3))
            raise DNSTempError(f"{qname} {qtype.name}: timed out") from exc
        except dns.resolver.NoNameservers as exc:
            # every server answered SERVFAIL/REFUSED or could not be reached
            log.info("dns server failure", name=qname, rdtype=qtype.name)
            raise DNSTempError(f"{qname} {qtype.name}: server failure") from exc
        except dns.exception.DNSException as exc:
            raise DNSTempError(f"{qname} {qtype.name}: {type(exc).__name__}") from exc
        if answer.rrset is None:
            return _Entry(now + self._negative_ttl([answer.response]), False, ())
        ttl = min(int(answer.rrset.ttl), MAX_TTL)
        return _Entry(now + ttl, False, tuple(answer.rrset))

    def _negative_ttl(self, responses: object) -> int:
        """RFC 2308: the SOA minimum (bounded by its TTL) of the authority section, capped."""
        ttl = self.negative_ttl
        for response in responses:  # type: ignore[attr-defined]
            for rrset in getattr(response, "authority", ()):
                if rrset.rdtype == dns.rdatatype.SOA:
                    ttl = min(ttl, int(rrset.ttl), int(rrset[0].minimum))
        return max(ttl, 0)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # --- typed helpers

    def txt_bytes(self, name: str) -> list[bytes]:
        """Each TXT record of ``name`` as bytes, its character-strings joined (RFC 7208 3.3)."""
        return [b"".join(rdata.strings) for rdata in self.query(name, "TXT")]  # type: ignore[attr-defined]

    def txt(self, name: str) -> list[str]:
        """Each TXT record of ``name`` as text (UTF-8, undecodable bytes replaced)."""
        return [raw.decode("utf-8", "replace") for raw in self.txt_bytes(name)]

    def mx(self, name: str) -> list[tuple[int, str]]:
        """``(preference, host)`` sorted by preference; a null MX (RFC 7505) is ``(0, ".")``.

        Hosts are returned without the trailing dot, except the root of a null MX.
        """
        records = [(int(r.preference), _host_text(r.exchange))  # type: ignore[attr-defined]
                   for r in self.query(name, "MX")]
        return sorted(records)

    def a(self, name: str) -> list[str]:
        """IPv4 addresses of ``name``."""
        return [str(r.address) for r in self.query(name, "A")]  # type: ignore[attr-defined]

    def aaaa(self, name: str) -> list[str]:
        """IPv6 addresses of ``name``."""
        return [str(r.address) for r in self.query(name, "AAAA")]  # type: ignore[attr-defined]

    def ptr(self, ip: str) -> list[str]:
        """Names of ``ip`` (IPv4 or IPv6) from the reverse zone, without trailing dots."""
        rev = dns.reversename.from_address(str(ipaddress.ip_address(ip))).to_text()
        return [_host_text(r.target) for r in self.query(rev, "PTR")]  # type: ignore[attr-defined]

    def cname(self, name: str) -> list[str]:
        """The CNAME target of ``name`` itself (one hop), or [] when it is not an alias."""
        return [_host_text(r.target) for r in self.query(name, "CNAME")]  # type: ignore[attr-defined]

    def domain_exists(self, name: str) -> bool:
        """False only on NXDOMAIN (RFC 9091: a non-existent domain); DNSTempError propagates."""
        try:
            self.query(name, "A")
        except NXDomain:
            return False
        return True


@functools.lru_cache(maxsize=4096)
def _normalise(name: str) -> str:
    # a pure function asked for every lookup, cached ones too (an SPF check asks a few
    # names per message, the same for a busy sender): dnspython's label validation was
    # a tenth of the dmarc service's cached checks. Bounded; a name it refuses raises
    # each time (exceptions are not cached).
    text = name.strip().rstrip(".").lower()
    if not text:
        raise NXDomain("empty name")
    try:
        # validates label lengths and total length; IDNs arrive here as A-labels
        dns.name.from_text(text)
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise NXDomain(f"{name!r}: not a valid domain name") from exc
    return text + "."


def _host_text(name: dns.name.Name) -> str:
    if name == dns.name.root:
        return "."
    return str(name.to_text(omit_final_dot=True))
