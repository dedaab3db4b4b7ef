"""Connection reuse for the relay: idle SMTP sessions kept for the next message to the same place.

Like Postfix's connection cache in its on-demand form
(``smtp_connection_cache_on_demand``): nothing waits to batch mail; when a
transaction ends and the session is still sane it is parked here for
``idle`` seconds (POSTROOM_RELAY_SESSION_IDLE, Postfix's
``smtp_connection_cache_time_limit``), and a message for the same destination
that comes along meanwhile goes over it instead of a new TCP connection, TLS
handshake and EHLO. Decisions:

* The key is the MX host name, the address, the port and the TLS policy
  object. A session opened under one policy (opportunistic, MTA-STS verified,
  DANE) is never used for another: a clear-text or unverified session must not
  carry mail whose policy demands verified TLS, and a verified one is not
  offered to the other side either, so a policy change takes effect at once.
  Policies compare by value and their ``creator`` by equality: DANE's
  creator is a value of its TLSA RRset (``dane.DANEPolicy``), so a session
  verified against the same records is reused and one verified against other
  records never is; the shared opportunistic and MTA-STS verified policies
  match themselves. Several recipient domains with the same MX share
  its sessions, as in Postfix, since the key says where we connect and how,
  not for whom.
* Every reuse starts with RSET (see smtpclient.py). A cached session that
  turns out dead (RSET refused or unanswered, a 421, the connection gone,
  anything before the MAIL FROM reply) is dropped and the message goes on
  once over a fresh connection to the same address: it is not deferred, and
  the failed reuse is not listed among the attempts ``tried``.
* A session carries at most ``reuse_limit`` transactions
  (POSTROOM_RELAY_SESSION_REUSE_LIMIT, Postfix's
  ``smtp_connection_reuse_count_limit``); then it QUITs and the next message
  opens a new one. A limit of 1 turns reuse off (the relay then builds no
  cache at all).
* Concurrency: like Postfix, only active deliveries count against
  POSTROOM_RELAY_MAX_SESSIONS and _MAX_PER_DESTINATION. An idle session holds
  no slot, so a message waiting for a slot can never be starved by idle
  connections; the cache has bounds of its own instead: at most
  ``max_idle_per_key`` idle sessions per destination and ``max_idle`` in all
  (the relay passes its per-destination and global limits), the oldest QUIT
  first. Open connections are therefore at most twice the global limit.
* Idle sessions are taken newest first: the most recently used one is the
  least likely to have been dropped by the server's own idle timeout.
* On service stop :meth:`SessionCache.close` QUITs every idle session and
  waits for them to close (each QUIT is bounded by the quit timeout); sessions
  that finish a transaction afterwards QUIT instead of parking.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter
from twisted.internet import defer

from postroom.interfaces import DelayedCall, ReactorThreads
from postroom.logs import Logger, get_logger
from postroom_mta.smtpclient import (
    DEFAULT_TIMEOUTS,
    OPPORTUNISTIC,
    DeliveryResult,
    Envelope,
    SMTPClientProtocol,
    Timeouts,
    TLSPolicy,
    open_session,
)
from postroom_mta.smtpclient_data import DEFAULT_CHUNK_SIZE, MessageSource
from postroom_mta.smtpclient_parse import MessageTraits

log = get_logger("sessioncache")

# defaults of POSTROOM_RELAY_SESSION_IDLE / _REUSE_LIMIT (for caches built by hand)
IDLE = 2.0
REUSE_LIMIT = 100


@dataclass(frozen=True)
class SessionKey:
    """Where a session goes and under which TLS policy: what must match for reuse."""

    host: str | None
    address: str
    port: int
    tls: TLSPolicy


@dataclass(eq=False)
class _Idle:
    key: SessionKey
    protocol: SMTPClientProtocol
    timer: DelayedCall | None


class SessionCache:
    """Idle outbound sessions by :class:`SessionKey`; :meth:`attempt` is a drop-in for
    :func:`postroom_mta.smtpclient.attempt` that takes one when it can."""

    def __init__(self, reactor: ReactorThreads, *, idle: float = IDLE,
                 reuse_limit: int = REUSE_LIMIT,
                 max_idle: int = 50, max_idle_per_key: int = 5,
                 reused: Counter | None = None, logger: Logger | None = None) -> None:
        self.reactor = reactor
        self.idle = idle
        self.reuse_limit = reuse_limit
        self.max_idle = max_idle
        self.max_idle_per_key = max_idle_per_key
        self._reused = reused
        self.log = logger or log
        self._sessions: dict[SessionKey, list[_Idle]] = {}  # oldest first
        self._quitting: set[SMTPClientProtocol] = set()
        self._closed = False

    def __len__(self) -> int:
        """Idle sessions now."""
        return sum(len(parked) for parked in self._sessions.values())

    async def attempt(self, reactor: ReactorThreads, envelope: Envelope, message: MessageSource,
                      traits: MessageTraits, *, address: str, port: int, helo_name: str,
                      host: str | None = None, timeouts: Timeouts = DEFAULT_TIMEOUTS,
                      tls: TLSPolicy = OPPORTUNISTIC, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      logger: Logger | None = None,
                      bind_address: str | None = None) -> DeliveryResult:
        """One transaction to ``address``, on an idle session if there is one; never fails."""
        logger = logger or self.log
        key = SessionKey(host, address, port, tls)
        cached = self._take(key)
        if cached is not None:
            result = await cached.send(envelope, message, traits, logger=logger)
            if not result.session_failure:
                if self._reused is not None:
                    self._reused.inc()
                self._park(key, cached)
                return result
            # dead while parked (or the server forgot us): never worth a deferral
            first = result.recipients[0].text if result.recipients else None
            logger.info("smtp cached session failed, reconnecting", mx=host, address=address,
                        error=first, transactions=cached.transactions)
            self._retire(cached)
        protocol, result = await open_session(
            reactor, envelope, message, traits, address=address, port=port,
            helo_name=helo_name, host=host, timeouts=timeouts, tls=tls,
            chunk_size=chunk_size, logger=logger, bind_address=bind_address,
            keep_open=not self._closed and self.reuse_limit > 1)
        if protocol is not None:
            self._park(key, protocol)
        return result

    def close(self) -> defer.Deferred[None]:
        """QUIT every idle session and stop parking new ones; fires when all are closed."""
        self._closed = True
        for parked in list(self._sessions.values()):
            for entry in list(parked):
                self._unpark(entry)
                self._retire(entry.protocol)
        waiting = [p.closed for p in self._quitting]
        return defer.gatherResults(waiting, consumeErrors=True).addCallback(lambda _: None)

    # --- the cache itself

    def _take(self, key: SessionKey) -> SMTPClientProtocol | None:
        parked = self._sessions.get(key)
        while parked:
            entry = parked[-1]
            self._unpark(entry)
            if entry.protocol.reusable:
                return entry.protocol
            self._retire(entry.protocol)
        return None

    def _park(self, key: SessionKey, protocol: SMTPClientProtocol) -> None:
        if (self._closed or not protocol.reusable
                or protocol.transactions >= self.reuse_limit):
            self._retire(protocol)
            return
        entry = _Idle(key, protocol, None)
        entry.timer = self.reactor.callLater(self.idle, self._expire, entry)
        parked = self._sessions.setdefault(key, [])
        parked.append(entry)
        # the server may drop it while it waits: forget it then (a no-op once taken)
        protocol.closed.addCallback(lambda _: self._unpark(entry))
        if len(parked) > self.max_idle_per_key:
            self._evict(parked[0])
        if len(self) > self.max_idle:
            oldest = min((p[0] for p in self._sessions.values() if p),
                         # a parked entry has its timer (None only while it expires)
                         key=lambda e: e.timer.getTime() if e.timer else float("-inf"))
            self._evict(oldest)

    def _unpark(self, entry: _Idle) -> None:
        parked = self._sessions.get(entry.key)
        if parked is None or entry not in parked:
            return
        parked.remove(entry)
        if not parked:
            del self._sessions[entry.key]
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()

    def _expire(self, entry: _Idle) -> None:
        entry.timer = None
        self._unpark(entry)
        self.log.debug("smtp idle session expired", mx=entry.key.host,
                       address=entry.key.address, transactions=entry.protocol.transactions)
        self._retire(entry.protocol)

    def _evict(self, entry: _Idle) -> None:
        self._unpark(entry)
        self._retire(entry.protocol)

    def _retire(self, protocol: SMTPClientProtocol) -> None:
        """QUIT an idle session (closing ones finish on their own); remember it until closed."""
        if protocol.closed.called:
            return
        protocol.quit()
        if protocol not in self._quitting:
            self._quitting.add(protocol)
            protocol.closed.addCallback(lambda _: self._quitting.discard(protocol))
