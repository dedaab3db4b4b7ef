"""SQLAlchemy 2 declarative models of the store; the Alembic migrations create the same schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# stable constraint names, so migrations and error handling can refer to them
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SPECIAL_USES = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
MTA_STS_MODES = ("none", "testing", "enforce")
SPOOL_KINDS = ("inbound", "submission", "bounce", "local")
STREAMS = ("deliver", "outbound")
RECIPIENT_STATES = ("pending", "delivered", "failed", "bounced")
DKIM_ALGORITHMS = ("rsa-sha256", "ed25519-sha256")


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"{column} IN ({quoted})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# UIDVALIDITY source: see mailboxes.new_uidvalidity for how it is kept ahead of the clock
UIDVALIDITY_SEQUENCE = Sequence("mailbox_uidvalidity_seq", metadata=Base.metadata,
                                minvalue=1, maxvalue=4294967295)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class SchemaCompat(Base):
    """One row per revision whose release runs on the schema as it is now (docs/upgrades.md).

    Written by `postroom db upgrade` / `db downgrade` from the migrations' kinds, so an
    older release, which cannot know the newer migrations, can tell whether it fits.
    """

    __tablename__ = "schema_compat"

    revision: Mapped[str] = mapped_column(Text, primary_key=True)


class Domain(Base):
    """A domain we receive mail for; the name is the lowercase A-label form."""

    __tablename__ = "domains"
    __table_args__ = (CheckConstraint("name = lower(name) AND name <> ''", name="name_lower"),
                      CheckConstraint(_in("mta_sts_mode", MTA_STS_MODES), name="mta_sts_mode"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = _now()
    # RFC 8461: the policy the web service serves at mta-sts.<name> (none: no policy), and
    # the id= of its _mta-sts TXT record, new whenever the policy changes (migration 0017)
    mta_sts_mode: Mapped[str] = mapped_column(Text, server_default=text("'none'"))
    mta_sts_id: Mapped[str | None] = mapped_column(Text, nullable=True)


class User(Base):
    """A mail account; quotas of NULL mean unlimited."""

    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("domain_id", "localpart"),
        CheckConstraint("quota_bytes IS NULL OR quota_bytes >= 0", name="quota_bytes"),
        CheckConstraint("quota_messages IS NULL OR quota_messages >= 0", name="quota_messages"),
        CheckConstraint("position('@' in address) > 1", name="address"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # RESTRICT: removing a domain that still has accounts must be a deliberate, separate step
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="RESTRICT"),
                                           index=True)
    localpart: Mapped[str] = mapped_column(Text)
    address: Mapped[str] = mapped_column(Text, unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    # SCRAM-SHA-256 salt, iterations, StoredKey, ServerKey (never the password); NULL for
    # passwords set before they were kept: such accounts cannot use SCRAM (users.py)
    scram_secrets: Mapped[str | None] = mapped_column(Text)
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger)
    quota_messages: Mapped[int | None] = mapped_column(BigInteger)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = _now()
    # a global admin of the web console and REST API: every domain (migration 0013)
    is_admin: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # two-factor login for the web console (migration 0016; postroom.store.totp): the TOTP
    # secret (a postroom.secretbox envelope under POSTROOM_SECRET_KEY_FILE) is deferred, so a
    # login service's select(User) never reads it (its role may not: postroom.store.roles)
    totp_secret: Mapped[str | None] = mapped_column(Text, deferred=True)
    # on: the main password is refused by IMAP, POP3 and SMTP; only app passwords log in
    totp_enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # the last accepted TOTP time step: a code is never accepted twice (replay)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, deferred=True)

    domain: Mapped[Domain] = relationship()


class Alias(Base):
    """``source`` (an address, or ``@domain`` for a catch-all) forwards to ``destination``."""

    __tablename__ = "aliases"
    __table_args__ = (
        UniqueConstraint("source", "destination"),
        CheckConstraint("position('@' in source) >= 1", name="source"),
        CheckConstraint("position('@' in destination) > 1", name="destination"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # the source's domain: aliases go when their domain goes
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"),
                                           index=True)
    source: Mapped[str] = mapped_column(Text, index=True)
    destination: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()


class DkimKey(Base):
    """A DKIM signing key of a domain; ``public_key_b64`` is the p= value of the DNS record.

    Its state (docs/msa.md, "DKIM key lifecycle"): pending (``pending``: generated, its
    record not yet seen in DNS, never signs), active (``active``: signs) or retired
    (neither). ``active`` alone decides signing, as before migration 0007, and wins over
    ``pending`` (no constraint ties them: the release before 0007 sets ``active`` alone).
    """

    __tablename__ = "dkim_keys"
    __table_args__ = (
        UniqueConstraint("domain_id", "selector"),
        CheckConstraint(_in("algorithm", DKIM_ALGORITHMS), name="algorithm"),
        CheckConstraint("selector <> ''", name="selector"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"),
                                           index=True)
    selector: Mapped[str] = mapped_column(Text)
    algorithm: Mapped[str] = mapped_column(Text)
    # a PEM, or a postroom.secretbox envelope (`enc:v1:...`) under POSTROOM_SECRET_KEY_FILE
    private_key_pem: Mapped[str] = mapped_column(Text)
    public_key_b64: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = _now()
    # migration 0007 (expand): the lifecycle
    pending: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # the key `dkim rotate` made this one to replace: retired when this one becomes active
    replaces_id: Mapped[int | None] = mapped_column(
        ForeignKey("dkim_keys.id", ondelete="SET NULL"), nullable=True)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Mailbox(Base):
    """An IMAP mailbox; ``uidnext``/``highestmodseq`` are allocated under this row's lock."""

    __tablename__ = "mailboxes"
    __table_args__ = (
        UniqueConstraint("user_id", "name"),
        CheckConstraint("uidvalidity > 0 AND uidvalidity <= 4294967295", name="uidvalidity"),
        CheckConstraint("uidnext > 0 AND uidnext <= 4294967296", name="uidnext"),
        CheckConstraint("highestmodseq > 0", name="highestmodseq"),
        CheckConstraint("name <> ''", name="name"),
        CheckConstraint("special_use IS NULL OR " + _in("special_use", SPECIAL_USES),
                        name="special_use"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uidnext: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))
    highestmodseq: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))
    special_use: Mapped[str | None] = mapped_column(Text)
    subscribed: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = _now()
    # `postroom import dovecot`: the old server's UIDNEXT when this mailbox was last imported;
    # a rerun takes only UIDs from here up (what is below was imported, or expunged since)
    import_uidnext: Mapped[int | None] = mapped_column(BigInteger)
    # IMAP: the first UID no session has taken as \\Recent yet (RFC 3501 2.3.2), and every
    # keyword the mailbox has had, which SELECT and FLAGS responses announce (0009)
    recent_uid: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))
    keywords: Mapped[list[str]] = mapped_column(ARRAY(Text),
                                                server_default=text("'{}'::text[]"))
    # QRESYNC: expunges at or below this modseq are no longer remembered (expunged_entries)
    vanished_floor: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class Message(Base):
    """A message's bytes, stored once per distinct content (keyed by SHA-256)."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256"),
        CheckConstraint("size = octet_length(blob)", name="size"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sha256: Mapped[str] = mapped_column(Text, unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    # cached envelope, bodystructure and search headers, filled at delivery
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB,
                                                 server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = _now()


class ServerAnnotation(Base):
    """A METADATA entry (RFC 5464) of an account on the server (``GETMETADATA ""``)."""

    __tablename__ = "server_annotations"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class MailboxAnnotation(Base):
    """A METADATA entry (RFC 5464) of one mailbox; RENAME keeps it, DELETE removes it."""

    __tablename__ = "mailbox_annotations"

    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"),
                                            primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class ExpungedEntry(Base):
    """A UID expunged from a mailbox and the modseq of the expunge (QRESYNC's VANISHED)."""

    __tablename__ = "expunged_entries"
    __table_args__ = (
        Index("ix_expunged_entries_mailbox_id_modseq", "mailbox_id", "modseq"),
    )

    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"),
                                            primary_key=True)
    uid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    modseq: Mapped[int] = mapped_column(BigInteger)
    expunged_at: Mapped[datetime] = _now()


class LearnRequest(Base):
    """A message to teach rspamd as spam or ham, until the learn worker did (then deleted).

    Written by the imap service in the COPY/MOVE transaction; the ``learn``
    stream only signals it (docs/content-filtering.md, Learning). No foreign
    keys: a row whose message or user is gone is skipped and deleted by the
    worker, and deleting mail pays no extra lookup.
    """

    __tablename__ = "learn_requests"
    __table_args__ = (
        CheckConstraint("klass IN ('spam', 'ham')", name="klass"),
        Index("ix_learn_requests_signalled_at", "signalled_at"),
    )

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    klass: Mapped[str] = mapped_column(Text, primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = _now()
    signalled_at: Mapped[datetime] = _now()


class MailboxEntry(Base):
    """A message in a mailbox under a UID, with its flags and CONDSTORE mod-sequence."""

    __tablename__ = "mailbox_entries"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "uid"),
        Index("ix_mailbox_entries_mailbox_id_modseq", "mailbox_id", "modseq"),
        CheckConstraint("uid > 0", name="uid"),
        CheckConstraint("modseq > 0", name="modseq"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailboxes.id", ondelete="CASCADE"))
    uid: Mapped[int] = mapped_column(BigInteger)
    # RESTRICT: a blob goes only when nothing refers to it (see messages.delete_orphans)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="RESTRICT"),
                                            index=True)
    flags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    modseq: Mapped[int] = mapped_column(BigInteger)
    internaldate: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # the idempotency key of delivery: a redelivered queue entry finds its copy here
    spool_recipient_id: Mapped[int | None] = mapped_column(
        ForeignKey("spool_recipients.id", ondelete="SET NULL"), unique=True)
    # the POP3 UIDL an imported message had on the old server (NULL: "<uidvalidity>.<uid>")
    pop3_uidl: Mapped[str | None] = mapped_column(Text)


class SpoolMessage(Base):
    """A message in the queue with its SMTP envelope (RFC 5321, 3461, 6152, 6531 parameters)."""

    __tablename__ = "spool_messages"
    __table_args__ = (
        CheckConstraint(_in("kind", SPOOL_KINDS), name="kind"),
        CheckConstraint("body IS NULL OR " + _in("body", ("7BIT", "8BITMIME", "BINARYMIME")),
                        name="body"),
        CheckConstraint("ret IS NULL OR " + _in("ret", ("FULL", "HDRS")), name="ret"),
        CheckConstraint(_in("disposition", ("inbox", "junk")), name="disposition"),
        CheckConstraint("size IS NULL OR size >= 0", name="size"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    queue_id: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(Text)
    # '' is the null reverse-path <> of bounces
    mail_from: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    body: Mapped[str | None] = mapped_column(Text)
    smtputf8: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    ret: Mapped[str | None] = mapped_column(Text)
    envid: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="RESTRICT"),
                                            index=True)
    received_at: Mapped[datetime] = _now()
    peer_ip: Mapped[str | None] = mapped_column(INET)
    helo: Mapped[str | None] = mapped_column(Text)
    auth_user: Mapped[str | None] = mapped_column(Text)
    disposition: Mapped[str] = mapped_column(Text, server_default=text("'inbox'"))

    recipients: Mapped[list[SpoolRecipient]] = relationship(
        back_populates="spool_message", order_by="SpoolRecipient.id")


class SpoolRecipient(Base):
    """One recipient of a spooled message and its delivery state."""

    __tablename__ = "spool_recipients"
    __table_args__ = (
        Index("ix_spool_recipients_state_next_attempt_at", "state", "next_attempt_at"),
        CheckConstraint(_in("stream", STREAMS), name="stream"),
        CheckConstraint(_in("state", RECIPIENT_STATES), name="state"),
        CheckConstraint("attempts >= 0", name="attempts"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    spool_message_id: Mapped[int] = mapped_column(
        ForeignKey("spool_messages.id", ondelete="CASCADE"), index=True)
    # set when an alias expanded another recipient of the same message into this one
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("spool_recipients.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(Text)
    orcpt: Mapped[str | None] = mapped_column(Text)
    notify: Mapped[str | None] = mapped_column(Text)
    stream: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = _now()
    # when last put on a Redis stream; NULL or old means the reconciler may enqueue it again
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = _now()

    spool_message: Mapped[SpoolMessage] = relationship(back_populates="recipients")


class SpoolAttempt(Base):
    """One outcome in a recipient's history (each delivery attempt, bounce): for `postroom trace`.

    Written by the spool's state functions in the same transaction as the state
    change, so the history can never disagree with the recipient's state.
    """

    __tablename__ = "spool_attempts"
    __table_args__ = (
        CheckConstraint(_in("result", ("delivered", "deferred", "failed", "bounced")),
                        name="result"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    recipient_id: Mapped[int] = mapped_column(
        ForeignKey("spool_recipients.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = _now()
    result: Mapped[str] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)


class DmarcResult(Base):
    """The verdict on one inbound message, kept for DMARC aggregate reports (RFC 7489 7.2)."""

    __tablename__ = "dmarc_results"
    __table_args__ = (
        Index("ix_dmarc_results_reporting_domain_received_at", "reporting_domain", "received_at"),
        CheckConstraint(_in("spf_result", ("none", "neutral", "pass", "fail", "softfail",
                                           "temperror", "permerror")), name="spf_result"),
        CheckConstraint(_in("dkim_result", ("none", "pass", "fail", "policy", "neutral",
                                            "temperror", "permerror")), name="dkim_result"),
        CheckConstraint(_in("dmarc_result", ("none", "pass", "fail", "temperror",
                                             "permerror")), name="dmarc_result"),
        CheckConstraint("policy IS NULL OR " + _in("policy", ("none", "quarantine", "reject")),
                        name="policy"),
        CheckConstraint(_in("disposition", ("none", "quarantine", "reject")),
                        name="disposition"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    received_at: Mapped[datetime] = _now()
    queue_id: Mapped[str | None] = mapped_column(Text)
    source_ip: Mapped[str] = mapped_column(INET)
    header_from: Mapped[str] = mapped_column(Text)
    envelope_from: Mapped[str | None] = mapped_column(Text)
    spf_domain: Mapped[str | None] = mapped_column(Text)
    spf_result: Mapped[str] = mapped_column(Text)
    spf_aligned: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    dkim_domain: Mapped[str | None] = mapped_column(Text)
    dkim_selector: Mapped[str | None] = mapped_column(Text)
    dkim_result: Mapped[str] = mapped_column(Text)
    dkim_aligned: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    dmarc_result: Mapped[str] = mapped_column(Text)
    policy: Mapped[str | None] = mapped_column(Text)
    disposition: Mapped[str] = mapped_column(Text)
    # the domain whose rua= receives this row in its aggregate report (the From: domain)
    reporting_domain: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class DmarcIncomingReport(Base):
    """An aggregate report another receiver sent about our domains (migration 0004).

    One row per report mail, keyed by the blob's SHA-256 so a rescan never parses
    it twice; refused mails are kept (``status='refused'``, ``error``) for the same reason.
    """

    __tablename__ = "dmarc_incoming_reports"
    __table_args__ = (
        CheckConstraint(_in("status", ("stored", "refused", "duplicate")), name="status"),
        Index("uq_dmarc_incoming_reports_org_name_report_id", "org_name", "report_id",
              unique=True, postgresql_where=text("status = 'stored'")),
        Index("ix_dmarc_incoming_reports_domain_end_at", "domain", "end_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    message_sha256: Mapped[str] = mapped_column(Text, unique=True)
    status: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    org_name: Mapped[str | None] = mapped_column(Text)
    report_id: Mapped[str | None] = mapped_column(Text)
    domain: Mapped[str | None] = mapped_column(Text)
    begin_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    policy: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    rows: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    received_at: Mapped[datetime] = _now()


class TlsResult(Base):
    """One outbound TLS negotiation or policy failure of the relay (migration 0018, RFC 8460).

    ``result_type`` NULL is a success; else an RFC 8460 section 4.3 result type.
    Written in batches by the mta (postroom.store.tlsreports), read by the dmarc
    service's daily TLS report.
    """

    __tablename__ = "tls_results"
    __table_args__ = (
        CheckConstraint(_in("policy_type", ("sts", "tlsa", "no-policy-found")),
                        name="policy_type"),
        Index("ix_tls_results_policy_domain_recorded_at", "policy_domain", "recorded_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    recorded_at: Mapped[datetime] = _now()
    policy_domain: Mapped[str] = mapped_column(Text)
    policy_type: Mapped[str] = mapped_column(Text)
    policy_string: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    mx_host: Mapped[str] = mapped_column(Text, server_default=text("''"))
    sending_ip: Mapped[str | None] = mapped_column(INET)
    receiving_ip: Mapped[str | None] = mapped_column(INET)
    result_type: Mapped[str | None] = mapped_column(Text)
    failure_detail: Mapped[str | None] = mapped_column(Text)


class TlsIncomingReport(Base):
    """A TLS report (RFC 8460) another sender sent about our domains (migration 0018).

    Keyed by the mail's SHA-256 as :class:`DmarcIncomingReport`; ``domains`` are
    the policy domains it covers, ``policies`` its ``policies`` array as sent.
    """

    __tablename__ = "tls_incoming_reports"
    __table_args__ = (
        CheckConstraint(_in("status", ("stored", "refused", "duplicate")), name="status"),
        Index("uq_tls_incoming_reports_org_name_report_id", "org_name", "report_id",
              unique=True, postgresql_where=text("status = 'stored'")),
        Index("ix_tls_incoming_reports_domains", "domains", postgresql_using="gin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    message_sha256: Mapped[str] = mapped_column(Text, unique=True)
    status: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    org_name: Mapped[str | None] = mapped_column(Text)
    report_id: Mapped[str | None] = mapped_column(Text)
    begin_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    domains: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    policies: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    received_at: Mapped[datetime] = _now()


# --- per-user delivery rules (migration 0002); evaluated by the mda, format in docs/mda.md

# one row per account that has rules
mail_rules = Table(
    "mail_rules", Base.metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("rules", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# when an account last sent a vacation reply to a sender (RFC 3834 / RFC 5230 :days)
vacation_replies = Table(
    "vacation_replies", Base.metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("sender", Text, primary_key=True),
    Column("sent_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# --- the searchable text of each blob (migration 0010; postroom.store.fts, docs/imap.md)

# one row per blob, made by the mda at delivery, APPEND, imports and `postroom fts backfill`
message_texts = Table(
    "message_texts", Base.metadata,
    Column("message_id", BigInteger, ForeignKey("messages.id", ondelete="CASCADE"),
           primary_key=True),
    # lowercased, space-normalised decoded text (postroom.mime.fulltext): the substring check
    Column("head", Text, nullable=False),
    Column("body", Text, nullable=False),
    # the words: header words weight A, body words weight D (BODY asks for D only)
    Column("words", TSVECTOR, nullable=False),
    # text beyond POSTROOM_FTS_MAX_BYTES was left out: searches also scan the raw bytes
    Column("truncated", Boolean, nullable=False, server_default=text("false")),
    Column("indexed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_message_texts_words", "words", postgresql_using="gin"),
)

# --- each blob's header block, for SEARCH HEADER (migration 0019; postroom.store.search)

# the blob up to its first empty line (or all of it), uncompressed; filled by a trigger on
# messages at every insert (no code writes it); no row when the header passes 64 kB
message_headers = Table(
    "message_headers", Base.metadata,
    Column("message_id", BigInteger, ForeignKey("messages.id", ondelete="CASCADE"),
           primary_key=True),
    Column("header", LargeBinary, nullable=False),
    # no byte that encode(..., 'escape') rewrites (NUL, 8-bit, backslash): the escaped text is
    # the bytes themselves (postroom.store.search relies on it for its raw-byte test)
    Column("plain", Boolean, nullable=False),
)

# --- console and REST API access (migration 0013; postroom.store.webaccess)

# which domains a (non-admin) account manages in the console and the REST API
domain_managers = Table(
    "domain_managers", Base.metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("domain_id", Integer, ForeignKey("domains.id", ondelete="CASCADE"),
           primary_key=True, index=True),
)

# REST API tokens: only the SHA-256 of the secret is kept; domain_id NULL = every domain
api_tokens = Table(
    "api_tokens", Base.metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("token_sha256", Text, nullable=False, unique=True),
    Column("domain_id", Integer, ForeignKey("domains.id", ondelete="CASCADE"), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# console login sessions: only the SHA-256 of the cookie's secret is kept
web_sessions = Table(
    "web_sessions", Base.metadata,
    Column("id_sha256", Text, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("csrf_token", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

# smarthost routes per recipient domain (Postfix transport_maps; migration 0015): the key is
# a domain or `.parent` (its subdomains); password_ref names a file or secret, never a password
relay_transports = Table(
    "relay_transports", Base.metadata,
    Column("domain", Text, primary_key=True),
    Column("nexthop", Text, nullable=False),
    Column("tls", Text, nullable=False, server_default=text("'starttls'")),
    Column("username", Text, nullable=True),
    Column("password_ref", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# --- app passwords and two-factor login (migration 0016; postroom.store.apppasswords, .totp)

APP_PASSWORD_PROTOCOLS = ("imap", "pop3", "submission", "managesieve")

# per-device passwords for IMAP, POP3, submission and ManageSieve: the scrypt hash only; the
# secret's first group (``lookup``) picks the row; protocols NULL = every protocol
app_passwords = Table(
    "app_passwords", Base.metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("lookup", Text, nullable=False),
    Column("hash", Text, nullable=False),
    Column("protocols", ARRAY(Text), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("last_used_ip", INET, nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("user_id", "name"),
    UniqueConstraint("user_id", "lookup"),
    CheckConstraint("protocols IS NULL OR (cardinality(protocols) > 0 AND protocols <@ "
                    "ARRAY['imap', 'pop3', 'submission', 'managesieve']::text[])",
                    name="protocols"),
)

# single-use recovery codes of two-factor login: only their SHA-256 (they are random)
totp_recovery_codes = Table(
    "totp_recovery_codes", Base.metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("code_sha256", Text, primary_key=True),
    Column("used_at", DateTime(timezone=True), nullable=True),
)

# certificates by ACME (migration 0017): the account key per directory (sealed when a
# secret key is configured), the certificates every service loads (key sealed likewise),
# and the HTTP-01 answers the web service gives while an order is validated
acme_account = Table(
    "acme_account", Base.metadata,
    Column("id", Integer, primary_key=True),
    Column("directory", Text, nullable=False, unique=True),
    Column("key_pem", Text, nullable=False),
    Column("uri", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

tls_certificates = Table(
    "tls_certificates", Base.metadata,
    Column("name", Text, primary_key=True),
    Column("cert_pem", Text, nullable=False),
    Column("key_pem", Text, nullable=False),
    Column("not_after", DateTime(timezone=True), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("names", ARRAY(Text), nullable=False),
)

acme_challenges = Table(
    "acme_challenges", Base.metadata,
    Column("token", Text, primary_key=True),
    Column("key_authorization", Text, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# --- Sieve scripts (migration 0014; postroom.store.sieve, docs/mda.md "Sieve")

# each account's Sieve scripts (RFC 5228), at most one of them active (the one run at delivery)
sieve_scripts = Table(
    "sieve_scripts", Base.metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("content", Text, nullable=False),
    Column("active", Boolean, nullable=False, server_default=text("false")),
    # the UTF-8 length of content, in bytes (what the ManageSieve quota counts)
    Column("size", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("user_id", "name"),
    # one active script per account (RFC 5804 SETACTIVE)
    Index("ix_sieve_scripts_user_id_active", "user_id", unique=True,
          postgresql_where=text("active")),
)
