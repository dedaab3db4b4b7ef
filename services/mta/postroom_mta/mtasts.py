"""MTA-STS (RFC 8461): discover, fetch, cache and apply a recipient domain's TLS policy.

Discovery is the ``_mta-sts.<domain>`` TXT record (``v=STSv1; id=...``);
the policy is fetched over HTTPS from
``https://mta-sts.<domain>/.well-known/mta-sts.txt`` with the certificate
verified against ``mta-sts.<domain>`` (system CAs, or POSTROOM_TLS_CA_FILE).
The fetch connects to the address our own resolver gives for that name, so
tests (and split-horizon set-ups) see exactly the DNS the relay uses.

Caching is in process memory, per domain, until ``max_age`` runs out
(RFC 8461 section 5.1). The trade-off, accepted for now: every mta process
fetches on its own, and a restart forgets the policies, which reopens the
trust-on-first-use window an attacker who can block DNS and HTTPS at that
moment could use to downgrade. A shared cache (Redis) is the TODO.

Cache rules: a TXT id equal to the cached policy's keeps it without a fetch;
a new id refetches; a failed lookup or fetch keeps a still-valid cached
policy (section 5.1), and without one the domain has no policy (opportunistic
TLS), as the RFC requires.

Everything here blocks (DNS, HTTPS): callers run :meth:`PolicyFinder.find`
in a thread pool.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from postroom.dns import DNSError, Resolver
from postroom.logs import get_logger

log = get_logger("mtasts")

ENFORCE, TESTING, NONE = "enforce", "testing", "none"
MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 section 3.3 lets us cap it
MAX_AGE_LIMIT = 31557600  # one year, section 3.2
FETCH_TIMEOUT = 60.0  # section 3.3 suggests "a minute"
_TXT_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class PolicyError(ValueError):
    """A TXT record or policy body that does not follow RFC 8461."""


@dataclass(frozen=True)
class Policy:
    """A parsed policy: ``mode``, the ``mx`` patterns and ``max_age`` seconds."""

    mode: str
    mx: tuple[str, ...]
    max_age: int
    id: str = ""

    @property
    def enforced(self) -> bool:
        return self.mode == ENFORCE

    def allows(self, host: str) -> bool:
        """Whether MX ``host`` matches one of the policy's ``mx`` patterns (section 4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """``mx.example.com`` matches itself; ``*.example.com`` matches exactly one more label."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, _dot, rest = host.partition(".")
        return bool(label) and rest == pattern[2:]
    return host == pattern


def parse_txt(records: list[str]) -> str | None:
    """The policy id from the ``_mta-sts`` TXT records; None unless exactly one is STSv1."""
    candidates = [r for r in records if r.startswith("v=STSv1")]
    if len(candidates) != 1:
        return None  # none, or several: section 3.1 says treat as no policy
    fields: dict[str, str] = {}
    for part in candidates[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    if fields.get("v") != "STSv1":
        return None
    ident = fields.get("id", "")
    return ident if _TXT_ID.match(ident) else None


def parse_policy(text: str, ident: str = "") -> Policy:
    """The policy in a ``mta-sts.txt`` body; raises PolicyError."""
    fields: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"line without a colon: {line[:80]!r}")
        fields.setdefault(key.strip(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyError("version is not STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in (ENFORCE, TESTING, NONE):
        raise PolicyError(f"unknown mode {mode[:20]!r}")
    try:
        max_age = int((fields.get("max_age") or [""])[0])
    except ValueError:
        raise PolicyError("max_age is not an integer") from None
    if max_age < 0:
        raise PolicyError("max_age is negative")
    mx = tuple(m.lower() for m in fields.get("mx", []) if m)
    if mode != NONE and not mx:
        raise PolicyError("no mx patterns")
    return Policy(mode, mx, min(max_age, MAX_AGE_LIMIT), ident)


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
                 ident: str = "") -> Policy:
    """GET and parse the policy of ``domain``; raises PolicyError (or OSError). Blocking."""
    host = f"mta-sts.{domain}"
    try:
        addresses = list(resolver.a(host)) + list(resolver.aaaa(host))
    except DNSError as exc:
        raise PolicyError(f"{host}: {exc}") from exc
    if not addresses:
        raise PolicyError(f"{host} has no address")
    conn = _PinnedHTTPS(host, addresses[0], port, tls_context(ca_file), timeout)
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
        raise PolicyError("policy too large")
    return parse_policy(body.decode("utf-8", "replace"), ident)


@dataclass
class _Cached:
    policy: Policy
    expires: float


class PolicyFinder:
    """The MTA-STS policy of a domain, with the per-process cache; thread-safe."""

    def __init__(self, resolver: Resolver, *, port: int = 443, ca_file: str | None = None,
                 timeout: float = FETCH_TIMEOUT, max_entries: int = 10000) -> None:
        self.resolver = resolver
        self.port = port
        self.ca_file = ca_file
        self.timeout = timeout
        self.max_entries = max_entries
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def cached(self, domain: str) -> Policy | None:
        """The cached, unexpired policy of ``domain``, if any."""
        with self._lock:
            entry = self._cache.get(domain.lower())
        if entry is None or entry.expires <= time.monotonic():
            return None
        return entry.policy

    def find(self, domain: str) -> Policy | None:
        """The policy to apply to ``domain`` now, or None (no policy). Blocking."""
        domain = domain.lower().rstrip(".")
        cached = self.cached(domain)
        try:
            ident = parse_txt(self.resolver.txt(f"_mta-sts.{domain}"))
        except DNSError as exc:
            log.info("mta-sts txt lookup failed", domain=domain, error=str(exc))
            return cached
        if ident is None:
            return cached  # section 5.1: a cached policy outlives a vanished TXT record
        if cached is not None and cached.id == ident:
            return cached
        try:
            policy = fetch_policy(self.resolver, domain, port=self.port, ca_file=self.ca_file,
                                  timeout=self.timeout, ident=ident)
        except (PolicyError, OSError, http.client.HTTPException) as exc:
            log.warning("mta-sts policy fetch failed", domain=domain, error=str(exc)[:300])
            return cached
        log.info("mta-sts policy fetched", domain=domain, mode=policy.mode, id=ident,
                 max_age=policy.max_age, mx=list(policy.mx))
        with self._lock:
            if len(self._cache) >= self.max_entries:
                self._cache.pop(next(iter(self._cache)))
            self._cache[domain] = _Cached(policy, time.monotonic() + policy.max_age)
        return policy
