"""The MSA's SMTPPolicy: AUTH against the store, owned senders, known local recipients, limits.

Submission (RFC 6409) needs AUTH (the engine answers 530 5.7.0 before it),
and AUTH PLAIN/LOGIN/SCRAM-SHA-256 needs TLS (the engine neither offers nor accepts
them in cleartext unless :meth:`MSAPolicy.allow_auth_without_tls` says so, which only
POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK does, for loopback peers). Password
checks run on the hash pool outside any transaction (postroom.auth.logincheck; scrypt
is slow on purpose), SCRAM secret look-ups in the `db` pool, the failed-login
limiter and the sending limits in the `redis` pool: never on the reactor. A failed SCRAM
proof counts as a failed login like a wrong PLAIN password.

PLAIN/LOGIN take the main password, or an app password allowed for
``submission`` (:func:`postroom.store.apppasswords.authenticate`); with
two-factor login on, only app passwords (535 says so). Successful checks are
remembered for 60 s in an :class:`~postroom.auth.authcache.AuthCache`, as the
IMAP service does: a client that logs in again with the same password skips
scrypt (tens of milliseconds of CPU). The failed-login limiter is still asked
first, and a failed login drops the account's entries; a revoked app password
or a password changed elsewhere is announced on Redis and dropped within
milliseconds (postroom.auth.authcache.CacheInvalidation), at worst at the
end of the cache's lifetime (docs/msa.md).
MAIL FROM with the account's own address needs no store question and does
not go through the `db` pool. The sending counters are read once per mail
transaction, at MAIL, and RCPT checks against that reading; a reading (or the counts the
account's last commit returned) less than a second old answers the next MAIL without Redis
(postroom_msa.limits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from postroom.auth import logincheck
from postroom.auth.authcache import AuthCache
from postroom.auth.ratelimit import LoginLocked, LoginRateLimiter, RateLimitUnavailable, admit
from postroom.auth.sasl import (
    Credentials,
    PasswordCredentials,
    ScramSecrets,
    VerifiedCredentials,
)
from postroom.interfaces import ReactorThreads, defer_to_pool
from postroom.logs import get_logger
from postroom.metrics import Metrics, login_credentials_total
from postroom.net.clamd import ClamdClient
from postroom.net.peers import is_loopback
from postroom.smtp import replies as R
from postroom.smtp.grammar import Address, MailParams, RcptParams
from postroom.smtp.policy import BasePolicy
from postroom.smtp.replies import Reply
from postroom.smtp.session import Envelope, Session
from postroom.store import apppasswords, users
from postroom.store.db import Database
from postroom_msa import lookups
from postroom_msa import replies as M
from postroom_msa.limits import LimitUnavailable, Reading, SendingLimits
from postroom_msa.submission import LOCAL_RECIPIENTS, Submitter

log = get_logger("msa")

# session.extra key: the sending usage read at MAIL, for the transaction's RCPTs
_USAGE = "msa_usage"
# existing local recipients remembered for every session of the process, briefly (as the
# mta's RCPT does): how long, and how many at most
KNOWN_SECONDS = 5.0
KNOWN_SIZE = 10000


class MSAPolicy(BasePolicy):
    """Decisions of the submission listeners (587/2525 with STARTTLS, 465 implicit TLS)."""

    offer_auth = True
    # accounts whose password predates stored SCRAM secrets fail SCRAM like a wrong password
    offer_scram = True
    require_auth_for_mail = True

    def __init__(self, database: Database, *, limiter: LoginRateLimiter, limits: SendingLimits,
                 submitter: Submitter, redis_pool: ThreadPool, reactor: ReactorThreads,
                 allow_plaintext_auth_on_loopback: bool = False,
                 auth_cache: AuthCache[users.UserInfo] | None = None,
                 virus_scanner: ClamdClient | None = None,
                 metrics: Metrics | None = None) -> None:
        self.database = database
        self.credentials = login_credentials_total(metrics) if metrics is not None else None
        # POSTROOM_MSA_VIRUS_SCAN with POSTROOM_CLAMD_ADDRESS: outgoing mail is scanned too
        self.virus_scanner = virus_scanner
        # repeated PLAIN/LOGIN logins skip scrypt for a minute (postroom.auth.authcache)
        self.auth_cache: AuthCache[users.UserInfo] = (
            auth_cache if auth_cache is not None else AuthCache())
        self.limiter = limiter
        self.limits = limits
        self.submitter = submitter
        self.redis_pool = redis_pool
        self.reactor = reactor
        self.allow_plaintext_auth_on_loopback = allow_plaintext_auth_on_loopback
        # RCPT addresses found LOCAL, with when (see _classify)
        self._known: dict[str, float] = {}

    def _redis(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return defer_to_pool(self.reactor, self.redis_pool, fn, *args)

    def allow_auth_without_tls(self, session: Session) -> bool:
        return self.allow_plaintext_auth_on_loopback and is_loopback(session.peer_ip)

    # --- AUTH

    def scram_secrets(self, session: Session, username: str) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._scram_secrets(session, username))

    async def _scram_secrets(self, session: Session, username: str) -> ScramSecrets | None:
        # a locked-out client gets no real secrets, so the server-final message cannot
        # tell it whether a guess was right; authenticate() then answers 454
        try:
            await admit(self.limiter, self.reactor, self._redis, session.peer_ip, username)
        except (RateLimitUnavailable, LoginLocked):
            return None
        found: ScramSecrets | None = await self.database.run(lookups.scram_secrets, username)
        return found

    def authenticate(self, session: Session, credentials: Credentials) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._authenticate(session, credentials))

    async def _authenticate(self, session: Session, credentials: Credentials) -> Any:
        account = credentials.username
        slog = log.bind(session=session.id, peer=session.peer_ip, account=account,
                        mechanism=credentials.mechanism)
        try:
            # a SCRAM exchange waited the delay when its secrets were looked up
            await admit(self.limiter, self.reactor, self._redis, session.peer_ip, account,
                        wait=not isinstance(credentials, VerifiedCredentials))
        except RateLimitUnavailable:
            slog.warning("login refused", reason="rate limiter unavailable")
            return M.AUTH_UNAVAILABLE
        except LoginLocked as exc:
            slog.warning("login refused", reason="too many failed logins", lock=exc.reason)
            return M.LOGIN_DELAYED
        user = None
        refusal = None
        # an authzid naming someone else would be proxy authentication: not offered
        if isinstance(credentials, PasswordCredentials) and \
                credentials.authzid in ("", credentials.username):
            user = self.auth_cache.get(account, credentials.password)
            if user is None:
                # the main password, or an app password allowed for submission
                # (remembered unless the account's credentials changed while checked)
                login = await logincheck.authenticate(self.database, account,
                                                   credentials.password, protocol="submission",
                                                   peer=session.peer_ip, cache=self.auth_cache)
                user, refusal = login.user, login.refusal
                if self.credentials is not None and login.credential is not None:
                    self.credentials.labels(credential=login.credential).inc()
                if user is not None and login.app_password is not None:
                    slog = slog.bind(app_password=login.app_password)
        elif isinstance(credentials, VerifiedCredentials) and credentials.verified and \
                credentials.authzid in ("", credentials.username):
            user = await self.database.run(lookups.scram_login, account)
        if user is None:
            self.auth_cache.invalidate(account)
            await self._redis(self.limiter.record_failure, session.peer_ip, account)
            if refusal == apppasswords.TWO_FACTOR_REFUSAL:
                slog.warning("login failed", reason="app password required")
                return M.APP_PASSWORD_REQUIRED
            slog.warning("login failed", reason="bad credentials")
            return None
        if self.limiter.needs_reset(session.peer_ip, account):
            await self._redis(self.limiter.reset, session.peer_ip, account)
        slog.info("login succeeded", user=user.address)
        return user

    # --- envelope

    def mail_from(self, session: Session, path: Address | None,
                  params: MailParams) -> Deferred[Reply]:
        return Deferred.fromCoroutine(self._mail_from(session, path))

    async def _mail_from(self, session: Session, path: Address | None) -> Reply:
        user = session.identity
        slog = log.bind(session=session.id, peer=session.peer_ip, user=user.address)
        session.extra.pop(_USAGE, None)
        session.extra.pop(LOCAL_RECIPIENTS, None)
        # the null path is allowed (MDNs use it, RFC 8098); the From: check still applies
        if path is not None and not lookups.owns_trivially(user.address, str(path)):
            owned = await self.database.run(lookups.owns_address, user.id, user.address,
                                            str(path))
            if not owned:
                slog.warning("sender refused", reason="not owned", mail_from=str(path))
                self.submitter.count_refusal("sender_not_owned")
                return M.SENDER_NOT_OWNED
        # the account's counters as this process last read them or its last commit left
        # them, when that was less than a second ago (postroom_msa.limits); else Redis
        usage = self.limits.recent(user.id)
        if usage is None:
            try:
                reading: Reading = await self._redis(self.limits.read, user.id)
            except LimitUnavailable as exc:
                slog.warning("sender deferred", reason="sending limits unavailable",
                             error=str(exc))
                return M.TRY_LATER
            usage = self.limits.remember(user.id, reading)
        if not self.limits.message_fits(usage):
            slog.warning("sending limit reached", limit="messages per hour",
                         value=self.limits.messages_per_hour)
            self.submitter.count_refusal("message_limit")
            return M.MESSAGE_LIMIT
        session.extra[_USAGE] = usage
        return R.SENDER_OK

    def rcpt_to(self, session: Session, path: Address,
                params: RcptParams) -> Deferred[Reply]:
        return Deferred.fromCoroutine(self._rcpt_to(session, path))

    async def _rcpt_to(self, session: Session, path: Address) -> Reply:
        user = session.identity
        slog = log.bind(session=session.id, peer=session.peer_ip, user=user.address)
        if not path.domain or path.domain.startswith("["):
            return M.BAD_RECIPIENT
        verdict = await self._classify(str(path))
        if verdict == lookups.INVALID:
            return M.BAD_RECIPIENT
        if verdict == lookups.UNKNOWN:
            slog.info("recipient refused", reason="no such local recipient", rcpt=str(path))
            return M.NO_SUCH_USER
        transaction = session.transaction
        pending = len(transaction.recipients) if transaction is not None else 0
        try:
            usage = session.extra.get(_USAGE)
            if usage is None:
                usage = await self._redis(self.limits.usage, user.id)
                session.extra[_USAGE] = usage
            allowed = self.limits.recipients_fit(usage, pending + 1)
        except LimitUnavailable as exc:
            slog.warning("recipient deferred", reason="sending limits unavailable",
                         error=str(exc))
            return M.TRY_LATER
        if not allowed:
            slog.warning("sending limit reached", limit="recipients per day",
                         value=self.limits.recipients_per_day)
            return M.RECIPIENT_LIMIT
        if verdict == lookups.LOCAL:
            # spooled straight onto `deliver` (docs/decisions/0030)
            session.extra.setdefault(LOCAL_RECIPIENTS, set()).add(str(path))
        return R.RECIPIENT_OK

    async def _classify(self, address: str) -> str:
        """lookups.classify_recipient; a LOCAL answer is remembered for KNOWN_SECONDS.

        A user sending many messages to the same local recipients asks the
        database once every few seconds instead of at every RCPT (a transaction
        and a thread hand-off each). Only existing recipients are remembered: a
        new account is never refused because of a stale answer, and one removed
        meanwhile is refused at delivery (the mda resolves the address again).
        """
        now = self.reactor.seconds()
        seen = self._known.get(address)
        if seen is not None and now - seen < KNOWN_SECONDS:
            return lookups.LOCAL
        verdict: str = await self.database.run(lookups.classify_recipient, address)
        if verdict == lookups.LOCAL:
            if len(self._known) >= KNOWN_SIZE:
                self._known.clear()
            self._known[address] = now
        else:
            self._known.pop(address, None)
        return verdict

    # --- content

    def deliver(self, session: Session, envelope: Envelope, message: bytes) -> Deferred[Reply]:
        if self.virus_scanner is None:
            return self.submitter.submit(session, envelope, message)
        return Deferred.fromCoroutine(self._scanned(session, envelope, message))

    async def _scanned(self, session: Session, envelope: Envelope, message: bytes) -> Reply:
        """clamd first: a virus is refused (554), an unreachable scanner is 451, never skipped."""
        assert self.virus_scanner is not None
        verdict = await self.virus_scanner.verdict(message)
        slog = log.bind(session=session.id, peer=session.peer_ip, user=session.auth_username,
                        size=len(message))
        if verdict.outcome == "virus":
            slog.warning("submission refused: virus", signature=verdict.signature)
            return M.virus_found(verdict.signature)
        if verdict.outcome != "clean":
            slog.warning("submission deferred: virus scanner unavailable", error=verdict.error)
            return M.VIRUS_SCANNER_UNAVAILABLE
        reply: Reply = await self.submitter.submit(session, envelope, message)
        return reply
