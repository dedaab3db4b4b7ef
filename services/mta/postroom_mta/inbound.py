"""Inbound SMTP on port 25: the SMTPPolicy that accepts mail for local domains only.

Decisions, in the order a session meets them:

* connect: an optional DNSBL check (554 5.7.1 when listed).
* RCPT: never an open relay, whatever the client's address: address literals,
  sender-specified routing (``user%other@local``, ``"user@remote"@local``,
  ``user!host@local``) and non-local domains get ``554 5.7.1 Relay access
  denied``; local addresses that resolve to nobody get ``550 5.1.1``; then
  optional greylisting (451 4.7.1).
* end of DATA / last BDAT: the dmarc service's verdict (SPF/DKIM/DMARC and the
  content checks: attachments, clamd, rspamd; docs/content-filtering.md).
  ``reject`` is 554 5.7.1 with the verdict's reason, whichever decided (no
  bounce: the client tells its user), ``tempfail`` or the service
  unreachable is 451 4.7.0, else the message gets our Received:,
  Authentication-Results (forged ones claiming our authserv-id removed) and
  the content checks' fields (X-Spamd-Result...; the sender's own copies of
  those removed), is
  spooled for `deliver` with the disposition (inbox or junk), and only after
  the commit that holds it (a group commit with the messages finishing
  meanwhile, postroom.store.groupcommit) does the client get
  ``250 2.0.0 Ok: queued as ID``; a failed commit is 451 4.3.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from postroom.config import Settings
from postroom.interfaces import ReactorThreads, ReactorTime, global_reactor, twisted_clock
from postroom.logs import get_logger
from postroom.mailauth import authres
from postroom.mailauth.srs import SRS, SRSError, is_srs
from postroom.metrics import Metrics, messages_total
from postroom.net.dns import Resolver
from postroom.net.tls import ServerTLS
from postroom.outgoing import Outgoing
from postroom.queue.envelope import Envelope as QueueEnvelope
from postroom.queue.reconciler import Enqueuer
from postroom.queue.streams import QueueClient, connect
from postroom.runtime import ServiceContext
from postroom.smtp import replies as R
from postroom.smtp.grammar import Address, MailParams, RcptParams
from postroom.smtp.options import ServerOptions
from postroom.smtp.policy import BasePolicy, MaybeDeferred
from postroom.smtp.received import received_header
from postroom.smtp.replies import Reply
from postroom.smtp.server import SMTPServerFactory
from postroom.smtp.session import Envelope, Session
from postroom.store import aliases, spool
from postroom.store.addresses import normalise_address
from postroom.store.db import Database
from postroom.store.db import StoreSession as DBSession
from postroom.store.groupcommit import GroupCommit
from postroom.store.queueid import new_queue_id
from postroom_mta.dmarcclient import DMARCClient, Verdict
from postroom_mta.dnsbl import DNSBL
from postroom_mta.greylist import Greylist

_log = get_logger("inbound")

RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
MAX_REASON = 400  # characters of a verdict's reason in a reply line


def _reply_text(reason: str) -> str:
    """A verdict's reason as one reply line: printable ASCII only, bounded."""
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in reason[:MAX_REASON])
    return text + ("..." if len(reason) > MAX_REASON else "")
USER_UNKNOWN = Reply(550, "5.1.1", "Recipient address rejected: user unknown")
# an SRS address of ours with a wrong hash, or older than POSTROOM_SRS_MAX_AGE
SRS_INVALID = Reply(550, "5.1.1", "Recipient address rejected: invalid or expired SRS address")
QUEUE_UNAVAILABLE = Reply(451, "4.3.0", "Queue temporarily unavailable, try again later")
# characters that route mail onwards when they appear in a local part (RFC 5321 3.6.1, the
# percent hack, UUCP bang paths): a local domain must never accept them from outside
_ROUTING_CHARS = frozenset("@%!")
# blocking Redis calls (queue ping and XADD, greylisting); DNSBL lookups wait on the network
REDIS_THREADS = 4
DNS_THREADS = 4
# RCPT answers remembered per SMTP session: how long, and how many at most
RCPT_CACHE_SECONDS = 60.0
RCPT_CACHE_SIZE = 1000
# and existing recipients, for every session of the process: only "ok" answers, briefly
KNOWN_SECONDS = 5.0
KNOWN_SIZE = 10000


class RelayDenied(Exception):
    """The recipient is not ours to accept (the reply is RELAY_DENIED)."""


class VerdictSource(Protocol):
    def check(self, *, client_ip: str, helo: str | None, mail_from: str,
              recipients: Sequence[str], message: bytes, queue_id: str) -> Deferred[Verdict]: ...


def unquote_local_part(local_part: str) -> str:
    """A quoted-string local part without its quotes and backslash escapes."""
    if len(local_part) < 2 or not (local_part.startswith('"') and local_part.endswith('"')):
        return local_part
    out, escaped = [], False
    for char in local_part[1:-1]:
        if escaped or char != "\\":
            out.append(char)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def recipient_parts(path: Address, hostname: str) -> tuple[str, str]:
    """(local part, domain) of a RCPT path, or RelayDenied for routing tricks.

    The bare ``<Postmaster>`` of RFC 5321 section 4.5.1 is postmaster at our
    hostname. A pure function: whether the domain is local is asked later.
    """
    if not path.domain:
        return "postmaster", hostname
    if path.domain.startswith("["):
        raise RelayDenied("address literal")
    local = unquote_local_part(path.local_part)
    if any(char in _ROUTING_CHARS for char in local):
        raise RelayDenied("sender-specified routing")
    return local, path.domain


def lookup_recipient(session: DBSession, local: str, domain: str,
                     delimiter: str) -> tuple[str, str | None]:
    """("ok", address) | ("unknown", address or None) | ("relay", None), in one transaction.

    One statement for an existing account (aliases.recipient_status).
    """
    return aliases.recipient_status(session, local, domain, delimiter=delimiter)


def spool_message(session: DBSession, *, queue_id: str, envelope: Envelope,
                  recipients: Sequence[str], message: bytes, peer_ip: str, helo: str | None,
                  disposition: str, outbound: frozenset[str] = frozenset()) -> list[int]:
    """Spool for `deliver` with the DSN parameters; the new recipients' ids.

    Addresses in ``outbound`` (original senders behind our SRS addresses: a
    bounce on its way back) go to the relay instead, after the `deliver` ones:
    the first ``len(deliver ids)`` ids are `deliver`'s (:func:`split_ids`).
    """
    _queue_id, ids = spool.create_spool_ids(session, **_spool_arguments(
        queue_id=queue_id, envelope=envelope, recipients=recipients, message=message,
        peer_ip=peer_ip, helo=helo, disposition=disposition, outbound=outbound))
    return ids


def _spool_arguments(*, queue_id: str, envelope: Envelope, recipients: Sequence[str],
                     message: bytes, peer_ip: str, helo: str | None, disposition: str,
                     outbound: frozenset[str] = frozenset()) -> dict[str, Any]:
    """:func:`spool.create_spool_ids`'s arguments for one message."""
    params = envelope.mail_params
    rows: list[tuple[str, str, str | None, str | None]] = []
    later: list[tuple[str, str, str | None, str | None]] = []
    seen: set[tuple[str, str]] = set()
    for recipient, address in zip(envelope.recipients, recipients, strict=True):
        orcpt = recipient.params.orcpt
        notify = recipient.params.notify
        stream = "outbound" if address in outbound else "deliver"
        if (address, stream) in seen:
            continue  # kept once by the spool as well; the ids stay in step
        seen.add((address, stream))
        (later if stream == "outbound" else rows).append(
            (address, stream, f"{orcpt[0]};{orcpt[1]}" if orcpt else None,
             ",".join(notify) if notify else None))
    rows += later
    return {"kind": "inbound", "mail_from": str(envelope.mail_from or ""), "recipients": rows,
            "message": message, "size": params.size, "body": params.body,
            "smtputf8": params.smtputf8, "ret": params.ret, "envid": params.envid,
            "peer_ip": peer_ip, "helo": helo, "disposition": disposition,
            "queue_id": queue_id, "enqueued_at": datetime.now(UTC)}


def spool_messages(session: DBSession, members: Sequence[dict[str, Any]]) -> list[list[int]]:
    """:func:`spool_message` for a group commit's members, in one statement for them all."""
    return [ids for _queue_id, ids in spool.create_spool_many(
        session, [_spool_arguments(**kwargs) for kwargs in members])]


def _deliver_envelope(queue_id: str, disposition: str, ids: Sequence[int]) -> QueueEnvelope:
    return QueueEnvelope(queue_id=queue_id, recipient_ids=tuple(ids), stream="deliver",
                         disposition=disposition)


def added_field(name: str, value: str) -> bytes:
    """``Name: value`` from a content check, folded at its ``\\n`` (each continuation indented).

    Control characters become "?": nothing in a value can start a field of its own.
    """
    lines = ["".join(c if c.isprintable() else "?" for c in line).strip()
             for line in value.split("\n")]
    text = "\r\n\t".join(line for line in lines if line) or "none"
    return f"{name}: {text}\r\n".encode("utf-8", "replace")


def authentication_results_field(value: str, authserv_id: str) -> bytes:
    """``Authentication-Results: value`` folded safely (every continuation line indented)."""
    lines = [line.strip() for line in value.splitlines() if line.strip()]
    if not lines:
        lines = [f"{authserv_id}; none"]
    text = "\r\n\t".join(lines)
    return f"Authentication-Results: {text}\r\n".encode("utf-8", "replace")


class InboundPolicy(BasePolicy):
    """Port 25: no AUTH, local recipients only, the dmarc verdict before the 250."""

    offer_auth = False
    offer_scram = False
    require_auth_for_mail = False

    def __init__(self, database: Database, enqueuer: Enqueuer, dmarc: VerdictSource, *,
                 hostname: str, delimiter: str = "+", greylist: Greylist | None = None,
                 dnsbl: DNSBL | None = None, metrics: Metrics | None = None,
                 clock: ReactorTime | None = None, srs: SRS | None = None,
                 group_commit: int = 64, group_commit_bytes: int = 16 * 1024 * 1024,
                 crash_file: str | None = None) -> None:
        self.clock: ReactorTime = global_reactor() if clock is None else clock
        self.database = database
        self.enqueuer = enqueuer
        # spool rows of messages finishing together: one transaction (docs/decisions/0018)
        self.spooler: GroupCommit[tuple[str, str], list[int], str | Exception] = GroupCommit(
            database, spool_message, self._publish, max_messages=group_commit,
            max_bytes=group_commit_bytes, metrics=metrics, crash_file=crash_file,
            batch=spool_messages)
        self.dmarc = dmarc
        self.hostname = hostname
        self.delimiter = delimiter
        self.greylist = greylist
        self.dnsbl = dnsbl
        self.srs = srs
        self._outcomes = messages_total(metrics) if metrics is not None else None
        self._outcome_children: dict[str, Any] = {}
        self._in_flight: set[Deferred[Any]] = set()
        # existing recipients seen by any session, for KNOWN_SECONDS (see _lookup)
        self._known: dict[tuple[str, str], tuple[float, tuple[str, str | None]]] = {}

    # --- connection and envelope

    def connect(self, session: Session) -> MaybeDeferred[Reply | None]:
        if self.dnsbl is None:
            return None
        return self.dnsbl.check(session.peer_ip)

    def mail_from(self, session: Session, path: Address | None,
                  params: MailParams) -> MaybeDeferred[Reply]:
        # SPF, DKIM and DMARC judge the sender at the end of DATA, with the message at hand
        return R.SENDER_OK

    def rcpt_to(self, session: Session, path: Address,
                params: RcptParams) -> MaybeDeferred[Reply]:
        return Deferred.fromCoroutine(self._rcpt_to(session, path))

    async def _rcpt_to(self, session: Session, path: Address) -> Reply:
        fields = {"session": session.id, "peer": session.peer_ip, "rcpt": str(path)}
        try:
            local, domain = recipient_parts(path, self.hostname)
        except RelayDenied as exc:
            _log.warning("inbound recipient refused", reason=f"relay: {exc}", **fields)
            self._count("rejected_relay")
            return RELAY_DENIED
        status, address = await self._lookup(session, local, domain)
        if status == "unknown" and self.srs is not None and is_srs(f"{local}@{domain}"):
            # a bounce to an address we rewrote when forwarding: back to the original sender
            try:
                original = self.srs.reverse(f"{local}@{domain}")
            except SRSError as exc:
                _log.info("inbound recipient refused", reason=f"srs: {exc}", **fields)
                self._count("rejected_srs")
                return SRS_INVALID
            session.extra.setdefault("recipients", {})[path] = original
            session.extra.setdefault("srs_reversed", set()).add(original)
            _log.info("srs address reversed", to=original, **fields)
            return R.RECIPIENT_OK.with_text(f"<{local}@{domain}> Recipient OK")
        if status == "relay" and path.domain:
            _log.warning("inbound recipient refused", reason="relay: not a local domain",
                         **fields)
            self._count("rejected_relay")
            return RELAY_DENIED
        if status != "ok" or address is None:
            _log.info("inbound recipient refused", reason="unknown user", **fields)
            self._count("rejected_unknown_user")
            return USER_UNKNOWN
        if self.greylist is not None:
            transaction = session.transaction
            sender = str(transaction.mail_from or "") if transaction is not None else ""
            deferred = await self.greylist.check(session.peer_ip, sender, address)
            if deferred is not None:
                return deferred
        session.extra.setdefault("recipients", {})[path] = address
        return R.RECIPIENT_OK.with_text(f"<{address}> Recipient OK")

    async def _lookup(self, session: Session, local: str,
                      domain: str) -> tuple[str, str | None]:
        """lookup_recipient, remembered for the session for RCPT_CACHE_SECONDS.

        A client sending many messages to the same recipients (a mailing list
        host, a busy peer) asks the database once; a recipient removed meanwhile
        is still refused at delivery (the mda resolves again). Across sessions,
        only existing recipients are remembered, for KNOWN_SECONDS: under load
        most RCPTs name the same mailboxes, and a new account or domain is never
        refused because of a stale answer (negative answers are not shared).
        """
        cache: dict[tuple[str, str], tuple[float, tuple[str, str | None]]] = \
            session.extra.setdefault("rcpt_cache", {})
        now = self.clock.seconds()
        key = (local, domain)
        hit = cache.get(key)
        if hit is not None and now - hit[0] < RCPT_CACHE_SECONDS:
            return hit[1]
        hit = self._known.get(key)
        if hit is not None and now - hit[0] < KNOWN_SECONDS:
            return hit[1]
        result: tuple[str, str | None] = await self.database.run(
            lookup_recipient, local, domain, self.delimiter)
        if len(cache) >= RCPT_CACHE_SIZE:
            cache.clear()  # hostile sessions probing addresses must not grow it without bound
        cache[key] = (now, result)
        if result[0] == "ok":
            if len(self._known) >= KNOWN_SIZE:
                self._known.clear()
            self._known[key] = (now, result)
        return result

    def _addresses(self, session: Session, envelope: Envelope) -> list[str]:
        known: dict[Address, str] = session.extra.get("recipients", {})
        out = []
        for recipient in envelope.recipients:
            address = known.get(recipient.address)
            if address is None:  # not expected: rcpt_to records every accepted one
                local, domain = recipient_parts(recipient.address, self.hostname)
                address = normalise_address(f"{local}@{domain}")
            out.append(address)
        # the notes served this transaction; a long session must not keep them all
        session.extra.pop("recipients", None)
        return out

    # --- the message

    def deliver(self, session: Session, envelope: Envelope,
                message: bytes) -> MaybeDeferred[Reply]:
        d = Deferred.fromCoroutine(self._deliver(session, envelope, message))
        self._in_flight.add(d)

        def done(result: Any) -> Any:
            self._in_flight.discard(d)
            return result

        return d.addBoth(done)

    async def _deliver(self, session: Session, envelope: Envelope, message: bytes) -> Reply:
        queue_id = new_queue_id()
        recipients = self._addresses(session, envelope)
        mail_from = str(envelope.mail_from or "")
        fields: dict[str, Any] = {
            "queue_id": queue_id, "session": session.id, "peer": session.peer_ip,
            "helo": session.helo, "mail_from": mail_from, "recipients": len(recipients),
            "size": len(message)}
        verdict = await self.dmarc.check(client_ip=session.peer_ip, helo=session.helo,
                                         mail_from=mail_from, recipients=recipients,
                                         message=message, queue_id=queue_id)
        fields.update(verdict=verdict.disposition, dmarc=verdict.dmarc_result,
                      reason=verdict.reason or None)
        if verdict.decided_by is not None:
            fields["decided_by"] = verdict.decided_by
        content = verdict.raw.get("content")
        if isinstance(content, list) and content:
            # each content check's outcome, e.g. ["clamd:accept", "rspamd:quarantine"]
            fields["content"] = [f"{c.get('check')}:{c.get('action')}" for c in content[:10]
                                 if isinstance(c, dict)]
        if verdict.disposition == "reject":
            # DMARC or a content check (spam, virus, attachment policy): 554 5.7.1 with the
            # reason at the end of DATA, no bounce (the client tells its user)
            self._count("rejected_content" if verdict.decided_by is not None
                        else "rejected_policy")
            _log.info("inbound message rejected", **fields)
            return Reply(554, "5.7.1", _reply_text(verdict.reason or "Message rejected by policy"))
        if verdict.disposition not in ("inbox", "junk"):
            self._count("deferred")
            _log.warning("inbound message deferred", **fields)
            why = verdict.reason or "policy check failed"
            if verdict.decided_by is not None:  # a content scanner could not scan it
                return Reply(451, "4.7.0", f"Temporary failure ({why}), try again later")
            return Reply(451, "4.7.0", f"Temporary authentication failure ({why}), try again "
                         "later")
        if not await self.enqueuer.available():
            self._count("deferred")
            _log.warning("inbound message deferred", **{**fields, "reason": "redis unavailable"})
            return QUEUE_UNAVAILABLE
        stored = (received_header(session, hostname=self.hostname, queue_id=queue_id,
                                  recipients=[r.address for r in envelope.recipients],
                                  smtputf8=envelope.smtputf8)
                  + authentication_results_field(verdict.authentication_results, self.hostname)
                  # the content checks' fields; the sender's own copies of them removed
                  + b"".join(added_field(name, value) for name, value in verdict.headers)
                  + authres.strip_fields(authres.strip_forged(message, self.hostname),
                                         frozenset(name.lower().encode("ascii")
                                                   for name, _ in verdict.headers)))
        disposition = verdict.disposition
        reversed_srs: frozenset[str] = frozenset(session.extra.pop("srs_reversed", ()))
        if reversed_srs:
            return await self._spool_with_srs(session, envelope, recipients, stored, queue_id,
                                              disposition, reversed_srs, fields)

        # committed with the messages finishing DATA meanwhile (one transaction), then the
        # XADDs of all of them pipelined, in the spool's thread right after the COMMIT
        try:
            ids, outcome = await self.spooler.submit(
                (queue_id, disposition), len(stored), queue_id=queue_id, envelope=envelope,
                recipients=recipients, message=stored, peer_ip=session.peer_ip,
                helo=session.helo, disposition=disposition)
        except Exception as exc:  # noqa: BLE001 - not committed (or not known to be): 451
            self._count("deferred")
            _log.warning("inbound message deferred", **{
                **fields, "reason": "spool commit failed", "error": str(exc)[:300],
                "error_type": type(exc).__name__})
            return R.LOCAL_ERROR
        # committed: from here on the message is ours; a failed XADD is the reconciler's job
        self.enqueuer.enqueued_in_thread(_deliver_envelope(queue_id, disposition, ids), outcome)
        self._count("accepted")
        _log.info("inbound message accepted", **fields)
        return R.MESSAGE_ACCEPTED.with_text(f"Ok: queued as {queue_id}")

    async def _spool_with_srs(self, session: Session, envelope: Envelope, recipients: list[str],
                              stored: bytes, queue_id: str, disposition: str,
                              reversed_srs: frozenset[str], fields: dict[str, Any]) -> Reply:
        """Spool a message some of whose recipients are original senders behind our SRS
        addresses (bounces of forwarded mail): those go to the relay, the rest to the mda."""
        ids = await self.database.run(
            spool_message, queue_id=queue_id, envelope=envelope, recipients=recipients,
            message=stored, peer_ip=session.peer_ip, helo=session.helo,
            disposition=disposition, outbound=reversed_srs)
        local = len({a for a in recipients if a not in reversed_srs})
        for stream, part in (("deliver", ids[:local]), ("outbound", ids[local:])):
            if part:
                await self.enqueuer.after_commit(QueueEnvelope(
                    queue_id=queue_id, recipient_ids=tuple(part), stream=stream,
                    disposition=disposition))
        self._count("accepted")
        _log.info("inbound message accepted", srs_reversed=len(ids) - local, **fields)
        return R.MESSAGE_ACCEPTED.with_text(f"Ok: queued as {queue_id}")

    def _publish(self, committed: Sequence[tuple[tuple[str, str], list[int]]],
                 ) -> list[str | Exception]:
        """The XADDs of a group commit's messages, one pipelined round trip (pool thread)."""
        return self.enqueuer.enqueue_many_blocking(
            [_deliver_envelope(queue_id, disposition, ids)
             for (queue_id, disposition), ids in committed])

    def _count(self, outcome: str) -> None:
        if self._outcomes is not None:
            # the labelled child once per outcome (a small fixed set): labels() is a few
            # microseconds of locking and hashing on every message
            child = self._outcome_children.get(outcome)
            if child is None:
                child = self._outcome_children[outcome] = self._outcomes.labels(
                    outcome=f"inbound_{outcome}")
            child.inc()

    def drain(self) -> Deferred[Any]:
        """Fires when the messages being decided or spooled now are done (SIGTERM)."""
        return defer.DeferredList(list(self._in_flight), consumeErrors=True)


def build_policy(settings: Settings, database: Database, queue: QueueClient, *,
                 redis_pool: ThreadPool,
                 dns_pool: ThreadPool | None = None, dmarc: VerdictSource | None = None,
                 metrics: Metrics | None = None,
                 reactor: ReactorThreads | None = None) -> InboundPolicy:
    """The inbound policy with its collaborators made from settings (used by tests too)."""
    greylist = None
    if settings.mta_greylist:
        greylist = Greylist(queue.redis, settings.redis_prefix, settings.mta_greylist_delay,
                            redis_pool, reactor=reactor)
    dnsbl = None
    if settings.mta_dnsbl_zones:
        dnsbl = DNSBL(Resolver.from_settings(settings), settings.mta_dnsbl_zones,
                      dns_pool or redis_pool, reactor=reactor)
    return InboundPolicy(
        database, Enqueuer(queue, redis_pool, reactor),
        dmarc or DMARCClient(settings.dmarc_url, settings.mta_dmarc_timeout, reactor=reactor,
                             token=settings.internal_token),
        hostname=settings.hostname, delimiter=settings.recipient_delimiter, greylist=greylist,
        dnsbl=dnsbl, metrics=metrics, clock=reactor, srs=Outgoing.from_settings(settings).srs,
        group_commit=settings.spool_group_commit,
        group_commit_bytes=settings.spool_group_commit_bytes,
        crash_file=settings.fault_crash_after_spool_commit)


def build_factory(settings: Settings, policy: InboundPolicy, *,
                  tls: ServerTLS | None = None,
                  clock: ReactorTime | None = None,
                  metrics: Metrics | None = None) -> SMTPServerFactory:
    """The port-25 SMTP factory (its ``proxy:`` listeners wrap it in the shared PROXY one)."""
    return SMTPServerFactory(policy, ServerOptions.from_settings(settings), tls=tls,
                             clock=None if clock is None else twisted_clock(clock),
                             metrics=metrics, listener="smtp")


def listen_endpoints(settings: Settings) -> tuple[str, ...]:
    """POSTROOM_MTA_LISTEN, plus the deprecated POSTROOM_MTA_PROXY_LISTEN as ``proxy:`` ones."""
    return settings.mta_listen + tuple(f"proxy:{e}" for e in settings.mta_proxy_listen)


async def start_inbound(ctx: ServiceContext) -> InboundPolicy:
    """Listen on POSTROOM_MTA_LISTEN (its ``proxy:`` endpoints behind the PROXY wrapper)."""
    settings = ctx.settings
    assert settings.redis_url is not None
    client = connect(settings.redis_url)
    queue = QueueClient(client, settings.redis_prefix)
    dns_pool = ctx.thread_pool("inbound-dns", DNS_THREADS) if settings.mta_dnsbl_zones else None
    policy = build_policy(settings, ctx.db, queue,
                          redis_pool=ctx.thread_pool("inbound-redis", REDIS_THREADS),
                          dns_pool=dns_pool, metrics=ctx.metrics, reactor=ctx.reactor)
    factory = build_factory(settings, policy, tls=ctx.tls, clock=ctx.reactor,
                            metrics=ctx.metrics)
    # stop hooks run newest first: in-flight messages finish, then the clients close
    ctx.on_stop(client.close)
    if isinstance(policy.dmarc, DMARCClient):
        ctx.on_stop(policy.dmarc.close)
    ctx.on_stop(policy.drain)
    if settings.mta_proxy_listen:
        ctx.log.warning("deprecated setting", setting="POSTROOM_MTA_PROXY_LISTEN",
                        fix="add proxy: endpoints to POSTROOM_MTA_LISTEN")
    listening: Any = factory  # an IProtocolFactory (zope interfaces are invisible to mypy)
    await ctx.listen_all(listen_endpoints(settings), listening)
    ctx.log.info("inbound started", greylist=settings.mta_greylist,
                 dnsbl=list(settings.mta_dnsbl_zones),
                 starttls=ctx.tls is not None)
    return policy
