"""Mail the suite writes or forwards itself: one path to sign, seal, spool and queue it.

Every message Postroom writes (DSN bounces and delay notices, vacation and
Sieve replies, DMARC aggregate reports) goes through :func:`originate`:
DKIM-signed with the active keys (RSA and ed25519, as the msa signs) of its
From: domain or of the nearest parent domain that has keys (so
``MAILER-DAEMON@mx.example.org`` is signed ``d=example.org``, which DMARC's
relaxed alignment accepts), spooled in the caller's transaction with every
recipient on ``outbound``, and queued after the commit by the caller with the
:class:`~postroom.queue.envelope.Envelope` it returns: the msa's durability
(nothing is queued before the spool row is committed; the reconciler
re-queues what Redis lost). The relay moves local recipients to ``deliver``.

Every message Postroom forwards off its domains (alias targets, Sieve and
rule redirects) goes through :func:`forward`: the envelope sender is
rewritten with SRS (:mod:`postroom.mailauth.srs`) so SPF at the next hop
judges the forwarding domain and bounces come back to us, and the message is
ARC-sealed (RFC 8617, dkimpy's ``arc_sign``) with our Authentication-Results,
signed by the forwarding domain's active RSA key (RFC 8617 defines only
rsa-sha256). :func:`bounce_recipient` turns a bounce to one of our SRS
addresses back into the original sender.

A key that cannot sign (sealed with a secret key we lack, damaged) does not
stop the message: it is sent unsigned and the failure is logged loudly; a
bounce or a report held back would be worse than one a strict receiver
refuses. The functions take a ``StoreSession`` and run inside the caller's
transaction on the `db` pool (signing costs about a millisecond with a cached
key; ARC sealing, dkimpy's pure-Python RSA, about ten).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import dkim

from postroom.config import Settings
from postroom.logs import get_logger
from postroom.mailauth import dkimsign
from postroom.mailauth.srs import SRS, SRSError, is_srs, load_keys
from postroom.metrics import Metrics, outgoing_total
from postroom.queue.envelope import Envelope
from postroom.secretbox import DKIM_PRIVATE_KEY, Keyring, SecretError
from postroom.store import dkim as dkim_store
from postroom.store import domains, spool
from postroom.store.db import StoreSession
from postroom.store.dkim import SigningKey

log = get_logger("outgoing")

_DAY = 86400.0


@dataclass(frozen=True)
class Outgoing:
    """What originating and forwarding need: our host name, the DKIM keyring and SRS.

    Made once per service at start-up (:meth:`from_settings`, which fails on an
    unreadable key file); plain enough to hand to the `db` thread.
    """

    hostname: str
    keyring: Keyring = field(default_factory=Keyring)
    srs: SRS | None = None
    # postroom_outgoing_total{kind, result} of the service (None: not counted)
    counter: Any = field(default=None, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> Outgoing:
        keyring = Keyring.from_files(settings.secret_key_file, settings.secret_old_key_files)
        rewriter = None
        if settings.srs_key_file:
            days = max(1, min(1000, int(settings.srs_max_age // _DAY)))
            rewriter = SRS(load_keys(settings.srs_key_file), max_age_days=days)
        counter = outgoing_total(metrics) if metrics is not None else None
        return cls(settings.hostname, keyring, rewriter, counter)

    def count(self, kind: str, result: str) -> None:
        """One message written or forwarded (thread-safe: called in the `db` thread)."""
        if self.counter is not None:
            self.counter.labels(kind=kind.replace(" ", "_"), result=result).inc()


# --- DKIM for what we write


def signing_keys(session: StoreSession, domain: str) -> list[SigningKey]:
    """The active keys of ``domain``, or of its nearest parent domain that has any (a
    host name in one of our domains: relaxed alignment still holds); [] when none has."""
    labels = domain.lower().rstrip(".").split(".")
    for start in range(max(1, len(labels) - 1)):
        keys = dkim_store.active_keys(session, ".".join(labels[start:]))
        if keys:
            return keys
    return []


def sign(message: bytes, keys: Sequence[SigningKey], keyring: Keyring) -> bytes:
    """The DKIM-Signature fields for ``message``, one per key (the msa's signer too).

    A stored key is decrypted once, when it first enters the keyring's cache,
    and its loaded form then comes from dkimsign's cache. Raises SecretError
    or DKIMSignError: the caller decides (the msa defers, :func:`originate` logs).
    """
    return b"".join(dkimsign.sign(message, key.domain, key.selector,
                                  keyring.open_cached(key.private_key, DKIM_PRIVATE_KEY),
                                  key.algorithm) for key in keys)


def _signed(message: bytes, keys: Sequence[SigningKey], keyring: Keyring,
            fields: dict[str, Any]) -> tuple[bytes, str]:
    if not keys:
        log.warning("originated message not signed", reason="no active DKIM key", **fields)
        return message, "unsigned"
    try:
        return sign(message, keys, keyring) + message, "signed"
    except (SecretError, dkimsign.DKIMSignError) as exc:
        log.error("originated message not signed", reason="dkim signing failed",
                  error=str(exc), selectors=[k.selector for k in keys], **fields)
        return message, "sign_failed"


def originate(session: StoreSession, outgoing: Outgoing, message: bytes, *, mail_from: str,
              rcpts: Sequence[str], from_domain: str, now: datetime, kind: str = "local",
              notify: str | None = None, queue_id: str | None = None,
              why: str = "originated", stream: str = "outbound") -> Envelope:
    """Sign and spool a message we wrote; the envelope to queue after commit.

    ``from_domain`` is the domain of its From: (DKIM aligns with it);
    ``mail_from`` is its envelope sender ("" for bounces and auto-replies,
    RFC 3464 and RFC 3834); ``kind`` is the spool kind (``bounce`` for DSNs,
    which are never bounced in turn); ``notify`` the recipients' NOTIFY
    (``NEVER`` for reports); ``why`` names the message in the log. Every
    recipient goes on ``stream``: ``outbound`` (the relay moves local ones on),
    or ``deliver`` when the caller knows they are all ours (a bounce to a
    local sender skips the relay's hop).
    """
    fields: dict[str, Any] = {"what": why, "from_domain": from_domain}
    keys = signing_keys(session, from_domain)
    signed, result = _signed(message, keys, outgoing.keyring, fields)
    made, ids = spool.create_spool_ids(
        session, kind=kind, mail_from=mail_from,
        recipients=[spool.NewRecipient(r, stream, None, notify) for r in rcpts],
        message=signed, size=len(signed), body="7BIT" if signed.isascii() else "8BITMIME",
        queue_id=queue_id, enqueued_at=now)
    log.info("originated message queued", queue_id=made, to=list(rcpts)[:10],
             mail_from=mail_from, dkim=[f"{k.domain}/{k.selector}" for k in keys] or None,
             **fields)
    outgoing.count(why, result)
    return Envelope(made, tuple(ids), stream)


# --- forwarding: SRS and ARC


def forward_sender(session: StoreSession, outgoing: Outgoing, mail_from: str,
                   forwarding_domain: str) -> str:
    """The envelope sender for a copy ``forwarding_domain`` forwards off our domains.

    The null sender stays null (RFC 5321 4.5.5), a sender in one of our
    domains stays (SPF already passes for it), and without an SRS key nothing
    is rewritten; anything else becomes SRS0 (or SRS1) at ``forwarding_domain``.
    """
    if not mail_from or outgoing.srs is None:
        return mail_from
    domain = mail_from.rpartition("@")[2].lower().rstrip(".")
    if not is_srs(mail_from) and domain and domains.is_local_domain(session, domain):
        return mail_from
    try:
        return outgoing.srs.forward(mail_from, forwarding_domain)
    except SRSError:
        return mail_from


def arc_seal(session: StoreSession, outgoing: Outgoing, message: bytes,
             forwarding_domain: str) -> bytes:
    """``message`` with our ARC set (ARC-Seal, ARC-Message-Signature,
    ARC-Authentication-Results) prepended, chaining the sets already there.

    Signed by the forwarding domain's (or its parent's) oldest active RSA key;
    the authserv-id is our host name, whose Authentication-Results the inbound
    mta wrote. Unchanged when there is no such key or result, or dkimpy refuses
    (a broken earlier chain it will not extend): the forward still goes out.
    """
    keys = [k for k in signing_keys(session, forwarding_domain) if k.algorithm == "rsa-sha256"]
    if not keys:
        log.info("forward not sealed", reason="no active RSA key", domain=forwarding_domain)
        return message
    key = keys[0]
    try:
        pem = outgoing.keyring.open_cached(key.private_key, DKIM_PRIVATE_KEY)
        headers = dkim.arc_sign(message, key.selector.encode("ascii"),
                                key.domain.encode("ascii"), pem.encode("ascii"),
                                outgoing.hostname.encode("ascii"))
    except (SecretError, dkim.DKIMException, ValueError, UnicodeError) as exc:
        log.warning("forward not sealed", reason="arc_sign failed", error=str(exc),
                    domain=forwarding_domain)
        return message
    if not headers:
        log.info("forward not sealed", reason="no results of ours in the message",
                 domain=forwarding_domain)
        return message
    return b"".join(headers) + message


def forward(session: StoreSession, outgoing: Outgoing, message: bytes, *, mail_from: str,
            rcpts: Sequence[str], forwarding_domain: str, now: datetime,
            notify: str | None = None, orcpt: str | None = None) -> Envelope:
    """Spool a copy of a received message for remote ``rcpts``, as ``forwarding_domain``
    forwards it (SRS sender, ARC seal); the ``outbound`` envelope to queue after commit.

    The alias expansion and the rules' (and Sieve's) redirects of the mda call
    this for their targets outside our domains; local targets are delivered as
    they are, never rewritten. ``notify`` and ``orcpt`` (the address that was
    forwarded) carry the original recipient's DSN parameters to the copy.
    """
    sender = forward_sender(session, outgoing, mail_from, forwarding_domain)
    sealed = arc_seal(session, outgoing, message, forwarding_domain)
    made, ids = spool.create_spool_ids(
        session, kind="local", mail_from=sender,
        recipients=[spool.NewRecipient(r, "outbound", orcpt, notify) for r in rcpts],
        message=sealed, size=len(sealed), body="7BIT" if sealed.isascii() else "8BITMIME",
        enqueued_at=now)
    log.info("forward queued", queue_id=made, to=list(rcpts)[:10], mail_from=sender,
             original_sender=mail_from if sender != mail_from else None,
             domain=forwarding_domain, arc=sealed is not message)
    outgoing.count("forward", "unsealed" if sealed is message else "sealed")
    return Envelope(made, tuple(ids), "outbound")


def bounce_recipient(outgoing: Outgoing, address: str) -> str:
    """Where a bounce to ``address`` goes: the original sender when it is a valid SRS
    address of ours, else ``address`` itself (an invalid SRS address too: the caller
    that must refuse it asks :meth:`SRS.reverse` directly)."""
    if outgoing.srs is None or not is_srs(address):
        return address
    try:
        return outgoing.srs.reverse(address)
    except SRSError:
        return address
