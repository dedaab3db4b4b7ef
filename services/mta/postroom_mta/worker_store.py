"""The relay's transactions: load an `outbound` entry's work, record results, spool bounces.

Each function runs as ``fn(session, ...)`` in one transaction on the `db` pool
(``Database.run``) and returns plain data. Recipients are locked ``FOR
UPDATE`` while their state changes and only ``pending`` ones are touched, so a
redelivered entry (at-least-once) never records a result twice or makes a
second bounce. A permanent failure and its DSN are committed together: there
is no moment at which a recipient is failed with no bounce on its way. The SQL
is the store's (``postroom.store.spool_work``, ``spool``, ``domains``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from postroom.logs import get_logger
from postroom.outgoing import Outgoing, bounce_recipient, originate
from postroom.queue.envelope import Envelope
from postroom.store import domains, messages, spool, spool_work
from postroom.store.addresses import normalise_domain
from postroom.store.db import StoreSession
from postroom.store.errors import NotFound
from postroom.store.spool_work import failed_queue_ids as failed_queue_ids  # for worker_bounce
from postroom_mta import bounce

log = get_logger("relay")

DELIVERED = "delivered"
DEFERRED = "deferred"
FAILED = "failed"
EXPIRED = "expired"  # a temporary failure after the queue lifetime: failed and bounced


@dataclass(frozen=True)
class Policy:
    """The retry and bounce settings the transactions need (plain data for the db thread)."""

    hostname: str
    retry_initial: float
    retry_max: float
    queue_lifetime: float
    delay_notice: float | None = None  # seconds after arrival; None: no delay DSNs
    full_limit: int = bounce.DEFAULT_FULL_LIMIT
    # DKIM keys and SRS for the DSNs we write (postroom.outgoing); None: a bare one
    outgoing: Outgoing | None = None


@dataclass(frozen=True)
class RemoteRecipient:
    """A pending recipient the relay is to send to a remote MX."""

    id: int
    address: str
    domain: str
    notify: str | None
    orcpt: str | None
    attempts: int


@dataclass(frozen=True)
class Work:
    """What one `outbound` entry asks for, after local recipients were moved to `deliver`."""

    queue_id: str
    mail_from: str
    kind: str
    ret: str | None
    envid: str | None
    received_at: datetime
    message: bytes
    remote: tuple[RemoteRecipient, ...]
    local: tuple[tuple[int, str], ...]  # (id, address) now on the deliver stream
    skipped: tuple[tuple[int, str], ...]  # (id, why)
    envelopes: tuple[Envelope, ...]  # to enqueue after commit


@dataclass(frozen=True)
class Result:
    """One recipient's result from a delivery attempt, as the relay records it."""

    recipient_id: int
    outcome: str  # DELIVERED, DEFERRED or FAILED (what the remote end said)
    error: str | None = None  # format_error(...) of the reply (the 250 too, for the history)


@dataclass(frozen=True)
class Recorded:
    """What recording did: each recipient's final outcome, and what to do after commit."""

    outcomes: dict[int, str] = field(default_factory=dict)  # id -> DELIVERED/DEFERRED/...
    next_attempt: dict[int, datetime] = field(default_factory=dict)
    envelopes: tuple[Envelope, ...] = ()
    wake_at: datetime | None = None


def domain_of(address: str) -> str:
    """The domain of an address, lower case without a trailing dot ('' when there is none)."""
    _local, at, domain = address.rpartition("@")
    return domain.lower().rstrip(".") if at else ""


def _is_local(session: StoreSession, domain: str, row: spool_work.EntryRecipient) -> bool:
    """domains.is_local_domain, answered by the locking statement when it looked up the
    same name (the normalised form: every plain ASCII domain), else asked again."""
    try:
        normal = normalise_domain(domain)
    except ValueError:
        return False
    if row.domain_local is not None and row.domain == normal:
        return row.domain_local
    return domains.is_local_domain(session, domain)


def load_work(session: StoreSession, queue_id: str, recipient_ids: Sequence[int],
              now: datetime) -> Work | None:
    """Lock the entry's pending `outbound` recipients, move local ones to `deliver`.

    None when the message is gone (deleted by an operator). Recipients that
    are done, on another stream, or not yet due (a stale entry for a deferred
    recipient) are skipped.

    Plain SQL (docs/decisions/0005): one statement reads the message and locks
    its recipients, one moves the local ones; the locking statement also says whether each
    recipient's domain is ours, so an all-local entry (every submission to our
    own users) is two statements. The message text is read only for remote ones.
    """
    wanted = sorted(set(recipient_ids))
    entry = spool_work.lock_entry(session, queue_id, wanted)
    if entry is None:
        return None
    found = {row.id for row in entry.recipients}
    skipped = [(rid, "no such recipient") for rid in wanted if rid not in found]
    remote: list[RemoteRecipient] = []
    local: list[tuple[int, str]] = []
    local_domains: dict[str, bool] = {}
    for row in entry.recipients:
        if row.state != "pending":
            skipped.append((row.id, f"already {row.state}"))
            continue
        if row.stream != "outbound":
            skipped.append((row.id, f"on the {row.stream} stream"))
            continue
        if row.attempts and row.next_attempt_at > now:
            skipped.append((row.id, "not yet due"))
            continue
        domain = domain_of(row.address)
        if domain not in local_domains:
            # no domain (a bare local part) can only be ours
            local_domains[domain] = not domain or _is_local(session, domain, row)
        if local_domains[domain]:
            local.append((row.id, row.address))
        else:
            remote.append(RemoteRecipient(row.id, row.address, domain, row.notify, row.orcpt,
                                          row.attempts))
    envelopes: list[Envelope] = []
    if local:
        ids = [rid for rid, _ in local]
        spool_work.move_to_deliver(session, ids, now)
        envelopes.append(Envelope(queue_id, tuple(ids), "deliver",
                                  disposition=entry.disposition))
    message = messages.get_message(session, entry.message_id) if remote else b""
    return Work(queue_id=queue_id, mail_from=entry.mail_from, kind=entry.kind, ret=entry.ret,
                envid=entry.envid, received_at=entry.received_at, message=message,
                remote=tuple(remote), local=tuple(local), skipped=tuple(skipped),
                envelopes=tuple(envelopes))


def record_results(session: StoreSession, queue_id: str, results: Sequence[Result],
                   now: datetime, policy: Policy) -> Recorded:
    """Record one domain's results; failures and their DSN (and delay notices) commit together.

    A temporary failure after ``received_at + queue_lifetime`` is a failure
    (EXPIRED); otherwise the next attempt is ``next_backoff`` away, but never
    later than the end of the lifetime, so the last try happens on time.
    """
    info = spool.get_spool(session, queue_id)
    expires = info.received_at + timedelta(seconds=policy.queue_lifetime)
    by_id = {r.recipient_id: r for r in results}
    rows = spool_work.lock_recipients(session, list(by_id))
    recorded = Recorded()
    delayed: list[bounce.DSNRecipient] = []
    failed_any = False
    for row in rows:
        result = by_id[row.id]
        if row.state != "pending":
            continue  # a duplicate run recorded it already
        error = result.error or ""
        if result.outcome == DELIVERED:
            spool.mark_delivered(session, row.id, result.error)
            recorded.outcomes[row.id] = DELIVERED
        elif result.outcome == FAILED:
            spool.mark_failed(session, row.id, error)
            recorded.outcomes[row.id] = FAILED
            failed_any = True
        elif now >= expires:
            spool.mark_failed(session, row.id, f"{error} (delivery time expired)")
            recorded.outcomes[row.id] = EXPIRED
            failed_any = True
        else:
            attempts = row.attempts + 1
            delay = spool.next_backoff(attempts, policy.retry_initial, policy.retry_max)
            when = min(now + timedelta(seconds=delay), expires)
            last_try = row.updated_at if row.attempts else info.received_at
            spool.mark_deferred(session, row.id, error, when)
            recorded.outcomes[row.id] = DEFERRED
            recorded.next_attempt[row.id] = when
            if _delay_notice_due(policy, info.received_at, last_try, now) \
                    and bounce.wants_delay(row.notify):
                delayed.append(bounce.DSNRecipient(row.address, error, row.orcpt,
                                                   bounce.DELAYED, now, expires))
    envelopes: list[Envelope] = []
    if failed_any:
        made = spool_failure_dsn(session, queue_id, now, policy)
        if made is not None:
            envelopes.append(made)
    if delayed:
        made = _spool_delay_dsn(session, info, delayed, now, policy)
        if made is not None:
            envelopes.append(made)
    wake = min(recorded.next_attempt.values(), default=None)
    return Recorded(recorded.outcomes, recorded.next_attempt, tuple(envelopes), wake)


def _delay_notice_due(policy: Policy, received_at: datetime, last_try: datetime,
                      now: datetime) -> bool:
    """True on the one deferral that crosses ``delay_notice`` after arrival (one notice each)."""
    if policy.delay_notice is None:
        return False
    threshold = received_at + timedelta(seconds=policy.delay_notice)
    return last_try < threshold <= now


def spool_failure_dsn(session: StoreSession, queue_id: str, now: datetime,
                      policy: Policy) -> Envelope | None:
    """Turn a message's failed recipients into one DSN to its sender; the envelope to enqueue.

    Every failed recipient becomes ``bounced`` (the DSN question is settled),
    but a DSN is made only for those whose NOTIFY asks for failures, and
    never for a message from the null sender (a bounce of a bounce). Rows
    another transaction holds are skipped (SKIP LOCKED): that one bounces them.
    """
    try:
        info = spool.get_spool(session, queue_id)
    except NotFound:
        return None
    rows = spool_work.bounce_failed(session, info.id)
    if not rows:
        return None
    if not info.mail_from or info.kind == "bounce":
        log.info("bounce not sent", queue_id=queue_id, reason="null sender",
                 recipients=[row.address for row in rows])
        return None
    wanted = [row for row in rows if bounce.wants_failure(row.notify)]
    if not wanted:
        log.info("bounce not sent", queue_id=queue_id, reason="notify never",
                 recipients=[row.address for row in rows])
        return None
    reported = [bounce.DSNRecipient(row.address, row.last_error or "", row.orcpt, bounce.FAILED,
                                    row.updated_at) for row in wanted]
    return _spool_dsn(session, info, reported, now, policy)


def _spool_delay_dsn(session: StoreSession, info: spool.SpoolInfo,
                     recipients: list[bounce.DSNRecipient], now: datetime,
                     policy: Policy) -> Envelope | None:
    if not info.mail_from or info.kind == "bounce":
        return None
    return _spool_dsn(session, info, recipients, now, policy)


def _spool_dsn(session: StoreSession, info: spool.SpoolInfo,
               recipients: list[bounce.DSNRecipient], now: datetime,
               policy: Policy) -> Envelope:
    original = bounce.Original(queue_id=info.queue_id, mail_from=info.mail_from,
                               message=messages.get_message(session, info.message_id),
                               received_at=info.received_at, envid=info.envid, ret=info.ret)
    dsn = bounce.build_dsn(original, recipients, hostname=policy.hostname, now=now,
                           full_limit=policy.full_limit)
    outgoing = policy.outgoing or Outgoing(policy.hostname)
    # a forward's sender is our SRS address: the bounce goes to the original sender
    to = bounce_recipient(outgoing, info.mail_from)
    domain = domain_of(to)
    stream = "deliver" if not domain or domains.is_local_domain(session, domain) else "outbound"
    # signed for MAILER-DAEMON@<hostname> (the nearest domain with keys), null reverse-path
    made = originate(session, outgoing, dsn, mail_from="", rcpts=[to],
                     from_domain=policy.hostname, now=now, kind="bounce", why="dsn",
                     stream=stream)
    log.info("bounce queued", queue_id=info.queue_id, bounce_queue_id=made.queue_id,
             action=recipients[0].action, to=to, stream=stream,
             srs_sender=info.mail_from if to != info.mail_from else None,
             recipients=[r.address for r in recipients])
    return made
