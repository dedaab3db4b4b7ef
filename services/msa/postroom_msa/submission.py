"""End of DATA on submission: check From:, add Date/Message-ID and Received:, sign, spool.

Order matters for durability (docs/architecture.md): the queue is asked whether it is up
*before* anything is committed (down: 451 4.3.0, nothing stored); the 250
goes out only after the spool commit; an enqueue that fails after the commit
is logged and left to the reconciler, and the client still gets its 250
because the message is durable. DKIM signing is CPU work and runs in its own
bounded thread pool, never on the reactor thread.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.threadpool import ThreadPool

from postroom import outgoing
from postroom.interfaces import ReactorThreads, defer_to_pool
from postroom.logs import Logger, get_logger
from postroom.mailauth import dkimsign
from postroom.mailauth.keycache import DkimKeyCache
from postroom.metrics import Metrics, dkim_key_lookups_total, errors_total, messages_total
from postroom.mime.addresses import parse_addresses
from postroom.mime.headers import HeaderBlock, scan_header
from postroom.mime.model import Limits
from postroom.queue import counters
from postroom.queue.envelope import MAX_RECIPIENTS
from postroom.queue.envelope import Envelope as QueueEnvelope
from postroom.queue.reconciler import Enqueuer
from postroom.secretbox import Keyring, SecretError
from postroom.smtp.received import received_header
from postroom.smtp.replies import Reply
from postroom.smtp.session import Envelope, Session
from postroom.store.addresses import normalise_domain
from postroom.store.db import Database, StoreSession
from postroom.store.errors import InvalidAddress
from postroom.store.groupcommit import GroupCommit
from postroom.store.queueid import new_queue_id
from postroom.store.spool import NewRecipient
from postroom_msa import lookups
from postroom_msa import replies as M
from postroom_msa.limits import SendingLimits

log = get_logger("msa")

# session.extra key: the transaction's RCPT addresses found local (set at RCPT, cleared at
# MAIL); they are spooled on `deliver` (docs/decisions/0030)
LOCAL_RECIPIENTS = "msa_local_recipients"

# --- pure message helpers


def header_block(message: bytes) -> HeaderBlock:
    """The whole header section up to the blank line, as the From: check must see it.

    A malformed line (neither a field nor a continuation) does not end it: a
    reader downstream may skip that line and take a ``From:`` after it for the
    author, so every field up to the blank line is checked (a malformed line
    with a colon counts under its lenient name, so ``From :`` or ``From\\x01:``
    is a From: field too). Nothing is capped or cut, the message is already in
    memory, and the scan is one linear pass (``postroom.mime.headers``).
    """
    size = len(message) + 1
    return scan_header(message, 0, len(message),
                       Limits(max_headers=size, max_header_bytes=size, max_value_chars=size),
                       whole_block=True)


def header_end(message: bytes) -> int:
    """Where the header's leading run of well-formed fields ends: the blank line, or the
    first malformed line. Added fields go here, where every reader sees them as header."""
    return header_block(message).fields_end


def header_fields(message: bytes) -> list[tuple[str, str]]:
    """(lowercase name, unfolded value) of every field of the whole header, in order."""
    return _text_fields(header_block(message))


def _text_fields(block: HeaderBlock) -> list[tuple[str, str]]:
    return [(name, value.decode("utf-8", "replace")) for name, value in block.fields]


def values(fields: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [value for field, value in fields if field == name]


def mailbox_addresses(value: str) -> list[str] | None:
    """Every address in a From:/Sender: value, as two parsers see it; None when unparseable.

    Both the stdlib's parser and the tolerant one the IMAP side uses are asked
    and their union returned, so a crafted value that one parser reads as a
    different address than the other cannot slip an unowned one past the check.
    """
    found: list[str] = []
    for _name, address in getaddresses([value]):
        if address:
            found.append(address)
    for parsed in parse_addresses(value):
        if parsed.mailbox is None or parsed.host is None:
            continue  # group markers
        found.append(f"{parsed.mailbox}@{parsed.host}")
    if not found or any("@" not in a for a in found):
        return None
    return list(dict.fromkeys(found))


def make_message_id(queue_id: str, hostname: str) -> str:
    """``<QUEUEID.random@hostname>``: unique, and traceable to our logs (RFC 5322 3.6.4)."""
    return f"<{queue_id}.{secrets.token_hex(6)}@{hostname}>"


def add_missing_fields(message: bytes, *, queue_id: str, hostname: str, now: datetime,
                       block: HeaderBlock | None = None) -> tuple[bytes, list[str]]:
    """Add Date: and Message-ID: when absent (RFC 6409 section 8.2, 8.3); the new message and
    the names added. They go at the end of the header section, where MUAs put them.
    ``block``: ``header_block(message)`` when the caller has it already."""
    block = header_block(message) if block is None else block
    fields = _text_fields(block)
    added: list[bytes] = []
    names: list[str] = []
    if not values(fields, "date"):
        added.append(f"Date: {format_datetime(now)}\r\n".encode("ascii"))
        names.append("Date")
    if not values(fields, "message-id"):
        added.append(f"Message-ID: {make_message_id(queue_id, hostname)}\r\n".encode())
        names.append("Message-ID")
    if not added:
        return message, names
    end = block.fields_end
    return message[:end] + b"".join(added) + message[end:], names


def sign_all(message: bytes, keys: Sequence[lookups.SigningKey], keyring: Keyring) -> bytes:
    """The DKIM-Signature fields for ``message``, one per key (runs in the signing pool).

    The one signer of everything we send (``postroom.outgoing.sign``: bounces,
    replies and reports are signed by it too).
    """
    return outgoing.sign(message, keys, keyring)


def _domain_of(address: str) -> str | None:
    try:
        return normalise_domain(address.rpartition("@")[2])
    except InvalidAddress:
        return None


def _check_content(session: StoreSession, user_id: int, own_address: str, addresses: Sequence[str],
                   signing_domain: str | None) -> tuple[list[str], list[lookups.SigningKey]]:
    refused = lookups.not_owned(session, user_id, own_address, addresses)
    keys = lookups.signing_keys(session, signing_domain) if signing_domain else []
    return refused, keys


# --- the pipeline


class Submitter:
    """Turns an accepted DATA into a spooled, signed, enqueued message (or a refusal)."""

    def __init__(self, database: Database, enqueuer: Enqueuer, limits: SendingLimits, *,
                 hostname: str, sign_pool: ThreadPool, redis_pool: ThreadPool,
                 reactor: ReactorThreads, metrics: Metrics | None = None,
                 keyring: Keyring | None = None, group_commit: int = 64,
                 group_commit_bytes: int = 16 * 1024 * 1024,
                 crash_file: str | None = None,
                 key_cache: DkimKeyCache[lookups.SigningKey] | None = None) -> None:
        self.database = database
        # a domain's signing keys, forgotten on every announced key change (main.py)
        self.key_cache: DkimKeyCache[lookups.SigningKey] = (
            key_cache if key_cache is not None else DkimKeyCache(ttl=0))
        self._key_lookups = dkim_key_lookups_total(metrics) if metrics is not None else None
        # spool rows of messages finishing together: one transaction (docs/decisions/0018)
        self.spooler: GroupCommit[int, lookups.Spooled, AfterCommit] = GroupCommit(
            database, lookups.spool_submission, self._publish, max_messages=group_commit,
            max_bytes=group_commit_bytes, metrics=metrics, crash_file=crash_file,
            batch=lookups.spool_submissions)
        self.keyring = keyring if keyring is not None else Keyring()
        self.enqueuer = enqueuer
        self.limits = limits
        self.hostname = hostname
        self.sign_pool = sign_pool
        self.redis_pool = redis_pool
        self.reactor = reactor
        self._messages = messages_total(metrics) if metrics is not None else None
        self._errors = errors_total(metrics) if metrics is not None else None
        self._in_flight: set[Deferred[Any]] = set()

    def submit(self, session: Session, envelope: Envelope, message: bytes) -> Deferred[Reply]:
        """The reply to the end of DATA; tracked so that a shutdown can wait for it."""
        d: Deferred[Reply] = Deferred.fromCoroutine(self._submit(session, envelope, message))
        self._in_flight.add(d)

        def done(result: Any) -> Any:
            self._in_flight.discard(d)
            return result

        return d.addBoth(done)

    def drain(self) -> Deferred[Any]:
        """Fires when every submission in progress has been answered (for SIGTERM)."""
        return DeferredList(list(self._in_flight), consumeErrors=True)

    def _count(self, outcome: str) -> None:
        if self._messages is not None:
            self._messages.labels(outcome=outcome).inc()

    def count_refusal(self, reason: str) -> None:
        """Count a message refused before DATA as ``rejected_<reason>`` (a constant)."""
        self._count(f"rejected_{reason}")

    async def _submit(self, session: Session, envelope: Envelope, message: bytes) -> Reply:
        user = session.identity
        slog = log.bind(session=session.id, peer=session.peer_ip, user=user.address)
        block = header_block(message)
        if block.defects:
            slog.info("submission header defects", defects=block.defects)
        fields = _text_fields(block)
        from_values = values(fields, "from")
        if not from_values:
            slog.warning("submission refused", reason="not exactly one From field", count=0)
            self._count("rejected_from_count")
            return M.NEED_ONE_FROM
        # every From: field is checked, not only the first: a second one (RFC 5322 allows
        # one) with a foreign address is an impersonation attempt and refused as such
        authored = [mailbox_addresses(value) for value in from_values]
        claimed = [a for authors in authored for a in authors or []]
        for sender in values(fields, "sender"):
            claimed += mailbox_addresses(sender) or ["<unparseable Sender>"]
        if any(authors is None for authors in authored):
            slog.warning("submission refused", reason="From field unparseable")
            self._count("rejected_from_unparseable")
            return M.FROM_NOT_OWNED
        first = authored[0] or []
        signing_domain = _domain_of(first[0])
        # the domain's keys from the key cache when it has them (postroom.mailauth.keycache)
        cached = self.key_cache.get(signing_domain) if signing_domain else None
        generation = self.key_cache.generation
        refused: list[str]
        keys: list[lookups.SigningKey]
        if cached is not None and all(lookups.owns_trivially(user.address, a)
                                      for a in claimed):
            # the account's own address and keys already known: nothing to ask the store,
            # so no `db` pool hand-off (the common case: a user sending as themselves)
            refused, keys = [], []
        else:
            refused, keys = await self.database.run(
                _check_content, user.id, user.address, claimed,
                signing_domain if cached is None else None)
        if cached is not None:
            keys = list(cached)
        elif signing_domain:
            self.key_cache.put(signing_domain, tuple(keys), generation)
        if signing_domain and self._key_lookups is not None:
            self._key_lookups.labels(source="store" if cached is None else "cached").inc()
        if refused:
            slog.warning("submission refused", reason="From or Sender not owned",
                         addresses=refused[:10], from_fields=len(from_values))
            self._count("rejected_from_not_owned")
            return M.FROM_NOT_OWNED
        if len(from_values) != 1:
            slog.warning("submission refused", reason="not exactly one From field",
                         count=len(from_values))
            self._count("rejected_from_count")
            return M.NEED_ONE_FROM
        if not await self.enqueuer.available():
            # before the commit: a 4xx now loses nothing and duplicates nothing
            slog.warning("submission deferred", reason="queue unavailable")
            self._count("deferred")
            return M.TRY_LATER
        return await self._accept(session, envelope, message, block, keys, slog)

    async def _accept(self, session: Session, envelope: Envelope, message: bytes,
                      block: HeaderBlock, keys: list[lookups.SigningKey], slog: Logger) -> Reply:
        queue_id = new_queue_id()
        slog = slog.bind(queue_id=queue_id)
        now = datetime.now(UTC)
        message, added = add_missing_fields(message, queue_id=queue_id, hostname=self.hostname,
                                            now=now, block=block)
        rcpts = [r.address for r in envelope.recipients]
        message = received_header(session, hostname=self.hostname, queue_id=queue_id,
                                  recipients=rcpts, smtputf8=envelope.smtputf8,
                                  when=now) + message
        if keys:
            try:
                signatures = await defer_to_pool(self.reactor, self.sign_pool, sign_all,
                                                 message, keys, self.keyring)
            except SecretError as exc:
                # a key sealed with a key we lack (or damaged): defer, as for a bad key
                slog.error("dkim key unreadable", error=str(exc),
                           selectors=[k.selector for k in keys])
                if self._errors is not None:
                    self._errors.labels(kind="dkim_key").inc()
                self._count("deferred")
                return M.TRY_LATER
            except dkimsign.DKIMSignError as exc:
                # OpenDKIM's default: a key that cannot sign defers mail rather than send it
                # unsigned, where DMARC would fail it at every receiver
                slog.error("dkim signing failed", error=str(exc),
                           selectors=[k.selector for k in keys])
                self._count("deferred")
                return M.TRY_LATER
            message = signatures + message
        # committed with the submissions finishing DATA meanwhile (one transaction); the
        # XADDs and the usage counts (one pipeline) run in the spool's thread after its COMMIT
        try:
            spooled, after = await self.spooler.submit(
                session.identity.id, len(message), queue_id=queue_id,
                mail_from=str(envelope.mail_from) if envelope.mail_from else "",
                recipients=_spool_recipients(envelope, session.extra.get(LOCAL_RECIPIENTS, ())),
                message=message,
                size=envelope.mail_params.size, body=envelope.mail_params.body,
                smtputf8=envelope.smtputf8, ret=envelope.mail_params.ret,
                envid=envelope.mail_params.envid, peer_ip=session.peer_ip, helo=session.helo,
                auth_user=session.identity.address, enqueued_at=now)
        except Exception as exc:  # noqa: BLE001 - not committed (or not known to be): 451
            slog.warning("submission deferred", reason="spool commit failed",
                         error=str(exc)[:300], error_type=type(exc).__name__)
            self._count("deferred")
            return M.TRY_LATER
        # committed: a failed XADD is the reconciler's job, a lost count only a lost count
        if isinstance(after, Exception):
            # _publish returns its errors; one it raised is a bug, but the message is
            # committed all the same: the reconciler enqueues it, and the client hears 250
            slog.error("after-commit steps failed", error=str(after))
            enqueued: list[tuple[QueueEnvelope, str | Exception]] = []
            usage_error: Exception | None = after
            totals: dict[str, int] | None = None
        else:
            enqueued, usage_error, totals = after
        for queued, outcome in enqueued:
            self.enqueuer.enqueued_in_thread(queued, outcome)
        # the counters as the INCRBYs left them: the account's next MAIL reads them here
        self.limits.counted(session.identity.id, totals)
        if usage_error is not None:
            slog.warning("sending usage not recorded", error=str(usage_error))
        self._count("accepted")
        slog.info("message accepted", size=len(message), recipients=len(spooled.recipient_ids),
                  mail_from=str(envelope.mail_from or ""), added=added or None,
                  dkim=[f"{k.selector}/{k.algorithm}" for k in keys] or None,
                  tls=session.tls.version if session.tls else None)
        return M.queued(queue_id)

    def _publish(self, committed: Sequence[tuple[int, lookups.Spooled]]) -> list[AfterCommit]:
        """In the spool's thread after a group COMMIT (blocking): every committed message's
        recipients onto their streams and each sender's usage counts, all in one pipelined
        round trip; each step's error is returned, not raised."""
        envelopes = [_envelopes(spooled) for _user_id, spooled in committed]
        flat = [queued for per_message in envelopes for queued in per_message]
        # each message's counts: its own commands on the pipeline, after the XADDs
        increments = [self.limits.increments(user_id, len(spooled.recipient_ids))
                      for user_id, spooled in committed]

        def count(pipe: Any) -> None:
            for message_increments in increments:
                counters.queue_add(pipe, message_increments)

        outcomes: list[str | Exception]
        counted: list[Any]
        try:
            outcomes, counted = self.enqueuer.enqueue_many_with_blocking(flat, count)
        except Exception as exc:  # noqa: BLE001 (reported on the reactor)
            outcomes = [exc] * len(flat)
            counted = [exc] * sum(2 * len(i) for i in increments)
        results: list[AfterCommit] = []
        at = 0
        done = 0
        for per_message, message_increments in zip(envelopes, increments, strict=True):
            enqueued = list(zip(per_message, outcomes[at:at + len(per_message)], strict=True))
            at += len(per_message)
            replies = counted[done:done + 2 * len(message_increments)]
            done += 2 * len(message_increments)
            usage_error = next((r for r in replies if isinstance(r, Exception)), None)
            # each INCRBY's reply: its counter's value with this message (SendingLimits.counted)
            totals = None if usage_error is not None else {
                key: int(replies[2 * i]) for i, (key, _amount, _ttl) in
                enumerate(message_increments)}
            results.append((enqueued, usage_error, totals))
        return results


# what the after-commit steps give one message: each outbound entry's XADD outcome, the
# usage count's error (None: counted) and the counters' values it left (None: not counted)
AfterCommit = tuple[list[tuple[QueueEnvelope, str | Exception]], Exception | None,
                    dict[str, int] | None]


def _spool_recipients(envelope: Envelope, local: Collection[str]) -> list[NewRecipient]:
    """Every recipient with its stream and DSN parameters as the spool keeps them: NOTIFY
    as ``A,B``, ORCPT as the bare address. Those RCPT found local (``local``: existing
    recipients of our domains) go on ``deliver``, to the mda; the others on ``outbound``,
    to the relay, which still moves any local one it finds (docs/decisions/0030)."""
    result = []
    for rcpt in envelope.recipients:
        params = rcpt.params
        notify = ",".join(params.notify) if params.notify else None
        orcpt = params.orcpt[1] if params.orcpt else None
        address = str(rcpt.address)
        stream = "deliver" if address in local else "outbound"
        result.append(NewRecipient(address, stream, orcpt, notify))
    return result


def _envelopes(spooled: lookups.Spooled) -> list[QueueEnvelope]:
    """The stream entries of a committed message: per stream, its recipients in
    MAX_RECIPIENTS chunks (``deliver`` first)."""
    streams = spooled.streams or ("outbound",) * len(spooled.recipient_ids)
    result = []
    for stream in ("deliver", "outbound"):
        ids = [rid for rid, s in zip(spooled.recipient_ids, streams, strict=True) if s == stream]
        result += [QueueEnvelope(queue_id=spooled.queue_id, stream=stream,
                                 recipient_ids=tuple(ids[start:start + MAX_RECIPIENTS]))
                   for start in range(0, len(ids), MAX_RECIPIENTS)]
    return result
