"""MTA-STS (RFC 8461): discover, fetch, cache and apply a recipient domain's TLS policy.

Discovery is the ``_mta-sts.<domain>`` TXT record (``v=STSv1; id=...``);
the policy is fetched over HTTPS from
``https://mta-sts.<domain>/.well-known/mta-sts.txt`` with the certificate
verified against ``mta-sts.<domain>`` (system CAs, or POSTROOM_TLS_CA_FILE).
The fetch connects to the address our own resolver gives for that name, so
tests (and split-horizon set-ups) see exactly the DNS the relay uses; like an
MX, that name is the domain owner's to point anywhere, so internal addresses
are refused unless POSTROOM_RELAY_ALLOWED_NETWORKS allows them
(postroom.net.destinations): the fetch then fails, which means no policy.

Caching (RFC 8461 section 5.1) is in Redis (:class:`PolicyStore`), shared by
every mta process: one key per domain, ``<prefix>mta-sts:<domain>``, whose
value is the policy as JSON with its id and the wall-clock time it was
fetched, expiring with ``max_age``. So one process's fetch serves the
others, and a restart does not forget policies (which would reopen the
trust-on-first-use window for an attacker able to block the TXT lookup and
the HTTPS fetch at that moment). A small in-process front cache spares a
Redis round trip per delivery; Redis is read again whenever the front entry
is not fresh, and a Redis outage degrades to the front cache alone.

Cache rules: the TXT id is looked up every time (our resolver caches it for
its TTL). A cached policy is fresh while its id equals the TXT id and it is
younger than half its ``max_age``; a fresh policy is used without a fetch.
Otherwise it is refetched (a new id: section 5.1 and 10.2; half the age:
the proactive refresh section 10.2 recommends, so a policy in use never runs
out). A failed lookup or fetch keeps a still-valid cached policy (section
5.1), and a failed refetch is not retried by this process for
:data:`REFETCH_BACKOFF` seconds, so a hung policy server does not cost every
delivery a fetch timeout. Without a cached policy a failure means no policy
(opportunistic TLS), as the RFC requires. A TXT record that vanished keeps
the cached policy too: only ``max_age`` or a new policy ends it.

Everything here blocks (DNS, HTTPS, Redis): callers run
:meth:`PolicyFinder.find` in a thread pool.
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from postroom.logs import get_logger
from postroom.mailauth.mtasts import (
    ENFORCE,
    MAX_AGE_LIMIT,
    MAX_POLICY_BYTES,
    NONE,
    TESTING,
    Policy,
    PolicyError,
    PolicyInvalid,
    mx_matches,
    parse_policy,
    parse_txt,
    policy_strings,
)
from postroom.net.destinations import STRICT, DestinationPolicy
from postroom.net.dns import DNSError, Resolver
from postroom.queue import cache
from postroom.queue.redisclient import RedisClient, RedisError

log = get_logger("mtasts")


FETCH_TIMEOUT = 60.0  # section 3.3 suggests "a minute"
REFETCH_BACKOFF = 300.0  # seconds a failed refetch is not retried while a policy is cached
FRONT_ENTRIES = 1000  # domains in one process's front cache

__all__ = [
    "ENFORCE",
    "MAX_AGE_LIMIT",
    "MAX_POLICY_BYTES",
    "NONE",
    "TESTING",
    "Policy",
    "PolicyError",
    "PolicyFinder",
    "PolicyInvalid",
    "PolicyStore",
    "failure_type",
    "mx_matches",
    "parse_policy",
    "parse_txt",
    "policy_strings",
]


def failure_type(exc: Exception) -> str:
    """The RFC 8460 result type of a failed policy fetch."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "sts-webpki-invalid"
    if isinstance(exc, PolicyInvalid):
        return "sts-policy-invalid"
    return "sts-policy-fetch-error"



class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to ``host`` (SNI, Host, certificate name) over a socket to a chosen address."""

    def __init__(self, host: str, address: str, port: int, context: ssl.SSLContext,
                 timeout: float) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self._address = address
        self._context = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context: ``ca_file`` when set, otherwise the system's CAs."""
    context = ssl.create_default_context(cafile=ca_file) if ca_file else \
        ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def fetch_policy(resolver: Resolver, domain: str, *, port: int = 443,
                 ca_file: str | None = None, timeout: float = FETCH_TIMEOUT,
                 ident: str = "", destinations: DestinationPolicy = STRICT) -> Policy:
    """GET and parse the policy of ``domain``; raises PolicyError (or OSError). Blocking."""
    host = f"mta-sts.{domain}"
    try:
        addresses = list(resolver.a(host)) + list(resolver.aaaa(host))
    except DNSError as exc:
        raise PolicyError(f"{host}: {exc}") from exc
    if not addresses:
        raise PolicyError(f"{host} has no address")
    permitted = [address for address in addresses if destinations.permits(address)]
    if not permitted:
        raise PolicyError(f"{host} points to an internal address ({addresses[0]}); refused")
    conn = _PinnedHTTPS(host, permitted[0], port, tls_context(ca_file), timeout)
    try:
        conn.request("GET", "/.well-known/mta-sts.txt", headers={"Accept": "text/plain"})
        response = conn.getresponse()
        # section 3.3: redirects are not followed, and only a 200 is a policy
        if response.status != 200:
            raise PolicyError(f"HTTP status {response.status}")
        ctype = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "text/plain":
            raise PolicyError(f"content type {ctype[:40]!r}")
        body = response.read(MAX_POLICY_BYTES + 1)
    finally:
        conn.close()
    if len(body) > MAX_POLICY_BYTES:
        raise PolicyInvalid("policy too large")
    return parse_policy(body.decode("utf-8", "replace"), ident)


@dataclass(frozen=True)
class Cached:
    """A policy and when it was fetched (wall-clock seconds, comparable across processes)."""

    policy: Policy
    fetched: float

    @property
    def expires(self) -> float:
        return self.fetched + self.policy.max_age

    def valid(self, now: float) -> bool:
        return now < self.expires

    def fresh(self, ident: str, now: float) -> bool:
        """Usable without a refetch: same id as the TXT record, younger than half max_age."""
        return self.policy.id == ident and now < self.fetched + self.policy.max_age / 2

    def to_json(self) -> str:
        p = self.policy
        return json.dumps({"mode": p.mode, "mx": list(p.mx), "max_age": p.max_age, "id": p.id,
                           "fetched": self.fetched})

    @classmethod
    def from_json(cls, text: str | bytes) -> Cached:
        """Raises ValueError (or KeyError/TypeError) on a value we did not write."""
        data = json.loads(text)
        policy = Policy(str(data["mode"]), tuple(str(m) for m in data["mx"]),
                        int(data["max_age"]), str(data["id"]))
        if policy.mode not in (ENFORCE, TESTING, NONE):
            raise ValueError(f"unknown mode {policy.mode[:20]!r}")
        return cls(policy, float(data["fetched"]))


class PolicyStore:
    """The policy cache shared by all mta processes: a Redis key per domain, TTL max_age."""

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, domain: str) -> str:
        return f"{self.prefix}mta-sts:{domain}"

    def load(self, domain: str) -> Cached | None:
        """The stored policy of ``domain``; None when absent, unreadable or Redis is away."""
        try:
            raw = cache.get(self.client, self.key(domain))
        except RedisError as exc:
            log.warning("mta-sts cache read failed", domain=domain, error=str(exc)[:200])
            return None
        if raw is None:
            return None
        try:
            return Cached.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("mta-sts cache entry unreadable", domain=domain, error=str(exc)[:200])
            return None

    def save(self, domain: str, entry: Cached, now: float) -> None:
        """Store ``entry`` until it expires; a Redis failure is logged, not raised."""
        ttl = int(entry.expires - now)
        if ttl <= 0:
            return
        try:
            cache.put(self.client, self.key(domain), entry.to_json(), ttl)
        except RedisError as exc:
            log.warning("mta-sts cache write failed", domain=domain, error=str(exc)[:200])


class PolicyFinder:
    """The MTA-STS policy of a domain, cached in Redis and in process; thread-safe.

    ``store`` is the shared cache (None: this process's front cache only);
    ``clock`` gives wall-clock seconds (tests move it); ``destinations`` says
    which internal networks the policy host may be in (none by default).
    """

    def __init__(self, resolver: Resolver, *, port: int = 443, ca_file: str | None = None,
                 timeout: float = FETCH_TIMEOUT, store: PolicyStore | None = None,
                 max_entries: int = FRONT_ENTRIES,
                 clock: Callable[[], float] = time.time,
                 destinations: DestinationPolicy = STRICT,
                 on_failure: Callable[[str, str, str], None] | None = None) -> None:
        self.resolver = resolver
        self.destinations = destinations
        # TLS reporting: called with (domain, RFC 8460 result type, detail) when a fetch fails
        self.on_failure = on_failure
        self.port = port
        self.ca_file = ca_file
        self.timeout = timeout
        self.store = store
        self.max_entries = max_entries
        self.clock = clock
        self.fetches = 0  # policy fetches attempted by this finder (for tests and logs)
        self._front: OrderedDict[str, Cached] = OrderedDict()
        self._backoff: dict[str, float] = {}
        self._lock = threading.Lock()

    def cached(self, domain: str) -> Policy | None:
        """The cached, unexpired policy of ``domain`` (front cache, then Redis), if any."""
        entry = self._current(domain.lower().rstrip("."), None, self.clock())
        return entry.policy if entry is not None else None

    def find(self, domain: str) -> Policy | None:
        """The policy to apply to ``domain`` now, or None (no policy). Blocking."""
        domain = domain.lower().rstrip(".")
        now = self.clock()
        entry = self._front_get(domain, now)
        try:
            ident = parse_txt(self.resolver.txt(f"_mta-sts.{domain}"))
        except DNSError as exc:
            log.info("mta-sts txt lookup failed", domain=domain, error=str(exc))
            ident = None
        if ident is None:
            # section 5.1: a cached policy outlives a vanished (or unreadable) TXT record
            entry = self._current(domain, entry, now)
            return entry.policy if entry is not None else None
        if entry is None or not entry.fresh(ident, now):
            shared = self._load(domain, now)  # another process may have refetched it
            if shared is not None and (entry is None or shared.fresh(ident, now)
                                       or shared.fetched > entry.fetched):
                entry = shared
                self._front_put(domain, shared)
        if entry is not None and entry.fresh(ident, now):
            return entry.policy
        with self._lock:
            backoff = self._backoff.get(domain, 0.0)
        if entry is not None and backoff > now:
            return entry.policy
        return self._fetch(domain, ident, entry, now)

    def _fetch(self, domain: str, ident: str, entry: Cached | None, now: float) -> Policy | None:
        self.fetches += 1
        try:
            policy = fetch_policy(self.resolver, domain, port=self.port, ca_file=self.ca_file,
                                  timeout=self.timeout, ident=ident,
                                  destinations=self.destinations)
        except (PolicyError, OSError, http.client.HTTPException) as exc:
            log.warning("mta-sts policy fetch failed", domain=domain, error=str(exc)[:300],
                        cached=entry is not None)
            if self.on_failure is not None:
                self.on_failure(domain, failure_type(exc), str(exc)[:300])
            if entry is None:
                return None
            with self._lock:
                if len(self._backoff) >= self.max_entries:
                    self._backoff.clear()
                self._backoff[domain] = now + REFETCH_BACKOFF
            return entry.policy
        log.info("mta-sts policy fetched", domain=domain, mode=policy.mode, id=ident,
                 max_age=policy.max_age, mx=list(policy.mx),
                 replaced=entry.policy.id if entry is not None else None)
        fetched = Cached(policy, now)
        with self._lock:
            self._backoff.pop(domain, None)
        self._front_put(domain, fetched)
        if self.store is not None:
            self.store.save(domain, fetched, now)
        return policy

    def _current(self, domain: str, entry: Cached | None, now: float) -> Cached | None:
        """``entry`` when valid, else whatever valid policy Redis has."""
        if entry is not None and entry.valid(now):
            return entry
        shared = self._load(domain, now)
        if shared is not None:
            self._front_put(domain, shared)
        return shared

    def _load(self, domain: str, now: float) -> Cached | None:
        if self.store is None:
            return None
        shared = self.store.load(domain)
        return shared if shared is not None and shared.valid(now) else None

    def _front_get(self, domain: str, now: float) -> Cached | None:
        with self._lock:
            entry = self._front.get(domain)
            if entry is None:
                return None
            if not entry.valid(now):
                del self._front[domain]
                return None
            self._front.move_to_end(domain)
            return entry

    def _front_put(self, domain: str, entry: Cached) -> None:
        with self._lock:
            self._front[domain] = entry
            self._front.move_to_end(domain)
            while len(self._front) > self.max_entries:
                self._front.popitem(last=False)
