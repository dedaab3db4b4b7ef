"""Failed-login limits shared by MSA, POP3 and IMAP: sliding-window counters in Redis.

Two counters guard every password login: one per client address (a scanner
trying many accounts) and one per account (a botnet trying one account from
many addresses). Each is a Redis sorted set of failure times under
``<prefix>authfail:ip:<address>`` or ``<prefix>authfail:acct:<sha256 of the
lowercased account>``; a login is allowed while both hold fewer than
``limit`` failures younger than ``window`` seconds (an exact sliding window,
so there is no burst of 2 x limit at a window edge). Each set is trimmed to
``limit + 1`` members and expires one window after its last failure, so an
attacker cannot make it grow.

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
from typing import Any

import redis

from postroom.config import Settings
from postroom.logs import get_logger

log = get_logger("ratelimit")


class RateLimitUnavailable(Exception):
    """Redis could not be asked; refuse the login with a temporary error."""


def _account_key(account: str) -> str:
    # hashed: the account is whatever the client typed, and keys should stay short and opaque
    return hashlib.sha256(account.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()


# accounts remembered as having no failures (see LoginRateLimiter._clean)
CLEAN_SIZE = 10000


class LoginRateLimiter:
    """Per-address and per-account failed-login counters over a sliding window."""

    def __init__(self, client: redis.Redis, prefix: str, limit: int, window: float, *,
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
    def from_settings(cls, client: redis.Redis, settings: Settings) -> LoginRateLimiter:
        """The limiter of POSTROOM_AUTH_FAIL_LIMIT, _AUTH_FAIL_WINDOW and _REDIS_PREFIX."""
        return cls(client, settings.redis_prefix, settings.auth_fail_limit,
                   settings.auth_fail_window)

    def ip_key(self, ip: str) -> str:
        return f"{self.prefix}authfail:ip:{ip}"

    def account_key(self, account: str) -> str:
        return f"{self.prefix}authfail:acct:{_account_key(account)}"

    def _keys(self, ip: str | None, account: str | None) -> list[str]:
        keys = []
        if ip:
            keys.append(self.ip_key(ip))
        if account:
            keys.append(self.account_key(account))
        return keys

    def check(self, ip: str | None, account: str | None) -> bool:
        """True when a login from ``ip`` for ``account`` may be attempted now.

        Raises RateLimitUnavailable when Redis cannot be reached (fail closed).
        """
        keys = self._keys(ip, account)
        if not keys:
            return True
        oldest = self.clock() - self.window
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.zremrangebyscore(key, "-inf", oldest)
                pipe.zcard(key)
            replies: list[Any] = pipe.execute()
        except redis.RedisError as exc:
            log.warning("rate limit check failed", error=str(exc))
            raise RateLimitUnavailable(str(exc)) from None
        counts = replies[1::2]
        if account:
            if len(self._clean) >= CLEAN_SIZE:
                self._clean.clear()
            if int(counts[-1]) == 0:
                self._clean[self.account_key(account)] = True
            else:
                self._clean.pop(self.account_key(account), None)
        return all(int(count) < self.limit for count in counts)

    def record_failure(self, ip: str | None, account: str | None) -> None:
        """Count one failed login against ``ip`` and ``account`` (Redis errors are logged only)."""
        keys = self._keys(ip, account)
        if not keys:
            return
        if account:
            self._clean.pop(self.account_key(account), None)
        now = self.clock()
        # unique member per failure: two failures in the same microsecond both count
        member = f"{now:.6f}:{secrets.token_hex(4)}"
        ttl_ms = max(1, int(self.window * 1000))
        try:
            pipe = self.client.pipeline(transaction=True)
            for key in keys:
                pipe.zadd(key, {member: now})
                pipe.zremrangebyscore(key, "-inf", now - self.window)
                # keep only the newest limit+1: enough to stay over the limit, bounded memory
                pipe.zremrangebyrank(key, 0, -(self.limit + 2))
                pipe.pexpire(key, ttl_ms)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("rate limit record failed", error=str(exc))

    def needs_reset(self, account: str) -> bool:
        """False when :meth:`reset` would do nothing: callers then skip the hop to a thread."""
        if self._clean.pop(self.account_key(account), False):
            return False
        return True

    def reset(self, account: str) -> None:
        """Forget an account's failures after a successful login (Redis errors are logged only).

        Nothing to do, and no Redis call, when this process's check just found none.
        """
        if self._clean.pop(self.account_key(account), False):
            return
        try:
            self.client.delete(self.account_key(account))
        except redis.RedisError as exc:
            log.warning("rate limit reset failed", error=str(exc))
