"""The ManageSieve Authority and Scripts over the store (PostgreSQL) and the shared limiter.

Logins go through the one check every mail protocol uses
(``postroom.store.apppasswords.authenticate(..., protocol="managesieve")``:
the main password, or an app password allowed for ManageSieve) behind the
shared failed-login limits (``postroom.auth.ratelimit``, in Redis). Scripts
are ``postroom.store.sieve``'s; the limits (POSTROOM_SIEVE_MAX_SCRIPTS and
POSTROOM_SIEVE_MAX_SCRIPT_BYTES) are checked in the same transaction as the
write. Checking a script (``postroom.sieve.check_script``) runs in a worker
thread, never on the reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from postroom.auth import logincheck
from postroom.auth.ratelimit import LoginLocked, LoginRateLimiter, RateLimitUnavailable, admit
from postroom.auth.sasl import ScramSecrets
from postroom.interfaces import ReactorThreads, defer_to_pool, global_reactor
from postroom.logs import get_logger
from postroom.metrics import Metrics, login_credentials_total
from postroom.sieve import SieveError, check_script
from postroom.store import apppasswords, users
from postroom.store import sieve as store_sieve
from postroom.store.db import Database, DatabaseError, StoreSession
from postroom.store.errors import AlreadyExists, InUse, InvalidName
from postroom_managesieve.policy import (
    AppPasswordRequired,
    AuthFailed,
    LoginDelayed,
    ScriptRefused,
    TemporaryFailure,
)

log = get_logger("managesieve")

T = TypeVar("T")

MAXSCRIPTS = "QUOTA/MAXSCRIPTS"
MAXSIZE = "QUOTA/MAXSIZE"


# --- store work (run in the db pool; plain data only crosses back)


def _space(session: StoreSession, user_id: int, name: str, size: int, max_scripts: int,
           max_bytes: int) -> None:
    """ScriptRefused when a script of ``size`` octets under ``name`` would not fit."""
    if size > max_bytes:
        raise ScriptRefused(f"a script is at most {max_bytes} octets", MAXSIZE)
    count, _octets = store_sieve.scripts_usage(session, user_id)
    if store_sieve.get_script(session, user_id, name) is None and count >= max_scripts:
        raise ScriptRefused(f"at most {max_scripts} scripts per account", MAXSCRIPTS)


def have_space(session: StoreSession, user_id: int, name: str, size: int, max_scripts: int,
               max_bytes: int) -> None:
    try:
        store_sieve.check_name(name)
    except InvalidName as exc:
        raise ScriptRefused(str(exc)) from None
    _space(session, user_id, name, size, max_scripts, max_bytes)


def put(session: StoreSession, user_id: int, name: str, text: str, max_scripts: int,
        max_bytes: int) -> None:
    have_space(session, user_id, name, len(text.encode("utf-8")), max_scripts, max_bytes)
    store_sieve.put_script(session, user_id, name, text)


def get(session: StoreSession, user_id: int, name: str) -> str:
    text = store_sieve.get_script(session, user_id, name)
    if text is None:
        raise ScriptRefused("there is no such script", "NONEXISTENT")
    return text


def listing(session: StoreSession, user_id: int) -> list[tuple[str, bool]]:
    return [(s.name, s.active) for s in store_sieve.list_scripts(session, user_id)]


def set_active(session: StoreSession, user_id: int, name: str | None) -> None:
    if not store_sieve.set_active(session, user_id, name):
        raise ScriptRefused("there is no such script", "NONEXISTENT")


def delete(session: StoreSession, user_id: int, name: str) -> None:
    try:
        found = store_sieve.delete_script(session, user_id, name)
    except InUse:
        raise ScriptRefused("the script is active: deactivate it first", "ACTIVE") from None
    if not found:
        raise ScriptRefused("there is no such script", "NONEXISTENT")


def rename(session: StoreSession, user_id: int, old: str, new: str) -> None:
    try:
        found = store_sieve.rename_script(session, user_id, old, new)
    except InvalidName as exc:
        raise ScriptRefused(str(exc)) from None
    except AlreadyExists:
        raise ScriptRefused("a script of that name exists", "ALREADYEXISTS") from None
    if not found:
        raise ScriptRefused("there is no such script", "NONEXISTENT")


# --- the Authority and Scripts the protocol talks to


class StoreAuthority:
    """Logs users in against the store (with the shared limiter); hands out their scripts."""

    def __init__(self, database: Database, redis_pool: ThreadPool, check_pool: ThreadPool, *,
                 limiter: LoginRateLimiter | None, max_scripts: int, max_bytes: int,
                 reactor: ReactorThreads | None = None,
                 metrics: Metrics | None = None) -> None:
        self.credentials = login_credentials_total(metrics) if metrics is not None else None
        self.database = database
        self.redis_pool = redis_pool
        self.check_pool = check_pool
        self.limiter = limiter
        self.max_scripts = max_scripts
        self.max_bytes = max_bytes
        self.reactor = reactor if reactor is not None else global_reactor()

    def in_redis_thread(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        return defer_to_pool(self.reactor, self.redis_pool, fn, *args)

    async def _allowed_to_try(self, username: str, peer: str, *, wait: bool = True) -> None:
        if self.limiter is None:
            return
        try:
            # the pair's delay is waited here, on the reactor's clock, before scrypt
            await admit(self.limiter, self.reactor, self.in_redis_thread, peer, username,
                        wait=wait)
        except RateLimitUnavailable:
            raise TemporaryFailure() from None
        except LoginLocked:
            raise LoginDelayed() from None

    def login(self, username: str, password: str, peer: str) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._login(username, password, peer))

    async def _login(self, username: str, password: str, peer: str) -> StoreScripts:
        await self._allowed_to_try(username, peer)
        try:
            login = await logincheck.authenticate(self.database, username, password,
                                               protocol="managesieve", peer=peer)
        except DatabaseError as exc:
            log.error("authentication lookup failed", error=str(exc))
            raise TemporaryFailure() from None
        if self.credentials is not None and login.credential is not None:
            self.credentials.labels(credential=login.credential).inc()
        return await self._outcome(login.user, username, peer, login.refusal)

    async def _outcome(self, info: users.UserInfo | None, username: str, peer: str,
                       refusal: str | None = None) -> StoreScripts:
        if info is None:
            if self.limiter is not None:
                await self.in_redis_thread(self.limiter.record_failure, peer, username)
            if refusal == apppasswords.TWO_FACTOR_REFUSAL:
                raise AppPasswordRequired()
            raise AuthFailed()
        if self.limiter is not None and self.limiter.needs_reset(peer, username):
            await self.in_redis_thread(self.limiter.reset, peer, username)
        return StoreScripts(self, info.id, info.address)

    def scram_secrets(self, username: str, peer: str) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._scram_secrets(username, peer))

    async def _scram_secrets(self, username: str, peer: str) -> ScramSecrets | None:
        # a locked-out client gets no real secrets, so the server-final message cannot
        # tell it whether a guess was right; login_verified then refuses it
        try:
            await self._allowed_to_try(username, peer)
        except (TemporaryFailure, LoginDelayed):
            return None
        try:
            found: ScramSecrets | None = await self.database.run(users.scram_secrets_for,
                                                                 username)
        except DatabaseError as exc:
            log.warning("scram lookup failed", error=str(exc))
            return None
        return found

    def login_verified(self, username: str, verified: bool, peer: str) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._login_verified(username, verified, peer))

    async def _login_verified(self, username: str, verified: bool, peer: str) -> StoreScripts:
        await self._allowed_to_try(username, peer, wait=False)
        info = None
        if verified:
            try:
                info = await self.database.run(users.get_active_user, username)
            except DatabaseError as exc:
                log.error("authentication lookup failed", error=str(exc))
                raise TemporaryFailure() from None
        return await self._outcome(info, username, peer)


class StoreScripts:
    """One logged-in account's scripts (policy.Scripts over postroom.store.sieve)."""

    def __init__(self, authority: StoreAuthority, user_id: int, address: str) -> None:
        self.authority = authority
        self.user_id = user_id
        self.address = address

    def _run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        d: Deferred[Any] = self.authority.database.run(fn, self.user_id, *args)

        def unavailable(failure: Any) -> Any:
            if failure.check(DatabaseError):
                log.warning("database unavailable", error=failure.getErrorMessage()[:300])
                raise TemporaryFailure()
            return failure

        return d.addErrback(unavailable)

    def list(self) -> Deferred[list[tuple[str, bool]]]:
        return self._run(listing)

    def get(self, name: str) -> Deferred[str]:
        return self._run(get, name)

    def check(self, text: str) -> Deferred[Sequence[SieveError]]:
        authority = self.authority
        return defer_to_pool(authority.reactor, authority.check_pool, _check, text,
                             authority.max_bytes)

    def have_space(self, name: str, size: int) -> Deferred[None]:
        return self._run(have_space, name, size, self.authority.max_scripts,
                         self.authority.max_bytes)

    def put(self, name: str, text: str) -> Deferred[None]:
        return self._run(put, name, text, self.authority.max_scripts, self.authority.max_bytes)

    def set_active(self, name: str | None) -> Deferred[None]:
        return self._run(set_active, name)

    def delete(self, name: str) -> Deferred[None]:
        return self._run(delete, name)

    def rename(self, old: str, new: str) -> Deferred[None]:
        return self._run(rename, old, new)


def _check(text: str, max_bytes: int) -> list[SieveError]:
    return check_script(text, max_bytes=max_bytes)
