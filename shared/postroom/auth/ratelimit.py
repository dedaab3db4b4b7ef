"""Failed-login limits shared by MSA, POP3 and IMAP: a progressive delay per (client, account)
before a lock of that pair only, and a much higher cap per client across accounts.

The office case decides the shape. Twenty people share one NAT address; one
phone keeps trying an old password. Counting failures per address would lock
the whole office out; counting per account would let anyone lock any account
from anywhere. So, as Dovecot's auth penalty does, the unit is the pair
(client, account):

* before a login is checked, it waits a delay that doubles with the pair's
  failures: 0, 2, 4, 8 s ... up to POSTROOM_AUTH_DELAY_MAX (15 s). The wait is
  a ``callLater`` (no thread held, the reactor free) and comes *before* the
  password is checked, success or not, so a guesser cannot hang up early on a
  slow answer to learn that it is a failure;
* after POSTROOM_AUTH_FAIL_LIMIT failures of the pair within
  POSTROOM_AUTH_FAIL_WINDOW, that pair alone is refused ("too many failed
  logins") until the window has passed since its last failure. The same
  account from elsewhere, and other accounts from the same address, log in;
* POSTROOM_AUTH_ADDRESS_FAIL_LIMIT (much higher) failures from one client
  across all accounts within the window refuse every login from it
  (password spraying);
* clients in POSTROOM_AUTH_TRUSTED_NETWORKS are never refused by either lock;
  the delays still apply to them (they cost a person little and still slow a
  compromised machine inside).

There is no lock per account across clients: it would let any botnet lock any
account out. A distributed guesser is slowed by the delays per pair and by the
per-client cap, and defeated by passwords that are not on the common list
(:func:`postroom.auth.passwords.check_password_strength`).

The client is :func:`postroom.net.peers.client_key` (an IPv4 address, or the
/64 of an IPv6 one). The account is :func:`postroom.store.addresses.login_name`,
so every spelling of one account shares its counters; it is computed without a
store question, the same whether the account exists or not. A name that is no
valid address can never log in and is counted per client only. The state is in
Redis (``postroom.queue.loginfail``): ``<prefix>authfail:pair:<sha256 of the
account>:<client>`` is a counter and ``<prefix>authfail:ip:<client>`` a sliding
window; both expire one window after their last failure. ``postroom auth
unlock`` deletes them.

The methods block (redis-py): callers run them off the reactor thread, in the
thread pool they use for Redis, or call :func:`admit`. When Redis cannot be
reached, :meth:`LoginRateLimiter.check` raises :class:`RateLimitUnavailable`
and the caller refuses the login with a temporary error (SMTP ``454 4.7.0
Temporary authentication failure``, POP3 ``-ERR [SYS/TEMP]``, IMAP ``NO
[UNAVAILABLE]``), never "too many failed logins": failing closed keeps the
limit meaningful while Redis is down. :meth:`record_failure` and :meth:`reset`
log and swallow Redis errors, because the login they follow has already been
decided.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from postroom.config import Network, Settings
from postroom.interfaces import ReactorTime, twisted_clock
from postroom.logs import get_logger
from postroom.metrics import Metrics, login_limits_total
from postroom.net.peers import client_key
from postroom.queue import loginfail
from postroom.queue.redisclient import RedisClient, RedisError
from postroom.store.addresses import login_name

log = get_logger("ratelimit")

#: the first delay, doubled per further failure of the pair
FIRST_DELAY = 2.0


class RateLimitUnavailable(Exception):
    """Redis could not be asked; refuse the login with a temporary error."""


class LoginLocked(Exception):
    """Too many failed logins for this (client, account), or from this client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Verdict:
    """What the limiter says before a login is checked."""

    allowed: bool
    #: seconds to wait before the password is checked (0: none)
    delay: float = 0.0
    #: why not allowed: "pair" (this account from this client) or "address" (this client)
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


def _account_hash(account: str) -> str | None:
    """The hashed canonical account (None: the name is no account's), short and opaque."""
    canonical = login_name(account)
    if canonical is None:
        return None
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def delay_for(failures: int, delay_max: float) -> float:
    """The wait before a login of a pair with ``failures``: 0, 2, 4, 8, ... capped."""
    if failures <= 0 or delay_max <= 0:
        return 0.0
    return min(FIRST_DELAY * 2 ** min(failures - 1, 30), delay_max)


# pairs remembered as having no failures (see LoginRateLimiter._clean)
CLEAN_SIZE = 10000


class LoginRateLimiter:
    """Progressive delays and locks per (client, account), and a cap per client."""

    def __init__(self, client: RedisClient, prefix: str, limit: int, window: float, *,
                 address_limit: int | None = None, delay_max: float = 0.0,
                 trusted: Sequence[Network] = (), metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if limit < 1 or window <= 0 or delay_max < 0:
            raise ValueError("limit and window must be positive, delay_max not negative")
        self.client = client
        self.prefix = prefix
        self.limit = limit
        self.address_limit = address_limit if address_limit is not None else 10 * limit
        if self.address_limit < 1:
            raise ValueError("address_limit must be positive")
        self.window = window
        self.delay_max = delay_max
        self.trusted = tuple(trusted)
        self.clock = clock
        self.metrics = metrics
        if metrics is not None:
            login_limits_total(metrics)  # named on /metrics before the first event
        # pairs whose last check in this process found no failure: their successful login
        # needs no DELETE (a round trip and a thread hop per login saved). A failure another
        # process records in between then stays counted until the window ends: stricter only.
        self._clean: dict[str, bool] = {}

    @classmethod
    def from_settings(cls, client: RedisClient, settings: Settings,
                      metrics: Metrics | None = None) -> LoginRateLimiter:
        """The limiter of the POSTROOM_AUTH_* settings and POSTROOM_REDIS_PREFIX."""
        return cls(client, settings.redis_prefix, settings.auth_fail_limit,
                   settings.auth_fail_window, address_limit=settings.auth_address_fail_limit,
                   delay_max=settings.auth_delay_max, trusted=settings.auth_trusted_networks,
                   metrics=metrics)

    def count(self, outcome: str) -> None:
        """One held-back login in postroom_login_limits_total (delayed, pair, address,
        unavailable)."""
        if self.metrics is not None:
            login_limits_total(self.metrics).labels(outcome=outcome).inc()

    def ip_key(self, ip: str) -> str:
        """The window of the client ``ip`` belongs to (its IPv6 /64)."""
        return f"{self.prefix}authfail:ip:{client_key(ip)}"

    def pair_key(self, ip: str | None, account: str | None) -> str | None:
        """The counter of ``account`` from ``ip``'s client; None when no account can be meant."""
        hashed = _account_hash(account) if account else None
        if hashed is None or not ip:
            return None
        return f"{self.prefix}authfail:pair:{hashed}:{client_key(ip)}"

    def is_trusted(self, ip: str | None) -> bool:
        """True when ``ip`` is in POSTROOM_AUTH_TRUSTED_NETWORKS (never locked out)."""
        if not ip or not self.trusted:
            return False
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address.version == net.version and address in net for net in self.trusted)

    def check(self, ip: str | None, account: str | None) -> Verdict:
        """Whether a login from ``ip`` for ``account`` may be attempted, and after what wait.

        Raises RateLimitUnavailable when Redis cannot be reached (fail closed).
        """
        pair = self.pair_key(ip, account)
        address = self.ip_key(ip) if ip else None
        if pair is None and address is None:
            return Verdict(True)
        try:
            failures, from_client = loginfail.read(self.client, pair, address,
                                                   self.clock() - self.window)
        except RedisError as exc:
            log.warning("rate limit check failed", error=str(exc))
            raise RateLimitUnavailable(str(exc)) from None
        if pair is not None:
            if len(self._clean) >= CLEAN_SIZE:
                self._clean.clear()
            if failures == 0:
                self._clean[pair] = True
            else:
                self._clean.pop(pair, None)
        if not self.is_trusted(ip):
            if failures >= self.limit:
                return Verdict(False, reason="pair")
            if from_client >= self.address_limit:
                return Verdict(False, reason="address")
        return Verdict(True, delay_for(failures, self.delay_max))

    def record_failure(self, ip: str | None, account: str | None) -> None:
        """Count one failed login of ``account`` from ``ip`` (Redis errors are logged only)."""
        pair = self.pair_key(ip, account)
        address = self.ip_key(ip) if ip else None
        if pair is None and address is None:
            return
        if pair is not None:
            self._clean.pop(pair, None)
        now = self.clock()
        # unique member per failure: two failures in the same microsecond both count
        member = f"{now:.6f}:{secrets.token_hex(4)}"
        try:
            # the window keeps only the newest limit+1: enough to stay over it, bounded memory
            loginfail.record(self.client, pair, address, member, now, self.window,
                             self.address_limit + 1)
        except RedisError as exc:
            log.warning("rate limit record failed", error=str(exc))

    def needs_reset(self, ip: str | None, account: str) -> bool:
        """False when :meth:`reset` would do nothing: callers then skip the hop to a thread."""
        pair = self.pair_key(ip, account)
        if pair is None or self._clean.pop(pair, False):
            return False
        return True

    def reset(self, ip: str | None, account: str) -> None:
        """Forget the pair's failures after a successful login (Redis errors are logged only).

        The client's window is kept: a success does not excuse failures on other accounts.
        """
        pair = self.pair_key(ip, account)
        if pair is None or self._clean.pop(pair, False):
            return
        try:
            loginfail.forget(self.client, pair)
        except RedisError as exc:
            log.warning("rate limit reset failed", error=str(exc))

    def unlock(self, account: str | None, ip: str | None = None) -> int:
        """Forget failures (``postroom auth unlock``): of ``account`` from everywhere, of the
        pair (``account``, ``ip``) and ``ip``'s window, or with no account everything of ``ip``.
        How many keys were deleted; ValueError when ``account`` is no login name."""
        if account is None and ip is None:
            raise ValueError("name an account, an address, or both")
        hashed = None
        if account is not None:
            hashed = _account_hash(account)
            if hashed is None:
                raise ValueError(f"{account!r} is no account's login name")
        base = f"{_glob_escape(self.prefix)}authfail:pair:"
        if ip is None:
            return loginfail.forget_matching(self.client, f"{base}{hashed}:*")
        deleted = loginfail.forget(self.client, self.ip_key(ip))
        if hashed is None:
            return deleted + loginfail.forget_matching(
                self.client, f"{base}*:{_glob_escape(client_key(ip))}")
        pair = self.pair_key(ip, account)
        assert pair is not None
        return deleted + loginfail.forget(self.client, pair)


@dataclass(frozen=True)
class PairState:
    """One (client, account) pair's failures, for `postroom auth status`."""

    client: str
    failures: int
    #: seconds until the pair's failures are forgotten
    expires_in: float
    locked: bool
    #: the wait before its next login is checked
    next_delay: float


def status(limiter: LoginRateLimiter, account: str | None,
           ip: str | None = None) -> tuple[list[PairState], int | None]:
    """The pairs of ``account`` with failures (from ``ip``'s client only, when given; every
    account's from it when ``account`` is None), and the failures from ``ip``'s client across
    accounts (None without ``ip``). ValueError when ``account`` is no login name."""
    if account is None and ip is None:
        raise ValueError("name an account, an address, or both")
    hashed = "*"
    if account is not None:
        found = _account_hash(account)
        if found is None:
            raise ValueError(f"{account!r} is no account's login name")
        hashed = found
    where = _glob_escape(client_key(ip)) if ip is not None else "*"
    raw = f"{limiter.prefix}authfail:pair:"
    pattern = f"{_glob_escape(raw)}{hashed}:{where}"
    pairs = []
    for key, failures, ttl_ms in loginfail.counters(limiter.client, pattern):
        client = key[len(raw) + 65:]  # after the 64 hex digits of the account and a colon
        locked = failures >= limiter.limit and not limiter.is_trusted(client.split("/")[0])
        pairs.append(PairState(client, failures, max(ttl_ms, 0) / 1000, locked,
                               0.0 if locked else delay_for(failures, limiter.delay_max)))
    from_client = None
    if ip is not None:
        from_client, _ = loginfail.window_size(limiter.client, limiter.ip_key(ip),
                                               limiter.clock() - limiter.window)
    return sorted(pairs, key=lambda p: p.client), from_client


async def admit(limiter: LoginRateLimiter, reactor: ReactorTime,
                hop: Callable[..., Deferred[Any]], ip: str | None, account: str, *,
                wait: bool = True) -> None:
    """Ask the limiter (through ``hop``, the caller's way to its Redis thread pool) and wait
    the pair's delay on the reactor's clock; the one gate every password login goes through.

    Raises RateLimitUnavailable (answer a temporary failure) or LoginLocked (answer "too many
    failed logins"). ``wait=False`` skips the delay, for the second half of a SCRAM exchange
    whose first half (the secrets' lookup) waited already.
    """
    try:
        verdict: Verdict = await hop(limiter.check, ip, account)
    except RateLimitUnavailable:
        limiter.count("unavailable")
        raise
    if not verdict.allowed:
        limiter.count(verdict.reason)
        log.warning("login locked out", peer=ip, account=account[:256], reason=verdict.reason)
        raise LoginLocked(verdict.reason)
    if wait and verdict.delay > 0:
        limiter.count("delayed")
        log.info("login delayed", peer=ip, account=account[:256], delay=verdict.delay)
        await deferLater(twisted_clock(reactor), verdict.delay, lambda: None)
