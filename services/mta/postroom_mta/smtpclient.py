"""The outbound SMTP client: mail transactions to one server address, per-recipient results.

Our own state machine on ``LineReceiver`` (twisted.mail's client stuffs dots
per chunk and lacks PIPELINING, SIZE, 8BITMIME, SMTPUTF8 and DSN). One
:class:`SMTPClientProtocol` runs banner -> EHLO (HELO on 5xx) -> STARTTLS when
offered -> EHLO again -> MAIL -> RCPT... (pipelined when offered) -> DATA (only
with an accepted recipient; BDAT chunks when CHUNKING is offered) -> message -> QUIT,
and fires
:attr:`SMTPClientProtocol.finished` with a :class:`DeliveryResult` once the
connection is gone. It never raises to its caller: every failure becomes a
result.

With ``keep_open`` (connection reuse, see sessioncache.py) the session does not
QUIT after a transaction that left it sane: :attr:`~SMTPClientProtocol.finished`
fires at the end of the transaction and the session goes idle until
:meth:`~SMTPClientProtocol.send` gives it the next message or
:meth:`~SMTPClientProtocol.quit` ends it. Every reused transaction begins with
``RSET``, whatever the previous one's outcome (RFC 5321 4.1.1.5; Postfix does
the same to check that a cached session still works): one round trip buys a
clean server state after a refused MAIL, RCPT, DATA or BDAT, and a dead
connection shows up before MAIL FROM, as a ``session_failure``, so the caller
can retry on a fresh connection without the message having been offered. A
transaction that ended with a reply we could not make sense of (an odd code, a
timeout, a 421, garbage) never leaves the session reusable: it is closed as
before.

Decisions (see also the module docs of routing.py):

* TLS is opportunistic (RFC 7435): offered STARTTLS is used with a context that
  does not verify the certificate; a :class:`TLSPolicy` with ``required`` (the
  hook for MTA-STS enforce and DANE) defers instead of sending in clear.
* An 8-bit message goes out with ``BODY=8BITMIME`` when the server offers
  8BITMIME. Without it the message is refused locally with ``554 5.6.3``: we
  do not downgrade to quoted-printable because that would break DKIM
  signatures. A 7-bit message is sent as is everywhere.
* SMTPUTF8 is asked for when an address or a header is non-ASCII; a server
  without it gets nothing and the recipients fail with ``553 5.6.7`` (address)
  or ``554 5.6.9`` (UTF-8 headers), RFC 6531/6533.
* Failures of the session before MAIL FROM (connect, banner, EHLO, TLS, a
  timeout or garbage) are temporary and flagged ``session_failure`` so the
  router tries the next MX; a 5xx greeting is treated the same way (Postfix's
  ``smtp_skip_5xx_greeting``).
* A connection lost after the final ``.`` but before its reply is a
  temporary failure: the message may then arrive twice (RFC 1047), never zero
  times.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet import ssl as tssl
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from postroom.interfaces import DelayedCall, ReactorThreads, ReactorTime
from postroom.logs import Logger, get_logger
from postroom.net.tls import TLSInfo, negotiated
from postroom.smtp.replies import Reply
from postroom_mta.smtpclient_data import (
    DEFAULT_CHUNK_SIZE,
    DataProducer,
    MessageSource,
    iter_bdat,
)
from postroom_mta.smtpclient_parse import (
    Extensions,
    MalformedReply,
    MessageTraits,
    ReplyParser,
    describe,
    encode_utf8_addr_xtext,
    encode_xtext,
    parse_ehlo,
    valid_path_address,
)

log = get_logger("smtpclient")

# Client-made outcomes (no server said them). Codes follow what Postfix reports.
CONNECT_FAILED = Reply(451, "4.4.1", "Connection failed")
TIMED_OUT = Reply(451, "4.4.2", "Timed out")
CONNECTION_LOST = Reply(451, "4.4.2", "Connection lost")
MALFORMED = Reply(451, "4.5.0", "Malformed reply from server")
UNEXPECTED = Reply(451, "4.5.0", "Unexpected reply from server")
TLS_FAILED = Reply(451, "4.7.5", "TLS negotiation failed")
TLS_REQUIRED = Reply(451, "4.7.4", "TLS is required but was not offered")
TOO_BIG = Reply(552, "5.3.4", "Message too big for the remote server")
NEEDS_8BITMIME = Reply(554, "5.6.3", "8-bit message and the server does not offer 8BITMIME")
NEEDS_SMTPUTF8_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address and the server does not "
                                            "offer SMTPUTF8")
NEEDS_SMTPUTF8_HEADERS = Reply(554, "5.6.9", "UTF-8 headers and the server does not offer "
                                            "SMTPUTF8")
BAD_RECIPIENT = Reply(553, "5.1.3", "Recipient address cannot be sent over SMTP")
BAD_SENDER = Reply(553, "5.1.7", "Sender address cannot be sent over SMTP")
# smarthost logins (Postfix says "SASL authentication failed" with 4.7.0 for these)
AUTH_NOT_OFFERED = Reply(451, "4.7.0", "SASL authentication failed: the server offers no "
                                       "PLAIN or LOGIN mechanism")
AUTH_NEEDS_TLS = Reply(451, "4.7.4", "SASL authentication is only done under TLS")


_NOTIFY = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"  # temporary: retry later
    FAILED = "failed"  # permanent: bounce


@dataclass(frozen=True)
class Recipient:
    """One envelope recipient and its DSN parameters (RFC 3461), used only if offered."""

    address: str
    notify: tuple[str, ...] | None = None  # e.g. ("SUCCESS", "FAILURE") or ("NEVER",)
    orcpt: str | None = None  # the original recipient address, as submitted


@dataclass(frozen=True)
class Envelope:
    """What one transaction sends: sender, recipients, and the DSN envelope parameters."""

    mail_from: str  # "" is the null reverse-path
    recipients: tuple[Recipient, ...]
    ret: str | None = None  # "FULL" or "HDRS"
    envid: str | None = None

    @classmethod
    def of(cls, mail_from: str, recipients: Sequence[str | Recipient], **dsn: Any) -> Envelope:
        rcpts = tuple(r if isinstance(r, Recipient) else Recipient(r) for r in recipients)
        return cls(mail_from, rcpts, **dsn)

    @property
    def ascii_addresses(self) -> bool:
        return self.mail_from.isascii() and all(r.address.isascii() for r in self.recipients)


@dataclass(frozen=True)
class RecipientResult:
    """The fate of one recipient in one attempt; ``remote`` when a server gave the reply."""

    recipient: str
    outcome: Outcome
    code: int
    enhanced: str | None
    text: str
    stage: str
    host: str | None = None
    address: str | None = None
    remote: bool = True


@dataclass(frozen=True)
class DeliveryResult:
    """Per-recipient results of one attempt (or of a whole domain, see routing.py)."""

    recipients: tuple[RecipientResult, ...]
    host: str | None = None
    address: str | None = None
    tls: TLSInfo | None = None
    # True when no server answered for the recipients (failure before MAIL FROM):
    # the router then tries the next MX address.
    session_failure: bool = False
    tried: tuple[str, ...] = ()  # "host[address]: reply" of earlier attempts, for logs and DSNs

    @classmethod
    def uniform(cls, envelope: Envelope, reply: Reply, stage: str, *,
                remote: bool = False, **fields: Any) -> DeliveryResult:
        """Every recipient gets the same reply (DNS failures, null MX, connect failure)."""
        host, address = fields.get("host"), fields.get("address")
        results = tuple(_result(r.address, reply, stage, host, address, remote)
                        for r in envelope.recipients)
        return cls(results, **fields)


def outcome_of(reply: Reply) -> Outcome:
    if 200 <= reply.code < 300:
        return Outcome.DELIVERED
    if reply.code >= 500:
        return Outcome.FAILED
    return Outcome.DEFERRED


def _result(recipient: str, reply: Reply, stage: str, host: str | None, address: str | None,
            remote: bool) -> RecipientResult:
    outcome = outcome_of(reply)
    if outcome is Outcome.DELIVERED and stage != "data-end":
        # only the reply to the final dot delivers; anything else 2xx here is a protocol slip
        outcome = Outcome.DEFERRED
    return RecipientResult(recipient, outcome, reply.code, reply.enhanced, describe(reply),
                           stage, host, address, remote)


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for each reply, RFC 5321 section 4.5.3.2 defaults."""

    connect: float = 30.0
    initial: float = 300.0  # the 220 greeting
    helo: float = 300.0  # EHLO/HELO and STARTTLS: the RFC names none, so MAIL's
    mail: float = 300.0
    rcpt: float = 300.0
    data_init: float = 120.0
    data_block: float = 180.0  # each chunk of the body the transport takes
    data_end: float = 600.0
    quit: float = 60.0
    rset: float = 20.0  # before a reused transaction (Postfix's smtp_rset_timeout)


DEFAULT_TIMEOUTS = Timeouts()


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    """Client TLS that sends SNI but accepts any certificate (opportunistic, RFC 7435)."""

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname
        options = tssl.CertificateOptions(verify=False, raiseMinimumTo=tssl.TLSVersion.TLSv1_2)
        self._context = options.getContext()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if _is_hostname(self._hostname):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        connection.set_connect_state()
        return connection


# the creator of opportunistic TLS, public for policies built elsewhere (smarthost.py)
UnverifiedCreator = _UnverifiedCreator


def _is_hostname(name: str) -> bool:
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


def _trust_root(ca_file: str | None) -> Any:
    if not ca_file:
        return tssl.platformTrust()
    with open(ca_file, "rb") as handle:
        pem = handle.read()
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in pem.split(marker) if b"-----BEGIN" in block]
    return tssl.trustRootFromCertificates([tssl.Certificate.loadPEM(b) for b in blocks])


def verifying_creator(ca_file: str | None = None) -> Callable[[str], Any]:
    """A :attr:`TLSPolicy.creator` that verifies the chain and the MX name (MTA-STS enforce).

    ``ca_file`` (POSTROOM_TLS_CA_FILE) is a PEM bundle; None means the system's CAs.
    The file is read once, here, so a bad path fails at start-up.
    """
    trust = _trust_root(ca_file)

    def creator(hostname: str) -> Any:
        return tssl.optionsForClientTLS(
            hostname, trustRoot=trust,
            extraCertificateOptions={"raiseMinimumTo": tssl.TLSVersion.TLSv1_2})

    return creator


@dataclass(frozen=True)
class Credentials:
    """A SASL login for a smarthost; the password never appears in a repr or a log."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class TLSPolicy:
    """What TLS a session must have. Opportunistic by default; the MTA-STS/DANE hook.

    ``creator`` makes the client TLS connection creator for an MX host name
    (a verifying one for MTA-STS enforce or DANE); ``required`` defers the
    mail when STARTTLS is missing or fails instead of sending in clear.
    A smarthost route adds ``implicit`` (TLS from the first byte, port 465)
    and ``auth``, the login sent with AUTH PLAIN or LOGIN after EHLO inside
    TLS and never in clear. Being part of the policy, the login is part of a
    cached session's key: a session authenticated as one user never carries
    mail for another login.
    """

    required: bool = False
    creator: Callable[[str], Any] = _UnverifiedCreator  # -> IOpenSSLClientConnectionCreator
    use_tls: bool = True  # False: never STARTTLS (tests, broken peers)
    implicit: bool = False
    auth: Credentials | None = None


OPPORTUNISTIC = TLSPolicy()


@dataclass
class _Job:
    envelope: Envelope
    message: MessageSource
    traits: MessageTraits


@dataclass
class _State:
    """The mutable facts of one session, kept apart from the protocol's plumbing."""

    stage: str = "connect"
    ext: Extensions = field(default_factory=Extensions)
    tls_started: bool = False
    tls_hello_done: bool = False  # EHLO answered inside TLS: the handshake worked
    authenticated: bool = False  # AUTH answered 235 (a smarthost login)
    transactions: int = 0  # transactions begun on this connection
    idle: bool = False  # between two transactions of a kept-open session
    # the current transaction (reset by SMTPClientProtocol._begin)
    answered: bool = False  # a server (or we, by policy) decided about the recipients
    mail_reply: Reply | None = None
    accepted: list[int] = field(default_factory=list)
    rcpt_replies: int = 0
    failure: tuple[Reply, str, bool] | None = None  # reply, stage, said by the server


class SMTPClientProtocol(LineReceiver):
    """Sends a transaction; :attr:`finished` fires with its DeliveryResult when it is over.

    Without ``keep_open`` that is when the connection is gone (one transaction,
    then QUIT); with it, when the transaction ends, and :meth:`send` may then
    run another one on the same connection while :attr:`reusable`.
    """

    delimiter = b"\n"  # tolerate servers that end replies in bare LF; the CR is stripped
    MAX_LENGTH = 4096

    def __init__(self, envelope: Envelope, message: MessageSource, traits: MessageTraits, *,
                 helo_name: str, clock: ReactorTime, host: str | None = None,
                 address: str | None = None, timeouts: Timeouts = DEFAULT_TIMEOUTS,
                 tls: TLSPolicy = OPPORTUNISTIC, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 logger: Logger | None = None, keep_open: bool = False) -> None:
        self.job = _Job(envelope, message, traits)
        self.keep_open = keep_open
        self.helo_name = helo_name
        self.clock = clock
        self.host = host
        self.address = address
        self.timeouts = timeouts
        self.tls = tls
        self.chunk_size = chunk_size
        self.log = (logger or log).bind(mx=host, address=address)
        self.finished: defer.Deferred[DeliveryResult] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()  # fires when the connection is gone
        self.state = _State(transactions=1, tls_started=tls.implicit)
        self._parser = ReplyParser()
        self._expect: deque[tuple[str, Callable[[Reply], None]]] = deque()
        self._results: dict[int, RecipientResult] = {}
        self._timer: DelayedCall | None = None
        self._pending: list[int] = []  # indexes of the recipients sent in RCPT, in order
        self._producer: DataProducer | None = None
        self._bdat: Iterator[tuple[bytes, bool]] | None = None
        self._closing = False
        self._sane = True  # no reply of this transaction was one we could not make sense of

    # --- plumbing: replies in, commands out, timers

    def connectionMade(self) -> None:
        self._await("banner", self._on_banner, self.timeouts.initial)

    def _await(self, stage: str, handler: Callable[[Reply], None], timeout: float) -> None:
        self._expect.append((stage, handler))
        if len(self._expect) == 1:
            self._arm(stage, timeout)

    def _send(self, command: str, stage: str, handler: Callable[[Reply], None],
              timeout: float) -> None:
        self._write(command.encode("utf-8") + b"\r\n")
        self._await(stage, handler, timeout)

    def _write(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data)

    def _arm(self, stage: str, timeout: float) -> None:
        self.state.stage = stage
        if self._timer is not None and self._timer.active():
            self._timer.reset(timeout)
        else:
            self._timer = self.clock.callLater(timeout, self._on_timeout)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timeout_for(self, stage: str) -> float:
        return {"banner": self.timeouts.initial, "mail": self.timeouts.mail,
                "rcpt": self.timeouts.rcpt, "data": self.timeouts.data_init,
                "bdat": self.timeouts.data_block,
                "data-end": self.timeouts.data_end, "quit": self.timeouts.quit,
                "rset": self.timeouts.rset}.get(stage, self.timeouts.helo)

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        try:
            reply = self._parser.feed(line.rstrip(b"\r"))
        except MalformedReply as exc:
            self.log.info("smtp malformed reply", stage=self.state.stage, error=str(exc))
            self._abort(MALFORMED, remote=False)
            return
        if reply is None:
            return
        if not self._expect:
            if self.state.idle:
                # typically a 421 before the server drops an idle connection: nothing is lost
                self.log.info("smtp idle session ended by server", reply=describe(reply))
                self._close()
                return
            self._abort(UNEXPECTED.with_text(f"Unexpected reply: {describe(reply)}"[:300]),
                        remote=False)
            return
        stage, handler = self._expect.popleft()
        if reply.code == 421 and stage != "quit":
            # the server is closing the channel (RFC 5321 3.8): whatever was pending is lost
            self._fail(reply, stage, remote=True)
            self._close()
            return
        if self._expect:
            self._arm(self._expect[0][0], self._timeout_for(self._expect[0][0]))
        else:
            self._disarm()
        handler(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._abort(MALFORMED.with_text("Reply line too long"), remote=False)

    def _on_timeout(self) -> None:
        self._timer = None
        stage = self.state.stage
        self.log.info("smtp timeout", stage=stage)
        if self.state.tls_started and not self.state.tls_hello_done:
            self._abort(TLS_FAILED.with_text("TLS negotiation timed out"), remote=False)
            return
        self._abort(TIMED_OUT.with_text(f"Timed out waiting for the {stage} reply"
                                        if stage != "data-block" else
                                        "Timed out while sending the message"), remote=False)

    def _fail(self, reply: Reply, stage: str, *, remote: bool) -> None:
        """Remember why the session ended; the first reason wins."""
        if self.state.failure is None:
            self.state.failure = (reply, stage, remote)

    def _abort(self, reply: Reply, *, remote: bool) -> None:
        self._fail(reply, self.state.stage, remote=remote)
        self._close(abort=True)

    def _close(self, abort: bool = False) -> None:
        self._closing = True
        self._disarm()
        self._expect.clear()
        if self._producer is not None:
            self._producer.cancel()
        transport: Any = self.transport
        if transport is None:
            return
        if abort and hasattr(transport, "abortConnection"):
            transport.abortConnection()
        else:
            transport.loseConnection()

    def _quit(self) -> None:
        self.state.idle = False
        self._send("QUIT", "quit", lambda _reply: self._close(), self.timeouts.quit)

    def _done(self, *, sane: bool = True) -> None:
        """The transaction is over: QUIT, or (kept open and sane) report it and go idle."""
        if not (self.keep_open and sane) or self._closing:
            self._quit()
            return
        self.state.idle = True
        self.state.stage = "idle"
        self.finished.callback(self._outcome())

    # --- reuse (keep_open)

    @property
    def reusable(self) -> bool:
        """Idle between transactions, connected, and not closing: :meth:`send` may be called."""
        transport: Any = self.transport
        return (self.state.idle and not self._closing and transport is not None
                and bool(getattr(transport, "connected", False))
                and not getattr(transport, "disconnecting", False))

    @property
    def transactions(self) -> int:
        return self.state.transactions

    def send(self, envelope: Envelope, message: MessageSource, traits: MessageTraits, *,
             logger: Logger | None = None) -> defer.Deferred[DeliveryResult]:
        """RSET, then the next transaction on this idle session; fires with its result.

        A failure before the MAIL FROM reply (RSET refused, a 421, the connection
        found dead) is a ``session_failure`` result, like a failed new session.
        """
        if not self.reusable:
            raise RuntimeError("send() needs an idle, connected session")
        self.job = _Job(envelope, message, traits)
        self.finished = defer.Deferred()
        if logger is not None:
            self.log = logger.bind(mx=self.host, address=self.address)
        self._begin()
        self._send("RSET", "rset", self._on_rset, self.timeouts.rset)
        return self.finished

    def quit(self) -> None:
        """End an idle session politely (QUIT, then close); a no-op once it is closing."""
        if self.state.idle and not self._closing and self.transport is not None:
            self._quit()

    def _begin(self) -> None:
        state = self.state
        state.idle = False
        state.transactions += 1
        state.answered = False
        state.mail_reply = None
        state.accepted = []
        state.rcpt_replies = 0
        state.failure = None
        self._results = {}
        self._pending = []
        self._producer = None
        self._bdat = None
        self._sane = True

    def _on_rset(self, reply: Reply) -> None:
        if 200 <= reply.code < 300:
            self._start_transaction()
        else:
            self._session_reply_failure(reply, "rset")

    # --- the session

    def _on_banner(self, reply: Reply) -> None:
        if reply.code == 220:
            self._ehlo()
        elif reply.code >= 400:
            self._fail(reply, "banner", remote=True)
            self._quit()
        else:
            self._abort(UNEXPECTED.with_text(f"Unexpected greeting: {describe(reply)}"[:300]),
                        remote=False)

    def _ehlo(self) -> None:
        self._send(f"EHLO {self.helo_name}", "ehlo", self._on_ehlo, self.timeouts.helo)

    def _on_ehlo(self, reply: Reply) -> None:
        if reply.code == 250:
            self.state.ext = parse_ehlo(reply)
            self.state.tls_hello_done = self.state.tls_started
            self._after_hello()
        elif reply.code >= 500:
            self._send(f"HELO {self.helo_name}", "helo", self._on_helo, self.timeouts.helo)
        else:
            self._session_reply_failure(reply, "ehlo")

    def _on_helo(self, reply: Reply) -> None:
        if reply.code == 250:
            self.state.ext = Extensions(greeting=reply.lines[0])
            self.state.tls_hello_done = self.state.tls_started
            self._after_hello()
        else:
            self._session_reply_failure(reply, "helo")

    def _session_reply_failure(self, reply: Reply, stage: str) -> None:
        if reply.code >= 400:
            self._fail(reply, stage, remote=True)
            self._quit()
        else:
            self._abort(UNEXPECTED.with_text(f"Unexpected {stage} reply: {describe(reply)}"[:300]),
                        remote=False)

    def _after_hello(self) -> None:
        state, tls = self.state, self.tls
        if not state.tls_started and tls.use_tls and state.ext.has("STARTTLS"):
            self._send("STARTTLS", "starttls", self._on_starttls, self.timeouts.helo)
        elif (tls.required or tls.auth is not None) and not state.tls_started:
            # a login is never sent in clear, whatever the policy says
            self._fail(TLS_REQUIRED if tls.required else AUTH_NEEDS_TLS, "ehlo", remote=False)
            self._quit()
        elif tls.auth is not None and not state.authenticated:
            self._authenticate(tls.auth)
        else:
            self._start_transaction()

    # --- SASL (smarthost logins, RFC 4954): PLAIN (RFC 4616) or LOGIN, whichever is offered

    def _authenticate(self, auth: Credentials) -> None:
        offered = {m.upper() for m in self.state.ext.keywords.get("AUTH", ())}
        if "PLAIN" in offered:
            token = _b64(f"\0{auth.username}\0{auth.password}")
            self._send(f"AUTH PLAIN {token}", "auth", self._on_auth, self.timeouts.helo)
        elif "LOGIN" in offered:
            self._send("AUTH LOGIN", "auth", self._on_login_username, self.timeouts.helo)
        else:
            self._fail(AUTH_NOT_OFFERED, "auth", remote=False)
            self._quit()

    def _on_login_username(self, reply: Reply) -> None:
        assert self.tls.auth is not None
        if reply.code != 334:
            self._on_auth(reply)
            return
        self._send(_b64(self.tls.auth.username), "auth", self._on_login_password,
                   self.timeouts.helo)

    def _on_login_password(self, reply: Reply) -> None:
        assert self.tls.auth is not None
        if reply.code != 334:
            self._on_auth(reply)
            return
        self._send(_b64(self.tls.auth.password), "auth", self._on_auth, self.timeouts.helo)

    def _on_auth(self, reply: Reply) -> None:
        if reply.code == 235:
            self.state.authenticated = True
            self._start_transaction()
            return
        if reply.code == 334:
            # a challenge we have no answer for: cancel the exchange (RFC 4954 section 4),
            # once; whatever comes back ends the session
            self._send("*", "auth", self._on_auth_cancelled, self.timeouts.helo)
            return
        self._session_reply_failure(reply, "auth")

    def _on_auth_cancelled(self, reply: Reply) -> None:
        if reply.code == 235:  # a server that took "*" as a password is not one to trust
            reply = UNEXPECTED.with_text("Unexpected AUTH reply: login accepted after cancel")
        self._session_reply_failure(reply, "auth")

    def _on_starttls(self, reply: Reply) -> None:
        if reply.code != 220:
            if self.tls.required:
                self._fail(TLS_FAILED.with_text(f"STARTTLS refused: {describe(reply)}"),
                           "starttls", remote=False)
                self._quit()
            else:
                self.log.info("smtp starttls refused, continuing in clear", reply=describe(reply))
                self._start_transaction()
            return
        # Bytes after the 220 arrived in clear and may be an attacker's (CVE-2011-0411
        # class): they must never be read as replies inside TLS.
        leftover = self.clearLineBuffer()
        if leftover:
            self.log.warning("smtp plaintext after starttls discarded", octets=len(leftover))
        self.state.tls_started = True
        self._parser.reset()
        self.transport.startTLS(self.tls.creator(self.host or self.address or ""))  # type: ignore[union-attr]
        self._ehlo()

    # --- the transaction

    def _local_refusal(self) -> Reply | None:
        """A reason to send nothing at all, decided from the server's extensions."""
        job, ext = self.job, self.state.ext
        limit = ext.size_limit
        if limit is not None and job.traits.size > limit:
            return TOO_BIG.with_text(f"Message of {job.traits.size} octets exceeds the server's "
                                     f"limit of {limit}")
        if self._needs_smtputf8() and not ext.has("SMTPUTF8"):
            return (NEEDS_SMTPUTF8_HEADERS if job.envelope.ascii_addresses
                    else NEEDS_SMTPUTF8_ADDRESS)
        if job.traits.eight_bit and not ext.has("8BITMIME"):
            return NEEDS_8BITMIME
        if not valid_path_address(job.envelope.mail_from):
            return BAD_SENDER
        return None

    def _needs_smtputf8(self) -> bool:
        return not self.job.envelope.ascii_addresses or self.job.traits.utf8_headers

    def _mail_command(self) -> str:
        job, ext = self.job, self.state.ext
        params = []
        if ext.has("SIZE"):
            params.append(f"SIZE={job.traits.size}")
        if job.traits.eight_bit and ext.has("8BITMIME"):
            params.append("BODY=8BITMIME")
        if self._needs_smtputf8():
            params.append("SMTPUTF8")
        if ext.has("DSN"):
            # values come from the spool; anything but the RFC 3461 forms is dropped, so
            # nothing can reach the command line unescaped
            ret = (job.envelope.ret or "").upper()
            if ret in ("FULL", "HDRS"):
                params.append(f"RET={ret}")
            if job.envelope.envid and job.envelope.envid.isascii():
                params.append(f"ENVID={encode_xtext(job.envelope.envid)}")
        return " ".join([f"MAIL FROM:<{job.envelope.mail_from}>", *params])

    def _rcpt_command(self, recipient: Recipient) -> str:
        params = []
        if self.state.ext.has("DSN"):
            notify = [n.upper() for n in recipient.notify or ()]
            if notify and set(notify) <= _NOTIFY and ("NEVER" not in notify or len(notify) == 1):
                params.append("NOTIFY=" + ",".join(notify))
            if recipient.orcpt:
                if recipient.orcpt.isascii():
                    params.append(f"ORCPT=rfc822;{encode_xtext(recipient.orcpt)}")
                elif self.state.ext.has("SMTPUTF8"):
                    params.append(f"ORCPT=utf-8;{encode_utf8_addr_xtext(recipient.orcpt)}")
        return " ".join([f"RCPT TO:<{recipient.address}>", *params])

    def _start_transaction(self) -> None:
        state, recipients = self.state, self.job.envelope.recipients
        refusal = self._local_refusal()
        if refusal is not None:
            state.answered = True
            for index, rcpt in enumerate(recipients):
                self._set(index, rcpt.address, refusal, "mail", remote=False)
            self.log.info("smtp transaction refused locally", reply=describe(refusal))
            self._done()
            return
        for index, rcpt in enumerate(recipients):
            if not valid_path_address(rcpt.address) or rcpt.address == "":
                self._set(index, rcpt.address, BAD_RECIPIENT, "rcpt", remote=False)
        self._pending = [i for i in range(len(recipients)) if i not in self._results]
        if not self._pending:
            state.answered = True
            self._done()
            return
        mail = self._mail_command()
        if state.ext.has("PIPELINING"):
            # RFC 2920: MAIL and every RCPT in one write; DATA waits for their replies so
            # it is sent only when a recipient was accepted.
            lines = [mail] + [self._rcpt_command(recipients[i]) for i in self._pending]
            self._write("".join(line + "\r\n" for line in lines).encode("utf-8"))
            self._await("mail", self._on_mail, self.timeouts.mail)
            for i in self._pending:
                self._await("rcpt", self._rcpt_handler(i), self.timeouts.rcpt)
        else:
            self._send(mail, "mail", self._on_mail, self.timeouts.mail)

    def _rcpt_handler(self, index: int) -> Callable[[Reply], None]:
        return lambda reply: self._on_rcpt(index, reply)

    def _on_mail(self, reply: Reply) -> None:
        state = self.state
        state.answered = True
        state.mail_reply = reply
        if 200 <= reply.code < 300:
            if not self.state.ext.has("PIPELINING"):
                self._send_rcpt(0)
            return
        reply, remote = _checked(reply, "MAIL")
        if not remote:
            self._sane = False
        for i in self._pending:
            self._set(i, self.job.envelope.recipients[i].address, reply, "mail", remote=remote)
        if not self.state.ext.has("PIPELINING"):
            self._done(sane=remote)
        # pipelined: the RCPT replies still come; _on_rcpt ignores them and ends after the last

    def _send_rcpt(self, position: int) -> None:
        index = self._pending[position]
        self._send(self._rcpt_command(self.job.envelope.recipients[index]), "rcpt",
                   self._rcpt_handler(index), self.timeouts.rcpt)

    def _on_rcpt(self, index: int, reply: Reply) -> None:
        state = self.state
        state.rcpt_replies += 1
        mail_ok = state.mail_reply is not None and 200 <= state.mail_reply.code < 300
        if mail_ok:
            if 200 <= reply.code < 300:
                state.accepted.append(index)
            else:
                reply, remote = _checked(reply, "RCPT")
                if not remote:
                    self._sane = False
                self._set(index, self.job.envelope.recipients[index].address, reply, "rcpt",
                          remote=remote)
        if state.rcpt_replies < len(self._pending):
            if mail_ok and not state.ext.has("PIPELINING"):
                self._send_rcpt(state.rcpt_replies)
            return
        if state.accepted and state.ext.has("CHUNKING"):
            self._bdat = iter_bdat(self.job.message, self.chunk_size)
            self._next_bdat()
        elif state.accepted:
            self._send("DATA", "data", self._on_data, self.timeouts.data_init)
        else:
            self._done(sane=self._sane)

    def _on_data(self, reply: Reply) -> None:
        if reply.code != 354:
            reply, remote = _checked(reply, "DATA")
            self._set_accepted(reply, remote, "data")
            self._done(sane=remote)
            return
        self.state.stage = "data-block"
        self._producer = DataProducer(
            self.job.message, self.transport,  # type: ignore[arg-type]
            on_block=lambda: self._arm("data-block", self.timeouts.data_block),
            on_done=lambda: self._await("data-end", self._on_data_end, self.timeouts.data_end),
            chunk_size=self.chunk_size)
        self._arm("data-block", self.timeouts.data_block)
        self._producer.start()

    def _next_bdat(self) -> None:
        """One RFC 3030 chunk, then its reply; no pipelining of chunks, so a refusal stops it."""
        assert self._bdat is not None
        data, last = next(self._bdat)
        if last:
            self._write(f"BDAT {len(data)} LAST\r\n".encode() + data)
            self._await("data-end", self._on_data_end, self.timeouts.data_end)
        else:
            self._write(f"BDAT {len(data)}\r\n".encode() + data)
            self._await("bdat", self._on_bdat, self.timeouts.data_block)

    def _on_bdat(self, reply: Reply) -> None:
        if 200 <= reply.code < 300:
            self._next_bdat()
            return
        reply, remote = _checked(reply, "BDAT")
        self._set_accepted(reply, remote, "data")
        self._done(sane=remote)

    def _on_data_end(self, reply: Reply) -> None:
        reply, remote = _checked(reply, "end of data", ok=range(200, 300))
        self._set_accepted(reply, remote, "data-end")
        self.log.info("smtp transaction done", reply=describe(reply),
                      recipients=len(self.state.accepted), transaction=self.state.transactions)
        self._done(sane=remote)

    def _set_accepted(self, reply: Reply, remote: bool, stage: str) -> None:
        for index in self.state.accepted:
            self._set(index, self.job.envelope.recipients[index].address, reply, stage,
                      remote=remote)

    def _set(self, index: int, address: str, reply: Reply, stage: str, *, remote: bool) -> None:
        if index not in self._results:
            self._results[index] = _result(address, reply, stage, self.host, self.address,
                                           remote)

    # --- the end

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        self._disarm()
        if self._producer is not None and not self._producer.finished:
            self._producer.stopProducing()
        state = self.state
        state.idle = False
        if not self.finished.called:  # a transaction was in progress (or never reported)
            if state.failure is None and len(self._results) < len(self.job.envelope.recipients):
                if reason.check(SSL.Error) or (state.tls_started and not state.tls_hello_done):
                    self._fail(TLS_FAILED.with_text(
                        f"TLS negotiation failed: {reason.getErrorMessage()}"[:300]),
                        state.stage, remote=False)
                else:
                    self._fail(CONNECTION_LOST.with_text(
                        f"Connection lost during the {state.stage} stage"), state.stage,
                        remote=False)
            self.finished.callback(self._outcome())
        if not self.closed.called:
            self.closed.callback(None)

    def _outcome(self) -> DeliveryResult:
        """The current transaction's DeliveryResult; unanswered recipients get the failure."""
        state = self.state
        failure = state.failure or (CONNECTION_LOST, state.stage, False)
        for index, rcpt in enumerate(self.job.envelope.recipients):
            if index not in self._results:
                reply, stage, remote = failure
                result = _result(rcpt.address, reply, stage, self.host, self.address, remote)
                if not state.answered:
                    # a session-level 5xx (greeting, HELO) is not about this recipient: another
                    # MX or a later attempt may take it (Postfix's smtp_skip_5xx_greeting)
                    result = replace(result, outcome=Outcome.DEFERRED)
                self._results[index] = result
        return DeliveryResult(
            recipients=tuple(self._results[i] for i in range(len(self.job.envelope.recipients))),
            host=self.host, address=self.address, tls=self._tls_info(),
            session_failure=not state.answered)

    def _tls_info(self) -> TLSInfo | None:
        if not self.state.tls_started or self.transport is None:
            return None
        try:
            return negotiated(self.transport)
        except (SSL.Error, AttributeError):
            return None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _checked(reply: Reply, what: str, ok: range = range(0)) -> tuple[Reply, bool]:
    """A failure reply as is (said by the server), or an odd code as a local temporary one."""
    if reply.code >= 400 or reply.code in ok:
        return reply, True
    return UNEXPECTED.with_text(f"Unexpected {what} reply: {describe(reply)}"[:300]), False


def attempt(reactor: ReactorThreads, envelope: Envelope, message: MessageSource,
            traits: MessageTraits, *,
            address: str, port: int, helo_name: str, host: str | None = None,
            timeouts: Timeouts = DEFAULT_TIMEOUTS, tls: TLSPolicy = OPPORTUNISTIC,
            chunk_size: int = DEFAULT_CHUNK_SIZE, logger: Logger | None = None,
            bind_address: str | None = None) -> defer.Deferred[DeliveryResult]:
    """Connect to ``address``:``port`` and run one transaction; never fails, always a result.

    ``logger`` may carry bound fields such as ``queue_id`` into every event;
    ``bind_address`` (POSTROOM_SMTP_BIND_ADDRESS) is the local IPv4 address to
    connect from.
    """
    opening = open_session(reactor, envelope, message, traits, address=address, port=port,
                           helo_name=helo_name, host=host, timeouts=timeouts, tls=tls,
                           chunk_size=chunk_size, logger=logger, bind_address=bind_address,
                           keep_open=False)
    return opening.addCallback(lambda opened: opened[1])


def open_session(reactor: ReactorThreads, envelope: Envelope, message: MessageSource,
                 traits: MessageTraits, *, address: str, port: int, helo_name: str,
                 host: str | None = None, timeouts: Timeouts = DEFAULT_TIMEOUTS,
                 tls: TLSPolicy = OPPORTUNISTIC, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 logger: Logger | None = None, bind_address: str | None = None,
                 keep_open: bool = True,
                 ) -> defer.Deferred[tuple[SMTPClientProtocol | None, DeliveryResult]]:
    """Like :func:`attempt`, and also the session (None when the connection failed).

    With ``keep_open`` the session is left idle after a sane transaction, for
    :meth:`SMTPClientProtocol.send` or :meth:`SMTPClientProtocol.quit`; check
    :attr:`SMTPClientProtocol.reusable` first.
    """
    logger = logger or log
    protocol = SMTPClientProtocol(envelope, message, traits, helo_name=helo_name, clock=reactor,
                                  host=host, address=address, timeouts=timeouts, tls=tls,
                                  chunk_size=chunk_size, logger=logger, keep_open=keep_open)
    endpoint: TCP4ClientEndpoint | TCP6ClientEndpoint
    if ":" in address:
        endpoint = TCP6ClientEndpoint(reactor, address, port, timeout=timeouts.connect)
    else:
        # the address SPF sees: a multi-homed host must send from the one it publishes
        source = (bind_address, 0) if bind_address else None
        endpoint = TCP4ClientEndpoint(reactor, address, port, timeout=timeouts.connect,
                                      bindAddress=source)
    if tls.implicit:
        # implicit TLS (RFC 8314): the handshake comes first, verified as the policy says.
        # Twisted types these with zope interfaces, which mypy reads without the plugin.
        wrapped = wrapClientTLS(tls.creator(host or address), endpoint)  # type: ignore[arg-type]
        connecting = connectProtocol(wrapped, protocol)
    else:
        connecting = connectProtocol(endpoint, protocol)

    def connect_failed(reason: Failure) -> tuple[None, DeliveryResult]:
        text = f"connect to {host or address}[{address}]:{port}: {_why(reason)}"
        logger.info("smtp connect failed", mx=host, address=address, port=port, error=_why(reason))
        return None, DeliveryResult.uniform(envelope, CONNECT_FAILED.with_text(text), "connect",
                                            host=host, address=address, session_failure=True)

    def connected(_proto: Any) -> defer.Deferred[tuple[SMTPClientProtocol, DeliveryResult]]:
        return protocol.finished.addCallback(lambda result: (protocol, result))

    connecting.addCallbacks(connected, connect_failed)
    return connecting


def _why(reason: Failure) -> str:
    if reason.check(error.ConnectionRefusedError):
        return "Connection refused"
    if reason.check(error.TimeoutError):
        return "Connection timed out"
    return str(reason.getErrorMessage())[:200]
