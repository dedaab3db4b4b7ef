"""What happens to one spooled recipient at delivery: resolve, decide, store, mark (no Redis).

Each function takes a Session and runs inside the caller's transaction (one
per recipient, see postroom_mda.service), so a mailbox copy and the
recipient's ``delivered`` state commit together, and the only row locks taken
besides the recipient's own are the blob's (when its metadata is stored) and
the mailboxes' (one, or one per mailbox a Sieve script files into, in mailbox id
order), always in that order (no lock-order deadlocks between replicas).
Mail for an account with no alias, Sieve script or quota takes a fast path of two
prepared statements (postroom.store.delivery); everything else takes the
general path. The fast path may also run for several recipients in one
transaction (:func:`deliver_group`, docs/decisions/0022): recipients locked in
id order, then mailboxes in id order. The SQL of both is in the store (postroom.store.delivery,
mailboxes, spool). Results are plain :class:`Outcome`
values; what must happen after commit (a change event, stream entries) is
described in them and done by the caller.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict

from postroom.config import ConfigError, Settings
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
from postroom.rules import HEAD_BYTES, MessageFacts, facts_from_message
from postroom.rules import Vacation as ReplySpec
from postroom.sieve.grammar import ScriptError
from postroom.sieve.interp import (
    MAX_BODY_BYTES,
    Action,
    Context,
    EditHeaders,
    EnvelopeView,
    FileInto,
    HeaderEdit,
    Keep,
    MessageView,
    Redirect,
    Reject,
    Script,
    SieveRuntimeError,
    Vacation,
    apply_edits,
    run_scripts,
)
from postroom.store import delivery as deliveries
from postroom.store import fts, mailboxes, messages, spool
from postroom.store import sieve as sieve_store
from postroom.store.addresses import normalise_address
from postroom.store.aliases import Target, resolve_address
from postroom.store.db import StoreSession as Session
from postroom.store.domains import is_local_domain
from postroom.store.errors import InvalidAddress, StoreError
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
    # Sieve (docs/mda.md, "Sieve"): limits, and the operator's scripts around the account's
    sieve_max_bytes: int = 64 * 1024
    sieve_max_redirects: int = 4
    sieve_max_run_time: float = 1.0
    sieve_before: Script | None = None
    sieve_after: Script | None = None
    sieve_global_dir: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> Options:
        """The options of ``settings``; ConfigError (naming the file) when a global Sieve
        script cannot be read or is not valid: the mda does not start with it."""
        return cls(delimiter=settings.recipient_delimiter,
                   detail_folder=settings.deliver_to_detail_folder,
                   quota_grace=settings.quota_grace, queue_lifetime=settings.queue_lifetime,
                   retry_initial=settings.retry_initial, retry_max=settings.retry_max,
                   hostname=settings.hostname, fts_max_bytes=settings.fts_max_bytes,
                   outgoing=Outgoing.from_settings(settings, metrics),
                   sieve_max_bytes=settings.sieve_max_script_bytes,
                   sieve_max_redirects=settings.sieve_max_redirects,
                   sieve_max_run_time=settings.sieve_max_run_time,
                   sieve_before=load_global_script("before", settings.sieve_before,
                                                   settings.sieve_max_script_bytes),
                   sieve_after=load_global_script("after", settings.sieve_after,
                                                  settings.sieve_max_script_bytes),
                   sieve_global_dir=settings.sieve_global_dir)

    @property
    def sender(self) -> Outgoing:
        """How we sign and forward (a bare one, unsigned and unrewritten, when not set)."""
        return self.outgoing if self.outgoing is not None else Outgoing(self.hostname)


def load_global_script(name: str, path: str | None, max_bytes: int) -> Script | None:
    """POSTROOM_SIEVE_BEFORE / _AFTER compiled once (None when unset), or ConfigError."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(max_bytes + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"POSTROOM_SIEVE_{name.upper()}: cannot read {path}: {exc}") from None
    try:
        return Script.compile(name, text, max_bytes=max_bytes)
    except ScriptError as exc:
        raise ConfigError(f"POSTROOM_SIEVE_{name.upper()}: {path}: {exc}") from None


# Outcome.result values
DELIVERED = "delivered"      # a copy is in a mailbox (or was already: ``duplicate``)
DUPLICATE = "duplicate"      # the recipient was done before: nothing changed
DISCARDED = "discarded"      # the Sieve scripts discarded it (or rejected it without a DSN)
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
    # more copies than the one above (Sieve fileinto, keep): (mailbox_id, uid, modseq) each
    copies: tuple[tuple[int, int, int], ...] = ()
    # how the Sieve run went: None (no script), "ok" or "error" (filed in INBOX)
    sieve: str | None = None


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


@dataclass(frozen=True)
class _FastPlan:
    """What the fast path will store for a recipient it takes: where, and the blob's analysis."""

    facts: deliveries.FastFacts
    user_id: int
    folder: str
    mailbox_id: int
    flags: list[str]
    meta: str | None
    doc: MessageText | None


def _fast_plan(facts: deliveries.FastFacts, options: Options, now: datetime,
               store_metadata: bool, *, parse: bool = True) -> _FastPlan | None:
    """The fast path's decision for a locked recipient, or None when the general path must
    decide. ``parse`` False: the blob's metadata and text are being stored by another
    recipient of the same transaction (a group delivery), so they are not made again."""
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
    elif facts.rules or options.sieve_before is not None or options.sieve_after is not None:
        return None
    else:
        folder, mailbox_id = "INBOX", facts.inbox_id
    if mailbox_id is None:
        return None
    parse = parse and store_metadata
    meta = _metadata_json(facts) if parse and facts.meta_missing else None
    doc = None
    if parse and facts.text_missing and facts.blob is not None:
        doc = _text(facts.blob, options.fts_max_bytes, facts.queue_id, facts.message_id)
    if facts.blob is not None:
        # a group keeps every member's plan until its stores: the blob's analysis, not the
        # blob (so a group of large messages holds one blob at a time, not one per member)
        facts = replace(facts, blob=None)
    return _FastPlan(facts, user_id, folder, int(mailbox_id), flags, meta, doc)


def _fast_store(connection: Any, plan: _FastPlan) -> Outcome | None:
    """Store a planned copy; None when the recipient already had one (the general path
    then answers with it)."""
    facts = plan.facts
    stored = deliveries.fast_store(connection, recipient_id=facts.recipient_id,
                              message_id=facts.message_id, mailbox_id=plan.mailbox_id,
                              flags=plan.flags, internaldate=facts.received_at, meta=plan.meta,
                              detail=f"stored in {plan.folder} uid ", doc=plan.doc)
    if stored is None:
        return None
    uid, modseq = stored
    return Outcome(facts.recipient_id, DELIVERED, queue_id=facts.queue_id,
                   address=facts.address, user_id=plan.user_id, mailbox=plan.folder,
                   mailbox_id=plan.mailbox_id, uid=int(uid), modseq=int(modseq),
                   size=facts.size)


def _fast_deliver(connection: Any, facts: deliveries.FastFacts, options: Options, now: datetime,
                  store_metadata: bool) -> Outcome | None:
    """Deliver through the fast path, or None when the general path must decide."""
    plan = _fast_plan(facts, options, now, store_metadata)
    return None if plan is None else _fast_store(connection, plan)


# --- several recipients in one transaction (group delivery, docs/decisions/0022)


def deliver_group(session: Session, members: Sequence[dict[str, Any]]) -> list[Outcome | None]:
    """The fast path for several recipients in the caller's one transaction (one COMMIT).

    ``members``: the keyword arguments of each (``recipient_id``, ``options``, ``now``).
    Each gets its Outcome, or None when the fast path does not take it (the caller then
    delivers it alone, in a transaction of its own, after this one committed; its
    recipient lock is held only until then). Locks are taken in a fixed order whatever
    the order of the members: the recipients in id order, then the mailboxes in id
    order, so two group deliveries (two replicas) into the same mailboxes never
    deadlock on them. A blob shared by several members is analysed once.
    """
    connection = session.connection()
    outcomes: list[Outcome | None] = [None] * len(members)
    plans: list[tuple[int, _FastPlan]] = []
    parsed: set[int] = set()
    for index in sorted(range(len(members)), key=lambda i: members[i]["recipient_id"]):
        kwargs = members[index]
        facts = deliveries.fast_facts(connection, kwargs["recipient_id"])
        if facts is None:
            outcomes[index] = Outcome(kwargs["recipient_id"], MISSING)
            continue
        plan = _fast_plan(facts, kwargs["options"], kwargs["now"], True,
                          parse=facts.message_id not in parsed)
        if plan is not None:
            parsed.add(facts.message_id)
            plans.append((index, plan))
    for index, plan in sorted(plans, key=lambda p: (p[1].mailbox_id, p[1].facts.recipient_id)):
        outcomes[index] = _fast_store(connection, plan)
    return outcomes


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


# how far up a recipient's chain of aliases, forwards and redirects a loop is looked for
MAX_REDIRECT_HOPS = 20
# a message with more Received: fields than this is not redirected again (RFC 5321 6.3)
MAX_RECEIVED = 30
# the field an edited message (editheader) is redirected with: the account that redirected it
LOOP_FIELD = "X-Postroom-Loop"


@dataclass
class _Plan:
    """What the Sieve run decided, in terms delivery acts on."""

    stores: list[tuple[str, int | None, tuple[str, ...]]] = field(default_factory=list)
    redirects: list[str] = field(default_factory=list)
    reject: Reject | None = None
    vacation: Vacation | None = None
    edits: tuple[HeaderEdit, ...] = ()  # editheader: store and redirect the edited message
    facts: MessageFacts | None = None
    result: str | None = None  # None: no script ran; "ok"; "error"


_GLOBAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")


def global_script(directory: str | None, name: str, max_bytes: int) -> str | None:
    """The text of global script ``name`` (RFC 6609 :global): ``<directory>/<name>.sieve``,
    or None (no directory, a name that is not a plain file name, no such file)."""
    if not directory or not _GLOBAL_NAME.fullmatch(name) or ".." in name:
        return None
    try:
        with open(os.path.join(directory, name + ".sieve"), encoding="utf-8") as handle:
            return handle.read(max_bytes + 1)
    except (OSError, UnicodeDecodeError):
        return None


@functools.lru_cache(maxsize=256)
def _compiled(name: str, text: str, max_bytes: int) -> Script:
    """An account's script, parsed once per process while it is unchanged (the tree is
    immutable; a changed script is a new key). ScriptError is not cached."""
    return Script.compile(name, text, max_bytes=max_bytes)


def _message_view(session: Session, info: deliveries.LockedRecipient,
                  rcpt: spool.RecipientInfo) -> tuple[MessageFacts, MessageView]:
    facts = facts_from_message(deliveries.head(session, info.message_id, HEAD_BYTES),
                               info.message_size, info.mail_from, rcpt.address)
    cache: list[bytes] = []

    def raw() -> bytes:
        if not cache:
            cache.append(deliveries.head(session, info.message_id, MAX_BODY_BYTES))
        return cache[0]

    return facts, MessageView(headers=facts.headers, size=info.message_size, raw=raw)


def _run_sieve(session: Session, info: deliveries.LockedRecipient, rcpt: spool.RecipientInfo,
               user_id: int, address: str, stored: tuple[str, str] | None, options: Options,
               now: datetime) -> tuple[list[Action] | None, MessageFacts | None, str | None]:
    """The actions of the operator's and the account's scripts, or (None, facts, "error")
    when a script is broken or its run failed (logged: the message goes to INBOX)."""
    scripts: list[Script] = []
    if options.sieve_before is not None:
        scripts.append(options.sieve_before)
    error: str | None = None
    if stored is not None:
        name, text = stored
        try:
            scripts.append(_compiled(name, text, options.sieve_max_bytes))
        except ScriptError as exc:
            error = f"{name}: {exc}"
    if options.sieve_after is not None:
        scripts.append(options.sieve_after)
    if not scripts and error is None:
        return None, None, None
    facts, view = _message_view(session, info, rcpt)
    if error is None:
        ctx = Context(
            account=address, now=now, delimiter=options.delimiter,
            max_redirects=options.sieve_max_redirects, max_run_time=options.sieve_max_run_time,
            max_script_bytes=options.sieve_max_bytes,
            mailbox_exists=lambda box: deliveries.mailbox_id(session, user_id, box) is not None,
            personal_script=lambda script: sieve_store.get_script(session, user_id, script),
            global_script=lambda script: global_script(options.sieve_global_dir, script,
                                                       options.sieve_max_bytes))
        try:
            return (run_scripts(scripts, view, EnvelopeView(info.mail_from, rcpt.address), ctx),
                    facts, "ok")
        except SieveRuntimeError as exc:
            error = str(exc)
    # RFC 5228 2.10.6: a script that fails keeps the message; never lose mail to a script
    log.warning("sieve error", queue_id=info.queue_id, user_id=user_id, error=error[:500])
    return None, facts, "error"


def _plan(session: Session, info: deliveries.LockedRecipient, rcpt: spool.RecipientInfo,
          user_id: int, address: str, account: deliveries.Account, default: tuple[str, int | None],
          options: Options, now: datetime) -> _Plan:
    """Run the scripts and turn their actions into mailboxes, redirects and replies."""
    actions, facts, result = _run_sieve(session, info, rcpt, user_id, address, account.script,
                                        options, now)
    plan = _Plan(facts=facts, result=result)
    if actions is None:
        if result == "error":
            plan.stores.append(("INBOX", account.inbox_id, ()))
        else:
            plan.stores.append((default[0], default[1], ()))
        return plan
    for action in actions:
        if isinstance(action, Keep):
            plan.stores.append((default[0], default[1], action.flags))
        elif isinstance(action, FileInto):
            plan.stores.append(_fileinto(session, info, user_id, action, default))
        elif isinstance(action, Redirect):
            plan.redirects.append(action.address)
        elif isinstance(action, Reject):
            plan.reject = action
        elif isinstance(action, Vacation):
            plan.vacation = action
        elif isinstance(action, EditHeaders):
            plan.edits = action.edits
    if plan.redirects:
        plan.redirects = _loop_free(session, info, rcpt, address, plan.redirects, facts)
        if not plan.redirects and not plan.stores and plan.reject is None:
            # every redirect was a loop: keep the message rather than lose it
            plan.stores.append((default[0], default[1], ()))
    return plan


def _fileinto(session: Session, info: deliveries.LockedRecipient, user_id: int,
              action: FileInto, default: tuple[str, int | None]
              ) -> tuple[str, int | None, tuple[str, ...]]:
    name = "INBOX" if action.mailbox.upper() == "INBOX" else action.mailbox
    found = deliveries.mailbox_id(session, user_id, name)
    if found is None and action.create:
        try:
            mailboxes.ensure_mailbox(session, user_id, name)  # RFC 5490 :create
        except StoreError as exc:
            log.warning("sieve fileinto :create failed", queue_id=info.queue_id,
                        user_id=user_id, mailbox=name, error=str(exc))
        found = deliveries.mailbox_id(session, user_id, name)
    if found is None:
        log.info("sieve fileinto: no such mailbox, kept in the default folder",
                 queue_id=info.queue_id, user_id=user_id, mailbox=name)
        return default[0], default[1], action.flags
    return name, found, action.flags


def _loop_free(session: Session, info: deliveries.LockedRecipient, rcpt: spool.RecipientInfo,
               address: str, redirects: list[str], facts: MessageFacts | None) -> list[str]:
    """The redirects that make no loop (RFC 5228 4.2: loop control is ours to do).

    A redirect is refused when it goes to the account itself, when the message already
    came through the account or the target on its way here (the chain of aliases,
    forwards and redirects this recipient was made from), when that chain is already
    MAX_REDIRECT_HOPS long, or when the message has more than MAX_RECEIVED Received:
    fields (a loop through other servers).
    """
    chain = [a.lower() for a in deliveries.ancestors(session, rcpt.id, MAX_REDIRECT_HOPS)]
    # an edited message is redirected as a new queued message, marked with the accounts it
    # was redirected by (the chain does not follow it there)
    marks = [v.strip().lower() for v in facts.values(LOOP_FIELD)] if facts is not None else []
    chain += marks
    received = len(facts.values("received")) if facts is not None else 0
    kept = []
    for target in redirects:
        lowered = target.lower()
        if lowered == address.lower() or lowered == rcpt.address.lower():
            why = "redirect to the account itself"
        elif lowered in chain or address.lower() in chain:
            why = "the message came this way before"
        elif len(chain) >= MAX_REDIRECT_HOPS:
            why = f"more than {MAX_REDIRECT_HOPS} hops"
        elif received > MAX_RECEIVED:
            why = f"more than {MAX_RECEIVED} Received: fields"
        else:
            kept.append(target)
            continue
        log.warning("sieve redirect refused: loop", queue_id=info.queue_id, target=target,
                    reason=why)
    return kept


_AR_CLAUSE = re.compile(r"\s*([A-Za-z0-9_-]{1,32})\s*=\s*([A-Za-z0-9_-]{1,32})")
_AR_PROPERTY = re.compile(r"([A-Za-z0-9_.-]{1,64})=(\"[^\"]{0,512}\"|[^\s;()\"]{1,512})")


def authentic_return_path(facts: MessageFacts | None, mail_from: str, kind: str,
                          authserv_id: str) -> bool:
    """Whether a reject may be answered (RFC 5429 2.1.2: no backscatter to forged senders).

    True for mail our own users submitted, and for mail whose Authentication-Results field
    (ours, by its authserv-id: the MTA strips forged ones) says SPF passed for exactly
    this reverse-path, or DKIM passed for its domain.
    """
    if not mail_from or "@" not in mail_from:
        return False
    if kind == "submission":
        return True
    if facts is None:
        return False
    domain = mail_from.rsplit("@", 1)[1].lower()
    ours = authserv_id.strip().lower()
    for value in facts.values("authentication-results"):
        ident, _, rest = value.partition(";")
        if ident.strip().strip('"').lower() != ours:
            continue
        for clause in rest.split(";")[:20]:
            found = _AR_CLAUSE.match(clause)
            if found is None or found.group(2).lower() != "pass":
                continue
            props = {k.lower(): v.strip('"').lower() for k, v in _AR_PROPERTY.findall(clause)}
            method = found.group(1).lower()
            if method == "spf" and props.get("smtp.mailfrom") == mail_from.lower():
                return True
            if method == "dkim" and props.get("header.d") == domain:
                return True
        return False  # only the topmost of ours counts
    return False


def _deliver_local(session: Session, info: deliveries.LockedRecipient, rcpt: spool.RecipientInfo,
                   target: Target, options: Options, now: datetime) -> Outcome:
    user_id = target.user_id
    assert user_id is not None
    base: _Basics = {"queue_id": info.queue_id, "address": rcpt.address,
                     "user_id": user_id, "size": info.message_size}
    account = deliveries.account(session, user_id)
    if info.disposition == "junk":
        # quarantined by DMARC: straight to Junk, and no scripts, so a spoof of a known
        # sender is neither filed among real mail nor forwarded nor answered
        junk = deliveries.special_use(session, user_id, "\\Junk")
        folder, mailbox_id = junk if junk else ("INBOX", account.inbox_id)
        plan = _Plan(stores=[(folder, mailbox_id, ("$Junk",))])
    else:
        folder, mailbox_id = "INBOX", account.inbox_id
        if options.detail_folder and target.detail:
            detail_id = deliveries.mailbox_id(session, user_id, target.detail)
            if detail_id is not None:
                folder, mailbox_id = target.detail, detail_id
        address = deliveries.account_address(session, user_id) if (
            account.script is not None or options.sieve_before or options.sieve_after
        ) else rcpt.address
        plan = _plan(session, info, rcpt, user_id, address, account, (folder, mailbox_id),
                     options, now)
    base_sieve = plan.result

    if plan.reject is not None:
        return _reject(session, info, rcpt, plan, options, base)
    # one copy per mailbox, taken in mailbox id order: two deliveries that lock the same
    # mailboxes lock them in the same order (no deadlock between replicas)
    stores: dict[int | None, tuple[str, tuple[str, ...]]] = {}
    for name, box, flags in plan.stores:
        stores.setdefault(box, (name, flags))
    message_id, size = info.message_id, info.message_size
    edited: bytes | None = None
    if plan.edits and (stores or plan.redirects):
        edited = apply_edits(messages.get_message(session, info.message_id), plan.edits)
        size = len(edited)
        if stores:
            message_id = _store_edited(session, info, edited, options)
    if stores and _over_quota(session, user_id, size * len(stores), account):
        return _over(session, info, rcpt, options, now, base)
    copies: list[tuple[str, int, int, int]] = []
    for box in sorted(stores, key=lambda b: -1 if b is None else b):
        name, flags = stores[box]
        if box is None:
            # the account has no such mailbox (INBOX deleted by hand): a temporary, loud failure
            raise LookupError(f"account {user_id} has no mailbox {name}")
        uid, modseq = deliver_to_mailbox(
            session, user_id=user_id, mailbox_name=name, message_id=message_id,
            spool_recipient_id=rcpt.id if not copies else None, flags=list(flags),
            internaldate=info.received_at)
        copies.append((name, box, uid, modseq))
    envelopes = _act(session, info, rcpt, user_id, plan, options, now, edited)
    if copies:
        detail = "stored in " + ", ".join(f"{n} uid {u}" for n, _b, u, _m in copies)
    else:
        detail = "redirected by sieve" if plan.redirects else "discarded by sieve"
    spool.mark_delivered(session, rcpt.id, detail[:500])
    if not copies:
        return Outcome(rcpt.id, FORWARDED if plan.redirects else DISCARDED,
                       envelopes=tuple(envelopes), sieve=base_sieve, **base)
    first = copies[0]
    return Outcome(rcpt.id, DELIVERED, mailbox=first[0], mailbox_id=first[1], uid=first[2],
                   modseq=first[3], envelopes=tuple(envelopes),
                   copies=tuple((b, u, m) for _n, b, u, m in copies[1:]), sieve=base_sieve,
                   **base)


def _reject(session: Session, info: deliveries.LockedRecipient, rcpt: spool.RecipientInfo,
            plan: _Plan, options: Options, base: _Basics) -> Outcome:
    """reject/ereject at delivery (RFC 5429): a failed recipient, so the relay sends the
    sender a DSN, when the return path is authentic; else nothing is sent (no backscatter)."""
    assert plan.reject is not None
    reason = re.sub(r"[\x00-\x1f\x7f]+", " ", plan.reject.reason).strip()[:200] or "rejected"
    if authentic_return_path(plan.facts, info.mail_from, info.kind, options.hostname):
        error = f"550 5.7.1 {reason}"
        spool.mark_failed(session, rcpt.id, error)
        log.info("sieve reject answered", queue_id=info.queue_id, recipient=rcpt.address)
        return Outcome(rcpt.id, FAILED, error=error, sieve=plan.result, **base)
    spool.mark_delivered(session, rcpt.id, "rejected by sieve; no DSN: return path not "
                         "authenticated")
    log.info("sieve reject not answered: return path not authenticated",
             queue_id=info.queue_id, recipient=rcpt.address, mail_from=info.mail_from)
    return Outcome(rcpt.id, DISCARDED, sieve=plan.result, **base)


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


def _store_edited(session: Session, info: deliveries.LockedRecipient, edited: bytes,
                  options: Options) -> int:
    """The blob of a message editheader changed, analysed and indexed like any delivered."""
    try:
        meta: dict[str, Any] | None = metadata_dict(analyze(edited))
    except ValueError:
        meta = None  # readers re-analyze, as for any message whose metadata was refused
    return messages.store_message(session, edited, meta,
                                  doc=_text(edited, options.fts_max_bytes, info.queue_id,
                                            info.message_id))


def _act(session: Session, info: deliveries.LockedRecipient, rcpt: spool.RecipientInfo,
         user_id: int, plan: _Plan, options: Options, now: datetime,
         edited: bytes | None = None) -> list[Envelope]:
    """Redirects and the vacation reply of a Sieve run; the entries to enqueue."""
    envelopes = []
    local, remote = _split_local(session, plan.redirects)
    message: bytes | None = None
    if edited is not None and plan.redirects:
        # the edited message goes as a new queued message, with the envelope sender kept
        # and the loop mark of this account on top (RFC 5228 4.2)
        account = deliveries.account_address(session, user_id)
        message = f"{LOOP_FIELD}: {account}\r\n".encode() + edited
    if local and message is not None:
        queue_id, ids = spool.create_spool_ids(
            session, kind="local", mail_from=info.mail_from,
            recipients=[spool.NewRecipient(a, "outbound") for a in local],
            message=message, size=len(message), enqueued_at=now)
        envelopes.append(Envelope(queue_id, tuple(ids), "outbound"))
    elif local:
        forwards = [deliveries.add_forward(session, rcpt, info.spool_message_id, address, now)
                    for address in local]
        envelopes.append(Envelope(info.queue_id, tuple(forwards), "outbound"))
    if remote:
        # off our domains: as the account's domain forwards it (SRS sender, ARC seal)
        if message is None:
            message = messages.get_message(session, info.message_id)
        envelopes.append(forward(session, options.sender, message, mail_from=info.mail_from,
                                 rcpts=remote, forwarding_domain=_domain(rcpt.address),
                                 now=now, notify=rcpt.notify,
                                 orcpt=rcpt.orcpt or rcpt.address))
    if plan.vacation is not None and plan.facts is not None:
        facts, vacation = plan.facts, plan.vacation
        spec = ReplySpec(reason=vacation.reason, subject=vacation.subject, days=vacation.days,
                         addresses=vacation.addresses, sender=vacation.sender,
                         mime=vacation.mime)
        account = deliveries.account_address(session, user_id)
        why_not = skip_reason(facts, account, spec)
        # one log row per sender and handle (RFC 5230 4.2: different handles, separate counts)
        key = info.mail_from + (f" {vacation.handle[:64]}" if vacation.handle else "")
        if why_not is not None:
            log.info("vacation reply skipped", queue_id=info.queue_id, user_id=user_id,
                     reason=why_not)
        elif not claim_vacation_reply(session, user_id, key, spec.days, now):
            log.info("vacation reply skipped", queue_id=info.queue_id, user_id=user_id,
                     reason="already replied to this sender recently")
        else:
            message = build_reply(facts, account, spec, hostname=options.hostname, now=now)
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
