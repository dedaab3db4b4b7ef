"""What an SMTP session knows: the peer, HELO, TLS, the authenticated identity, the transaction."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from postroom.net.tls import TLSInfo
from postroom.smtp.grammar import Address, MailParams, RcptParams


@dataclass(frozen=True)
class Recipient:
    address: Address
    params: RcptParams


@dataclass
class Transaction:
    """One mail transaction, from an accepted MAIL to the end of DATA/BDAT or RSET."""

    mail_from: Address | None
    mail_params: MailParams
    recipients: list[Recipient] = field(default_factory=list)
    # "DATA" or "BDAT" once content has started (RFC 3030 forbids mixing them)
    content_command: str | None = None


@dataclass(frozen=True)
class Envelope:
    """A finished transaction as handed to the policy's ``deliver``."""

    mail_from: Address | None
    mail_params: MailParams
    recipients: tuple[Recipient, ...]

    @property
    def smtputf8(self) -> bool:
        return self.mail_params.smtputf8


@dataclass
class Session:
    """Per-connection state; the policy may keep its own notes in ``extra``."""

    peer_ip: str
    peer_port: int
    local_ip: str = ""
    local_port: int = 0
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    # reverse DNS name of the peer, if the policy looked it up (the engine does no DNS)
    peer_name: str | None = None
    helo: str | None = None
    esmtp: bool = False
    tls_active: bool = False
    tls: TLSInfo | None = None
    identity: Any = None
    auth_username: str | None = None
    auth_mechanism: str | None = None
    transaction: Transaction | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def authenticated(self) -> bool:
        return self.identity is not None

    def reset_after_tls(self) -> None:
        """RFC 3207 section 4.2: forget everything learnt before the TLS handshake."""
        self.helo = None
        self.esmtp = False
        self.identity = None
        self.auth_username = None
        self.auth_mechanism = None
        self.transaction = None
        self.tls_active = True
        self.tls = None

    def protocol_name(self, smtputf8: bool = False) -> str:
        """The Received ``with`` keyword (RFC 3848, RFC 6531): ESMTP, ESMTPSA, UTF8SMTPS..."""
        if not self.esmtp:
            return "SMTP"
        base = "UTF8SMTP" if smtputf8 else "ESMTP"
        suffix = ("S" if self.tls_active else "") + ("A" if self.authenticated else "")
        return base + suffix
