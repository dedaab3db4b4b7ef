"""The SMTPPolicy interface: what the protocol asks the service that decides and stores.

"Protocol is not policy": :mod:`postroom.smtp.server` parses and replies, and
asks an object implementing :class:`SMTPPolicy` at each decision point. Every
method may return a value or a Deferred of it; an exception or a failed
Deferred is logged with its traceback and the peer gets ``451 4.3.0``.
:class:`BasePolicy` is a permissive starting point to subclass.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias, TypeVar, Union

from twisted.internet.defer import Deferred

from postroom.auth.sasl import Credentials, ScramSecrets
from postroom.smtp import replies as R
from postroom.smtp.grammar import Address, MailParams, RcptParams
from postroom.smtp.replies import Reply
from postroom.smtp.session import Envelope, Session

T = TypeVar("T")
MaybeDeferred: TypeAlias = Union[Deferred[T], T]  # noqa: UP007 (a generic alias needs Union)


class SMTPPolicy(Protocol):
    """The decisions and storage behind one SMTP listener."""

    #: offer AUTH at all (the MSA does; the MTA on port 25 usually does not)
    offer_auth: bool
    #: also offer SCRAM-SHA-256: only when ``scram_secrets`` can find stored SCRAM keys
    offer_scram: bool
    #: refuse MAIL before a successful AUTH (530 5.7.0), as submission must (RFC 6409)
    require_auth_for_mail: bool

    def allow_auth_without_tls(self, session: Session) -> bool:
        """May this session authenticate before TLS? (False: AUTH needs TLS, 538 5.7.11)."""
        ...

    def connect(self, session: Session) -> MaybeDeferred[Reply | None]:
        """None greets with 220; a 4xx/5xx reply is sent and the connection closed."""
        ...

    def helo(self, session: Session, name: str) -> MaybeDeferred[Reply | None]:
        """None accepts the HELO/EHLO name; a 4xx/5xx reply refuses it."""
        ...

    def authenticate(self, session: Session, credentials: Credentials) -> MaybeDeferred[Any]:
        """An identity on success, None for bad credentials (535 5.7.8), or a Reply
        (e.g. ``AUTH_TEMPORARY_FAILURE`` 454 4.7.0 when rate-limited). It must verify a
        :class:`PasswordCredentials` password and count failures, including
        ``VerifiedCredentials(verified=False)``."""
        ...

    def scram_secrets(self, session: Session, username: str) -> MaybeDeferred[ScramSecrets | None]:
        """The stored SCRAM-SHA-256 secrets of ``username``, or None."""
        ...

    def mail_from(self, session: Session, path: Address | None,
                  params: MailParams) -> MaybeDeferred[Reply]:
        """Accept (2xx) or refuse the reverse-path; None is the null path <>."""
        ...

    def rcpt_to(self, session: Session, path: Address,
                params: RcptParams) -> MaybeDeferred[Reply]:
        """Accept (2xx) or refuse one recipient."""
        ...

    def deliver(self, session: Session, envelope: Envelope,
                message: bytes) -> MaybeDeferred[Reply]:
        """Make the message durable, then reply (the queue id goes in the 250's text).

        One reply for the whole transaction; ``message`` is un-stuffed, ends in
        CRLF, and has no Received: header yet (see :mod:`postroom.smtp.received`).
        """
        ...

    def closed(self, session: Session) -> None:
        """The connection is gone (release per-session resources)."""
        ...


class BasePolicy:
    """Accept every sender and recipient, offer no AUTH, deliver nowhere (subclass it)."""

    offer_auth = False
    offer_scram = False
    require_auth_for_mail = False

    def allow_auth_without_tls(self, session: Session) -> bool:
        return False

    def connect(self, session: Session) -> MaybeDeferred[Reply | None]:
        return None

    def helo(self, session: Session, name: str) -> MaybeDeferred[Reply | None]:
        return None

    def authenticate(self, session: Session, credentials: Credentials) -> MaybeDeferred[Any]:
        return None

    def scram_secrets(self, session: Session, username: str) -> MaybeDeferred[ScramSecrets | None]:
        return None

    def mail_from(self, session: Session, path: Address | None,
                  params: MailParams) -> MaybeDeferred[Reply]:
        return R.SENDER_OK

    def rcpt_to(self, session: Session, path: Address,
                params: RcptParams) -> MaybeDeferred[Reply]:
        return R.RECIPIENT_OK

    def deliver(self, session: Session, envelope: Envelope,
                message: bytes) -> MaybeDeferred[Reply]:
        raise NotImplementedError("this policy cannot deliver")

    def closed(self, session: Session) -> None:
        return None
