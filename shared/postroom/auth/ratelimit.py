"""Failed-login limits shared by MSA, POP3 and IMAP: sliding-window counters in Redis.

Two counters guard every password login: one per client (a scanner trying
many accounts) and one per account (a botnet trying one account from many
addresses). Each is a Redis sorted set of failure times under
``<prefix>authfail:ip:<client>`` or ``<prefix>authfail:acct:<sha256 of the
account>``; a login is allowed while both hold fewer than
``limit`` failures younger than ``window`` seconds (an exact sliding window,
so there is no burst of 2 x limit at a window edge). Each set is trimmed to
``limit + 1`` members and expires one window after its last failure, so an
attacker cannot make it grow.

The client is :func:`postroom.net.peers.client_key`: an IPv4 address, or the /64
of an IPv6 one (a host with a /64 has 2**64 addresses to rotate through). The
account is :func:`postroom.store.addresses.login_name`, the same canonical
form login resolution looks the account up by, so every spelling that logs in
to one account (``ALICE@example.com.``, ``<alice@example.com>``, a full-width
domain, trailing dots) is counted on that account's one counter. It is
computed without a store question, before the password is checked, and is the
same whether the account exists or not (unknown-account stuffing is counted
alike, and the limiter's answers say nothing about existence). A name that is
no valid address can never log in and is counted per client only.

The methods block (redis-py): callers run them off the reactor thread, in
the thread pool they use for Redis. When Redis cannot be reached,
:meth:`LoginRateLimiter.check` raises :class:`RateLimitUnavailable` and the
caller must refuse the login with a temporary error (SMTP 454 4.7.0, POP3
``-ERR [SYS/TEMP]``, IMAP ``NO [UNAVAILABLE]``): failing closed keeps the
limit meaningful while Redis is down. :meth:`record_failure` and
:meth:`reset` log and swallow Redis errors, because the login they follow has
already been decided.

A per-account limit lets anyone lock an account out of password logins for
one window by failing on purpose; that is the usual trade-off (Dovecot's
auth penalty, Postfix's anvil) and the window is short by default.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable

from postroom.config import Settings
from postroom.logs import get_logger
from postroom.net.peers import client_key
from postroom.queue import windows
from postroom.queue.redisclient import RedisClient, RedisError
from postroom.store.addresses import login_name

log = get_logger("ratelimit")


class RateLimitUnavailable(Exception):
    """Redis could not be asked; refuse the login with a temporary error."""


def _account_key(account: str) -> str | None:
    """The hashed canonical account (None: the name is no account's), short and opaque."""
    canonical = login_name(account)
    if canonical is None:
        return None
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


# accounts remembered as having no failures (see LoginRateLimiter._clean)
CLEAN_SIZE = 10000


class LoginRateLimiter:
    """Per-address and per-account failed-login counters over a sliding window."""

    def __init__(self, client: RedisClient, prefix: str, limit: int, window: float, *,
                 clock: Callable[[], float] = time.time) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit and window must be positive")
        self.client = client
        self.prefix = prefix
        self.limit = limit
        self.window = window
        self.clock = clock
        # accounts whose last check in this process found no failure: their successful login
        # needs no DELETE (a round trip and a thread hop per login saved). A failure another
        # process records in between then stays counted until the window ends: stricter only.
        self._clean: dict[str, bool] = {}

    @classmethod
    def from_settings(cls, client: RedisClient, settings: Settings) -> LoginRateLimiter:
        """The limiter of POSTROOM_AUTH_FAIL_LIMIT, _AUTH_FAIL_WINDOW and _REDIS_PREFIX."""
        return cls(client, settings.redis_prefix, settings.auth_fail_limit,
                   settings.auth_fail_window)

    def ip_key(self, ip: str) -> str:
        """The counter of the client ``ip`` belongs to (its IPv6 /64)."""
        return f"{self.prefix}authfail:ip:{client_key(ip)}"

    def account_key(self, account: str) -> str | None:
        """The counter of the account ``account`` logs in to; None when no account can."""
        hashed = _account_key(account)
        return None if hashed is None else f"{self.prefix}authfail:acct:{hashed}"

    def _keys(self, ip: str | None, account: str | None) -> tuple[list[str], str | None]:
        """The counters to read or bump, and which of them is the account's."""
        keys = []
        if ip:
            keys.append(self.ip_key(ip))
        acct = self.account_key(account) if account else None
        if acct is not None:
            keys.append(acct)
        return keys, acct

    def check(self, ip: str | None, account: str | None) -> bool:
        """True when a login from ``ip`` for ``account`` may be attempted now.

        Raises RateLimitUnavailable when Redis cannot be reached (fail closed).
        """
        keys, acct = self._keys(ip, account)
        if not keys:
            return True
        oldest = self.clock() - self.window
        try:
            counts = windows.counts_since(self.client, keys, oldest)
        except RedisError as exc:
            log.warning("rate limit check failed", error=str(exc))
            raise RateLimitUnavailable(str(exc)) from None
        if acct is not None:
            if len(self._clean) >= CLEAN_SIZE:
                self._clean.clear()
            if int(counts[-1]) == 0:
                self._clean[acct] = True
            else:
                self._clean.pop(acct, None)
        return all(int(count) < self.limit for count in counts)

    def record_failure(self, ip: str | None, account: str | None) -> None:
        """Count one failed login against ``ip`` and ``account`` (Redis errors are logged only)."""
        keys, acct = self._keys(ip, account)
        if not keys:
            return
        if acct is not None:
            self._clean.pop(acct, None)
        now = self.clock()
        # unique member per failure: two failures in the same microsecond both count
        member = f"{now:.6f}:{secrets.token_hex(4)}"
        try:
            # keep only the newest limit+1: enough to stay over the limit, bounded memory
            windows.record(self.client, keys, member, now, self.window, self.limit + 1)
        except RedisError as exc:
            log.warning("rate limit record failed", error=str(exc))

    def needs_reset(self, account: str) -> bool:
        """False when :meth:`reset` would do nothing: callers then skip the hop to a thread."""
        acct = self.account_key(account)
        if acct is None or self._clean.pop(acct, False):
            return False
        return True

    def reset(self, account: str) -> None:
        """Forget an account's failures after a successful login (Redis errors are logged only).

        Nothing to do, and no Redis call, when this process's check just found none.
        """
        acct = self.account_key(account)
        if acct is None or self._clean.pop(acct, False):
            return
        try:
            windows.forget(self.client, acct)
        except RedisError as exc:
            log.warning("rate limit reset failed", error=str(exc))
