"""What happens to one spooled recipient at delivery: resolve, decide, store, mark (no Redis).

Each function takes a Session and runs inside the caller's transaction (one
per recipient, see postroom_mda.service), so a mailbox copy and the
recipient's ``delivered`` state commit together, and the only row locks taken
besides the recipient's own are the blob's (when its metadata is stored) and
one mailbox's, always in that order (no lock-order deadlocks between replicas).
Mail for an account with no alias, rules or quota takes a fast path of two
prepared statements (postroom.store.delivery); everything else takes the
general path. The SQL of both is in the store (postroom.store.delivery,
mailboxes, spool). Results are plain :class:`Outcome`
values; what must happen after commit (a change event, stream entries) is
described in them and done by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict

from postroom.config import Settings
from postroom.logs import get_logger
from postroom.metrics import Metrics
from postroom.mime import analyze, metadata_dict, metadata_json
from postroom.mime.fulltext import (
    DEFAULT_MAX_BYTES,
    UNREADABLE,
    MessageText,
    text_or_unreadable,
)
from postroom.outgoing import Outgoing, forward, originate
from postroom.queue.envelope import Envelope
from postroom.rules import (
    HEAD_BYTES,
    Decision,
    RulesError,
    evaluate,
    facts_from_message,
    parse_rules,
)
from postroom.store import delivery as deliveries
from postroom.store import fts, messages, spool
from postroom.store.addresses import normalise_address
from postroom.store.aliases import Target, resolve_address
from postroom.store.db import StoreSession as Session
from postroom.store.domains import is_local_domain
from postroom.store.errors import InvalidAddress
from postroom.store.mailboxes import deliver_to_mailbox, usage
from postroom.store.rules import claim_vacation_reply
from postroom_mda.vacation import build_reply, skip_reason

log = get_logger("delivery")


@dataclass(frozen=True)
class Options:
    """The settings delivery uses (see postroom.config for their meaning)."""

    delimiter: str = "+"
    detail_folder: bool = False
    quota_grace: float = 86400.0
    queue_lifetime: float = 5 * 86400.0
    retry_initial: float = 300.0
    retry_max: float = 3600.0
    hostname: str = "localhost"
    fts_max_bytes: int = DEFAULT_MAX_BYTES
    # DKIM keys for replies, SRS and ARC for forwards (postroom.outgoing); None: none
    outgoing: Outgoing | None = None

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> Options:
        return cls(delimiter=settings.recipient_delimiter,
                   detail_folder=settings.deliver_to_detail_folder,
                   quota_grace=settings.quota_grace, queue_lifetime=settings.queue_lifetime,
                   retry_initial=settings.retry_initial, retry_max=settings.retry_max,
                   hostname=settings.hostname, fts_max_bytes=settings.fts_max_bytes,
                   outgoing=Outgoing.from_settings(settings, metrics))

    @property
    def sender(self) -> Outgoing:
        """How we sign and forward (a bare one, unsigned and unrewritten, when not set)."""
        return self.outgoing if self.outgoing is not None else Outgoing(self.hostname)


# Outcome.result values
DELIVERED = "delivered"      # a copy is in a mailbox (or was already: ``duplicate``)
DUPLICATE = "duplicate"      # the recipient was done before: nothing changed
DISCARDED = "discarded"      # the account's rules discarded it
EXPANDED = "expanded"        # an alias: ``children`` are to be delivered next
FORWARDED = "forwarded"      # a remote target: on its way to the outbound stream
DEFERRED = "deferred"        # try again later (over quota)
FAILED = "failed"            # permanent failure: the relay bounces it
MISSING = "missing"          # no such recipient (spool deleted by an operator)
SKIPPED = "skipped"          # not ours now (another stream, or not yet due)


@dataclass(frozen=True)
class Outcome:
    """What delivery did for one recipient, and what the caller must do after commit."""

    recipient_id: int
    result: str
    queue_id: str | None = None
    address: str | None = None
    user_id: int | None = None
    mailbox: str | None = None
    mailbox_id: int | None = None
    uid: int | None = None
    modseq: int | None = None
    size: int | None = None
    error: str | None = None
    # local recipients made by alias expansion, each to be delivered in its own transaction
    children: tuple[int, ...] = ()
    # stream entries to add once committed (forwards, redirects, vacation replies)
    envelopes: tuple[Envelope, ...] = field(default_factory=tuple)


class _Basics(TypedDict):
    """The facts every outcome of the slow path reports (spread into ``Outcome``)."""

    queue_id: str
    address: str
    size: int
    user_id: NotRequired[int]


# --- parse once per blob


def ensure_metadata(session: Session, queue_id: str,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> int | None:
    """Analyze the queued message's blob once and store its IMAP metadata with it,
    and its searchable text (``max_bytes`` of it; postroom.store.fts).

    Returns the message id (None when the queue entry no longer exists).
    Identical bodies share one blob, so a second recipient or a second copy of
    the message finds the metadata already there and parses nothing.
    """
    found = deliveries.metadata_to_parse(session, queue_id)
    if found is None:
        return None
    message_id, blob = found.message_id, found.blob
    if blob is not None and found.meta_missing:
        refused = deliveries.store_metadata_if_missing(session, message_id,
                                                  metadata_dict(analyze(blob)))
        if refused is not None:
            # mail is never held back for its metadata: deliver it, readers re-analyze
            log.warning("message metadata not stored", queue_id=queue_id,
                        message_id=message_id, error=refused)
    if blob is not None and found.text_missing:
        fts.store_text(session, message_id, _text(blob, max_bytes, queue_id, message_id))
    return message_id


def _text(blob: bytes, max_bytes: int, queue_id: str, message_id: int) -> MessageText:
    """The blob's searchable text (postroom.store.fts); unreadable MIME is logged, and
    indexed as nothing (the message is then searched by its raw bytes)."""
    doc = text_or_unreadable(blob, max_bytes)
    if doc is UNREADABLE:
        log.warning("message text not indexed", queue_id=queue_id, message_id=message_id)
    return doc


# --- the general path's reads


def _over_quota(session: Session, user_id: int, size: int, account: deliveries.Account) -> bool:
    quota_bytes, quota_messages = account.quota_bytes, account.quota_messages
    if quota_bytes is None and quota_messages is None:
        return False
    used_bytes, used_messages = usage(session, user_id)
    return bool((quota_bytes is not None and used_bytes + size > quota_bytes)
                or (quota_messages is not None and used_messages + 1 > quota_messages))


# --- the fast path: an existing account, no rules, no quota (most mail; see
# postroom.store.delivery): two statements, the account's facts and the store


def _fast_target(facts: deliveries.FastFacts) -> int | None:
    """The account the general path would resolve the address to, when it is that simple.

    An alias child is final (deliveries.active_user_id): the account of that exact address. A
    recipient as received must be in its stored form and name an account in a local
    domain with no alias over it (resolve_address's first step). None otherwise.
    """
    if facts.user_id is None:
        return None
    if facts.parent_id is not None:
        return int(facts.user_id)
    try:
        if normalise_address(facts.address) != facts.address:
            return None
    except InvalidAddress:
        return None
    if not facts.local_domain or facts.aliased:
        return None
    return int(facts.user_id)


def _metadata_json(facts: deliveries.FastFacts) -> str | None:
    """The blob's metadata as JSON for jsonb, or None when there is nothing to store."""
    if facts.blob is None:
        return None
    try:
        return metadata_json(analyze(facts.blob))  # the one stored form (postroom.mime.stored)
    except ValueError as exc:
        # mail is never held back for its metadata: deliver it, readers re-analyze
        log.warning("message metadata not stored", queue_id=facts.queue_id,
                    message_id=facts.message_id, error=str(exc))
        return None


def _fast_deliver(connection: Any, facts: deliveries.FastFacts, options: Options, now: datetime,
                  store_metadata: bool) -> Outcome | None:
    """Deliver through the fast path, or None when the general path must decide."""
    if facts.state != "pending" or facts.stream != "deliver":
        return None
    if facts.attempts and facts.next_attempt_at > now:
        return None
    if now - facts.received_at > timedelta(seconds=options.queue_lifetime):
        return None
    if facts.quota_bytes is not None or facts.quota_messages is not None:
        return None
    user_id = _fast_target(facts)
    if user_id is None:
        return None
    flags: list[str] = []
    mailbox_id: int | None
    if facts.disposition == "junk":
        # quarantined: Junk (else INBOX), flagged, and never the rules (as _deliver_local)
        if facts.junk_id is not None and facts.junk_name is not None:
            folder, mailbox_id = facts.junk_name, facts.junk_id
        else:
            folder, mailbox_id = "INBOX", facts.inbox_id
        flags.append("$Junk")
    elif facts.rules:
        return None
    else:
        folder, mailbox_id = "INBOX", facts.inbox_id
    if mailbox_id is None:
        return None
    meta = _metadata_json(facts) if store_metadata and facts.meta_missing else None
    doc = None
    if store_metadata and facts.text_missing and facts.blob is not None:
        doc = _text(facts.blob, options.fts_max_bytes, facts.queue_id, facts.message_id)
    stored = deliveries.fast_store(connection, recipient_id=facts.recipient_id,
                              message_id=facts.message_id, mailbox_id=mailbox_id, flags=flags,
                              internaldate=facts.received_at, meta=meta,
                              detail=f"stored in {folder} uid ", doc=doc)
    if stored is None:
        return None
    uid, modseq = stored
    return Outcome(facts.recipient_id, DELIVERED, queue_id=facts.queue_id,
                   address=facts.address, user_id=user_id, mailbox=folder,
                   mailbox_id=int(mailbox_id), uid=int(uid), modseq=int(modseq),
                   size=facts.size)


# --- one recipient


def deliver_recipient(session: Session, recipient_id: int, options: Options,
                      now: datetime, *, store_metadata: bool = True) -> Outcome:
    """Deliver one spooled recipient (see the module docstring); idempotent.

    Also stores the blob's IMAP metadata when it is still missing (parsed here,
    in the same transaction: see the fast path's notes). ``store_metadata=False``
    skips that (the service's fallback when PostgreSQL refused the metadata).
    """
    # the transaction's one connection, asked for once (each ask walks the ORM's state)
    connection = session.connection()
    facts = deliveries.fast_facts(connection, recipient_id, parse=store_metadata)
    if facts is None:
        return Outcome(recipient_id, MISSING)
    outcome = _fast_deliver(connection, facts, options, now, store_metadata)
    if outcome is not None:
        return outcome
    if store_metadata and (facts.meta_missing or facts.text_missing):
        ensure_metadata(session, facts.queue_id, options.fts_max_bytes)
    return _deliver_slow(session, recipient_id, options, now)


def _deliver_slow(session: Session, recipient_id: int, options: Options,
                  now: datetime) -> Outcome:
    """Every case the fast path leaves: aliases, rules, quotas, retries, failures."""
    info = deliveries.lock_recipient(session, recipient_id)
    if info is None:
        return Outcome(recipient_id, MISSING)
    rcpt = info.rcpt
    base: _Basics = {"queue_id": info.queue_id, "address": rcpt.address, "size": info.message_size}
    if rcpt.state != "pending":
        # a redelivered entry: the work is done, except alias children a crash left behind
        return Outcome(recipient_id, DUPLICATE,
                       children=deliveries.pending_children(session, recipient_id), **base)
    if rcpt.stream != "deliver":
        return Outcome(recipient_id, SKIPPED, error="recipient is on another stream", **base)
    if rcpt.attempts and rcpt.next_attempt_at > now:
        # a stale entry for a deferred recipient: the reconciler brings it back when due
        return Outcome(recipient_id, SKIPPED, error="not yet due", **base)
    if now - info.received_at > timedelta(seconds=options.queue_lifetime):
        error = "554 5.4.7 delivery time expired"
        spool.mark_failed(session, recipient_id, error)
        return Outcome(recipient_id, FAILED, error=error, **base)

    if rcpt.parent_id is not None:
        # an alias child's address is final: the account itself, never resolved again
        user_id = deliveries.active_user_id(session, rcpt.address)
        targets = [] if user_id is None else [Target(address=rcpt.address, user_id=user_id)]
    else:
        targets = resolve_address(session, rcpt.address, delimiter=options.delimiter)
    if not targets:
        error = "550 5.1.1 no such user here"
        spool.mark_failed(session, recipient_id, error)
        return Outcome(recipient_id, FAILED, error=error, **base)
    if len(targets) == 1 and targets[0].user_id is not None:
        return _deliver_local(session, info, rcpt, targets[0], options, now)
    return _expand(session, info, rcpt, targets, options, now)


def _expand(session: Session, info: deliveries.LockedRecipient, rcpt: spool.RecipientInfo,
            targets: list[Target], options: Options, now: datetime) -> Outcome:
    """One child recipient per target: local ones come back to us; remote ones are settled
    here, their copy forwarded as the alias's domain forwards it (SRS sender, ARC seal:
    postroom.outgoing.forward), so a bounce of the copy comes back through us."""
    spool.expand_recipient(session, rcpt.id, [t.address for t in targets])
    remote_addresses = {t.address for t in targets if t.user_id is None}
    children = deliveries.children(session, rcpt.id)
    remote = [(cid, address) for cid, address, stream in children
              if stream == "deliver" and address in remote_addresses]
    local = tuple(cid for cid, address, stream in children
                  if stream == "deliver" and address not in remote_addresses)
    envelopes: tuple[Envelope, ...] = ()
    if remote:
        made = forward(session, options.sender, messages.get_message(session, info.message_id),
                       mail_from=info.mail_from, rcpts=[address for _cid, address in remote],
                       forwarding_domain=_domain(rcpt.address), now=now, notify=rcpt.notify,
                       orcpt=rcpt.orcpt or rcpt.address)
        for cid, _address in remote:
            spool.mark_delivered(session, cid, f"forwarded as {made.queue_id}")
        envelopes = (made,)
    result = FORWARDED if remote and not local else EXPANDED
    return Outcome(rcpt.id, result, queue_id=info.queue_id, address=rcpt.address,
                   size=info.message_size, children=local, envelopes=envelopes)


def _decide(session: Session, info: deliveries.LockedRecipient, rcpt: spool.RecipientInfo,
            user_id: int, stored: Any) -> tuple[Decision | None, Any]:
    """The account's rules (``stored``, as read by deliveries.account) applied to the message."""
    try:
        rules = parse_rules(stored) if stored else []
    except RulesError as exc:
        # stored before a validation change: deliver as if there were none, and say so
        log.warning("stored rules invalid", queue_id=info.queue_id, user_id=user_id,
                    error=str(exc))
        return None, None
    if not rules:
        return None, None
    facts = facts_from_message(deliveries.head(session, info.message_id, HEAD_BYTES),
                               info.message_size, info.mail_from, rcpt.address)
    return evaluate(rules, facts), facts


def _deliver_local(session: Session, info: deliveries.LockedRecipient, rcpt: spool.RecipientInfo,
                   target: Target, options: Options, now: datetime) -> Outcome:
    user_id = target.user_id
    assert user_id is not None
    base: _Basics = {"queue_id": info.queue_id, "address": rcpt.address,
                     "user_id": user_id, "size": info.message_size}
    flags: list[str] = []
    decision: Decision | None = None
    facts: Any = None
    account = deliveries.account(session, user_id)
    if info.disposition == "junk":
        # quarantined by DMARC: straight to Junk, and no rules, so a spoof of a known
        # sender is neither filed among real mail nor forwarded nor answered
        junk = deliveries.special_use(session, user_id, "\\Junk")
        folder, mailbox_id = junk if junk else ("INBOX", account.inbox_id)
        flags.append("$Junk")
    else:
        folder, mailbox_id = "INBOX", account.inbox_id
        if options.detail_folder and target.detail:
            detail_id = deliveries.mailbox_id(session, user_id, target.detail)
            if detail_id is not None:
                folder, mailbox_id = target.detail, detail_id
        decision, facts = _decide(session, info, rcpt, user_id, account.rules)
        if decision is not None:
            folder, mailbox_id = _rule_folder(session, user_id, decision, folder, mailbox_id)

    store = decision is None or decision.keep or bool(decision.folders)
    if store and _over_quota(session, user_id, info.message_size, account):
        return _over(session, info, rcpt, options, now, base)
    envelopes: list[Envelope] = []
    uid = modseq = None
    if store:
        if mailbox_id is None:
            # the account has no INBOX (deleted by hand): a temporary, loud failure
            raise LookupError(f"account {user_id} has no mailbox {folder}")
        uid, modseq = deliver_to_mailbox(session, user_id=user_id, mailbox_name=folder,
                                         message_id=info.message_id,
                                         spool_recipient_id=rcpt.id, flags=flags,
                                         internaldate=info.received_at)
    if decision is not None:
        envelopes.extend(_act(session, info, rcpt, user_id, decision, facts, options, now))
    spool.mark_delivered(session, rcpt.id,
                         f"stored in {folder} uid {uid}" if store else "handled by the rules")
    if not store:
        return Outcome(rcpt.id, FORWARDED if decision and decision.redirects else DISCARDED,
                       envelopes=tuple(envelopes), **base)
    return Outcome(rcpt.id, DELIVERED, mailbox=folder, mailbox_id=mailbox_id, uid=uid,
                   modseq=modseq, envelopes=tuple(envelopes), **base)


def _rule_folder(session: Session, user_id: int, decision: Decision, folder: str,
                 mailbox_id: int | None) -> tuple[str, int | None]:
    """Where the rules file the one copy: the first fileinto that exists, else the default.

    Sieve would store one copy per mailbox named; we store one (docs/mda.md).
    """
    for name in decision.folders:
        found = deliveries.mailbox_id(session, user_id, name)
        if found is not None:
            return ("INBOX" if name.upper() == "INBOX" else name), found
    return folder, mailbox_id


def _over(session: Session, info: deliveries.LockedRecipient, rcpt: spool.RecipientInfo,
          options: Options, now: datetime, base: _Basics) -> Outcome:
    """Over quota: defer with back-off, and bounce (5.2.2) once the grace has run out."""
    give_up_at = info.received_at + timedelta(seconds=options.quota_grace)
    if now >= give_up_at:
        error = "552 5.2.2 mailbox full"
        spool.mark_failed(session, rcpt.id, error)
        return Outcome(rcpt.id, FAILED, error=error, **base)
    delay = spool.next_backoff(rcpt.attempts + 1, options.retry_initial, options.retry_max)
    # never wait past the end of the grace: the bounce should not be late either
    next_attempt = min(now + timedelta(seconds=delay), give_up_at)
    error = "452 4.2.2 mailbox full"
    spool.mark_deferred(session, rcpt.id, error, next_attempt)
    return Outcome(rcpt.id, DEFERRED, error=error, **base)


def _act(session: Session, info: deliveries.LockedRecipient, rcpt: spool.RecipientInfo,
         user_id: int, decision: Decision, facts: Any, options: Options,
         now: datetime) -> list[Envelope]:
    """Redirects and the vacation reply of a rule decision; the entries to enqueue."""
    envelopes = []
    local, remote = _split_local(session, decision.redirects)
    forwards = [deliveries.add_forward(session, rcpt, info.spool_message_id, address, now)
                for address in local]
    if forwards:
        envelopes.append(Envelope(info.queue_id, tuple(forwards), "outbound"))
    if remote:
        # off our domains: as the account's domain forwards it (SRS, ARC)
        envelopes.append(forward(session, options.sender,
                                 messages.get_message(session, info.message_id),
                                 mail_from=info.mail_from, rcpts=remote,
                                 forwarding_domain=_domain(rcpt.address), now=now,
                                 notify=rcpt.notify, orcpt=rcpt.orcpt or rcpt.address))
    if decision.vacation is not None and facts is not None:
        account = deliveries.account_address(session, user_id)
        why_not = skip_reason(facts, account, decision.vacation)
        if why_not is not None:
            log.info("vacation reply skipped", queue_id=info.queue_id, user_id=user_id,
                     reason=why_not)
        elif not claim_vacation_reply(session, user_id, info.mail_from,
                                      decision.vacation.days, now):
            log.info("vacation reply skipped", queue_id=info.queue_id, user_id=user_id,
                     reason="already replied to this sender recently")
        else:
            message = build_reply(facts, account, decision.vacation,
                                  hostname=options.hostname, now=now)
            # from the null reverse-path (RFC 3834 3.3), signed for the account's domain
            envelopes.append(originate(session, options.sender, message, mail_from="",
                                       rcpts=[info.mail_from], from_domain=_domain(account),
                                       now=now, why="vacation"))
    return envelopes


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _split_local(session: Session, addresses: Sequence[str]) -> tuple[list[str], list[str]]:
    """(addresses in our domains, the others): only the others are forwarded with SRS/ARC."""
    local: list[str] = []
    remote: list[str] = []
    for address in addresses:
        domain = _domain(address)
        (local if not domain or is_local_domain(session, domain) else remote).append(address)
    return local, remote
