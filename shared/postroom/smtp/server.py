"""The ESMTP server state machine (RFC 5321) on LineReceiver, shared by the MSA and the MTA.

It parses and replies; an :class:`~postroom.smtp.policy.SMTPPolicy` decides
and stores. Each command has one ``async def smtp_VERB(self, command)``
handler (aiosmtpd's shape) that awaits the policy and replies as it goes.
Properties the twisted.mail server lacks and tests pin down:

* PIPELINING (RFC 2920): while a handler awaits the policy, reading pauses and
  the following lines wait in the buffer, so replies always come in order.
* STARTTLS (RFC 3207): bytes after the STARTTLS line are discarded, never run
  inside TLS (CVE-2011-0411), and the session forgets HELO, AUTH and the
  transaction.
* DATA leaves raw mode only on CRLF.CRLF (see :mod:`postroom.smtp.data`).
* Every unexpected exception is logged with its traceback; the peer gets
  ``451 4.3.0`` and never a traceback.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from postroom.auth.sasl import (
    Challenge,
    Credentials,
    NeedSecrets,
    Outcome,
    SASLMalformed,
    ServerMechanism,
    Step,
    decode_response,
    new_mechanism,
)
from postroom.logs import get_logger
from postroom.metrics import Metrics, SessionMetrics
from postroom.net.connlimit import PerAddressLimit
from postroom.net.session import ListenerSession
from postroom.net.tls import negotiated
from postroom.smtp import grammar
from postroom.smtp import replies as R
from postroom.smtp.data import ChunkAccumulator, Content, DataReader, End
from postroom.smtp.grammar import MailParams, ParseError, RcptParams
from postroom.smtp.options import ServerOptions
from postroom.smtp.policy import SMTPPolicy
from postroom.smtp.replies import Reply
from postroom.smtp.session import Envelope, Recipient, Session, Transaction

_log = get_logger("smtp")

# verbs counted by name in postroom_commands_total; anything else is "other"
COMMAND_VERBS = ("HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY",
                 "EXPN", "HELP", "STARTTLS", "AUTH")
AUTH_MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")


class State(StrEnum):
    """Where a session is; a StrEnum, so logs keep showing the plain names."""

    COMMAND = "command"
    SASL = "sasl"  # between AUTH and the last SASL response
    DATA = "data"  # raw mode until CRLF.CRLF
    BDAT = "bdat"  # raw mode for one chunk's octets
    CLOSED = "closed"


class SMTPServerFactory(ServerFactory):
    """Builds one protocol per connection and counts connections per client address."""

    def __init__(self, policy: SMTPPolicy, options: ServerOptions, *, tls: Any = None,
                 implicit_tls: bool = False, clock: IReactorTime | None = None,
                 metrics: Metrics | None = None, listener: str = "smtp") -> None:
        """``tls`` is an object with ``getContext()`` (postroom.net.tls.ServerTLS) enabling
        STARTTLS; ``implicit_tls`` says the listener is already wrapped in TLS (465);
        ``listener`` is the ``listener`` label of the connection metrics."""
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.policy = policy
        self.options = options
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.clock: Any = clock
        self.per_address = PerAddressLimit(options.max_connections_per_ip)
        self.listener = listener
        self.meter = SessionMetrics(metrics, commands=COMMAND_VERBS, mechanisms=AUTH_MECHANISMS)

    def buildProtocol(self, addr: Any) -> SMTPServerProtocol:
        protocol = SMTPServerProtocol(self)
        protocol.factory = self
        return protocol


class SMTPServerProtocol(ListenerSession, LineReceiver):
    """One SMTP session; ``_state`` is a :class:`State`."""

    delimiter = b"\r\n"
    # zope interfaces are opaque to mypy; the transport is a TCP or TLS transport
    transport: Any

    def __init__(self, factory: SMTPServerFactory) -> None:
        self.smtp_factory = factory
        self.policy: SMTPPolicy = factory.policy
        self.options = factory.options
        self.clock: Any = factory.clock
        # LineReceiver's limit excludes the delimiter; longer lines end the session
        self.MAX_LENGTH = self.options.limits.longest_line
        self.session = Session(peer_ip="", peer_port=0)
        self.log = _log
        self._state: State = State.COMMAND
        self._waiting = False
        self._admitted = False
        self._lost = False
        self.errors = 0
        self._junk = 0
        self._reader: DataReader | None = None
        self._chunks: list[bytes] = []
        self._bdat: ChunkAccumulator | None = None
        self._bdat_error: Reply | None = None
        self._bdat_remaining = 0
        self._bdat_size = 0
        self._bdat_last = False
        self._mechanism: ServerMechanism | None = None

    # --- connection life cycle

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        host = self.transport.getHost()
        self.session = Session(peer_ip=str(getattr(peer, "host", "")),
                               peer_port=int(getattr(peer, "port", 0) or 0),
                               local_ip=str(getattr(host, "host", "")),
                               local_port=int(getattr(host, "port", 0) or 0),
                               tls_active=self.smtp_factory.implicit_tls)
        self.log = _log.bind(session=self.session.id, peer=self.session.peer_ip)
        if not self.admit(self.smtp_factory.meter, self.smtp_factory.listener,
                          self.smtp_factory.per_address, self.session.peer_ip):
            self.log.warning("smtp connection refused", reason="too many connections from peer",
                             limit=self.options.max_connections_per_ip)
            self._write(R.TOO_MANY_CONNECTIONS)
            self._close()
            return
        self._admitted = True
        self.log.info("smtp connection opened", port=self.session.local_port,
                      implicit_tls=self.session.tls_active)
        self._arm_timer()
        self._run(self._greet())

    def connectionLost(self, reason: Failure | None = None) -> None:
        was = self._state
        self._state = State.CLOSED
        self._lost = True
        self.leave()  # stops the timer too
        if self._admitted:
            self._admitted = False
            if was in (State.DATA, State.BDAT) or self._bdat is not None:
                self.log.warning("smtp connection lost during message transfer")
            try:
                self.policy.closed(self.session)
            except Exception as exc:
                self.log.exception("smtp policy closed hook failed", exc)
            self.log.info("smtp connection closed")

    # --- writing, closing, timers

    def _write(self, reply: Reply) -> None:
        if self.transport is not None:
            self.transport.write(reply.render())

    def _send(self, reply: Reply, *, count: bool = True) -> None:
        """Send a reply; too many 4xx/5xx replies end the session with 421."""
        if self._state == State.CLOSED:
            return
        self._write(reply)
        if count and reply.code >= 400 and reply.code != 421:
            if self.spend_error(self.options.max_errors, self.smtp_factory.meter):
                self.log.warning("smtp too many errors", errors=self.errors)
                self._write(R.TOO_MANY_ERRORS)
                self._close()
        elif reply.code == 421:
            self._close()

    def _close(self) -> None:
        if self._state == State.CLOSED:
            return
        self._state = State.CLOSED
        self.stop_timer()
        self.transport.loseConnection()
        # a peer that neither reads nor finishes its TLS handshake must not hold the socket
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            self.clock.callLater(self.options.close_grace, self._abort_if_open, abort)

    def _abort_if_open(self, abort: Callable[[], None]) -> None:
        if not self._lost:
            self.log.info("smtp connection aborted", reason="peer did not close")
            abort()

    def session_clock(self) -> Any:
        return self.clock

    def _arm_timer(self) -> None:
        if self._state == State.CLOSED:
            self.stop_timer()
            return
        timeout = (self.options.data_timeout if self._state in (State.DATA, State.BDAT)
                   else self.options.command_timeout)
        self.restart_timer(timeout)

    def session_timed_out(self) -> None:
        if self._waiting:
            # the peer is waiting for us, not idle
            self._arm_timer()
            return
        self.log.info("smtp idle timeout", state=self._state)
        self.smtp_factory.meter.error("timeout")
        self._write(R.TIMEOUT)
        self._close()

    # --- running handlers: one command at a time, replies in order (PIPELINING done right)

    def _run(self, handler: Coroutine[Any, Any, None]) -> None:
        """Run one command's handler; while it awaits the policy, later input waits unread.

        ListenerSession.run_command finishes a handler that never waits inside
        this call; while one waits, the line buffer and the transport are
        paused, and its end resumes both and runs whatever was pipelined, so a
        command never starts before the previous one's reply is decided.
        """
        self.run_command(handler)
        if self.command_running and self._state != State.CLOSED:
            # LineReceiver keeps the pipelined lines; the transport stops reading more
            self.paused = True
            self.pause_reading()

    def command_ended(self, failure: Failure | None) -> None:
        if failure is not None:
            self._handler_error(failure.value)
        self._resume()

    def _handler_error(self, exc: BaseException | None) -> None:
        if isinstance(exc, _PolicyFailed):
            self._send(R.LOCAL_ERROR)
        elif not isinstance(exc, _SessionClosed):
            self._internal_error(exc)

    def _ask(self, call: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Call the policy; awaiting this raises _PolicyFailed if it failed, _SessionClosed if
        the session ended meanwhile (the handler then stops without a word)."""
        answer = maybeDeferred(call, *args)
        if not answer.called:
            # the peer is waiting for us, not idle
            self._waiting = True
        return answer.addCallbacks(self._answered, self._policy_failed, errbackArgs=(call,))

    def _answered(self, result: Any) -> Any:
        self._waiting = False
        if self._state == State.CLOSED:
            raise _SessionClosed()
        return result

    def _policy_failed(self, failure: Failure, call: Callable[..., Any]) -> None:
        self._waiting = False
        self.smtp_factory.meter.error("policy")
        self.log.error("smtp policy call failed", call=getattr(call, "__name__", str(call)),
                       error=failure.getErrorMessage(),
                       traceback=failure.getTraceback().rstrip())
        if self._state == State.CLOSED:
            raise _SessionClosed()
        raise _PolicyFailed()

    def _resume(self) -> None:
        if self._waiting or not self.paused or self._state == State.CLOSED:
            return
        self.paused = False
        self.resume_reading()
        self._arm_timer()
        # process whatever was pipelined while we waited
        self.dataReceived(b"")

    def _internal_error(self, exc: BaseException | None) -> None:
        self.log.exception("smtp internal error", exc, state=self._state)
        self.smtp_factory.meter.error("internal")
        self._mechanism = None
        if self._state in (State.DATA, State.BDAT):
            # the byte stream can no longer be trusted to be in sync
            self._send(R.LOCAL_ERROR_CLOSING)
            return
        if self._state == State.SASL:
            self._state = State.COMMAND
        self._send(R.LOCAL_ERROR)

    # --- input

    def lineReceived(self, line: bytes) -> None:
        if self._state == State.CLOSED:
            return
        self._arm_timer()
        if self.session.tls_active and self.session.tls is None:
            self.session.tls = negotiated(self.transport)
        try:
            if self._state == State.SASL:
                self._run(self._sasl_line(line))
            else:
                self._command_line(line)
        except Exception as exc:  # noqa: BLE001 (any bug: 451, never a traceback)
            self._internal_error(exc)

    def lineLengthExceeded(self, line: bytes) -> None:
        # where the over-long line ends is unknown, so nothing after it can be trusted
        self.log.warning("smtp command line too long", octets=len(line), state=self._state)
        self.smtp_factory.meter.error("line_too_long")
        self._send(R.LINE_TOO_LONG, count=False)
        self._write(R.TOO_MANY_ERRORS.with_text("Line too long, closing connection"))
        self._close()

    def rawDataReceived(self, data: bytes) -> None:
        if self._state == State.CLOSED:
            return
        self._arm_timer()
        try:
            if self._state == State.DATA:
                self._data_bytes(data)
            elif self._state == State.BDAT:
                self._bdat_bytes(data)
            else:
                self.setLineMode(data)
        except Exception as exc:  # noqa: BLE001 (any bug: 451, never a traceback)
            self._internal_error(exc)

    def _command_line(self, line: bytes) -> None:
        transaction = self.session.transaction
        smtputf8 = bool(transaction and transaction.mail_params.smtputf8)
        self.smtp_factory.meter.command(line.split(b" ", 1)[0])
        try:
            command = grammar.parse_command(line, smtputf8=smtputf8, limits=self.options.limits)
        except ParseError as error:
            self.log.debug("smtp command refused", code=error.reply.code, reason=str(error))
            self._send(error.reply)
            if line[:5].upper() in (b"BDAT", b"BDAT "):
                # the chunk that follows a BDAT we cannot read would be run as commands
                self._write(R.TOO_MANY_ERRORS.with_text("BDAT syntax error, closing connection"))
                self._close()
            return
        self._run(getattr(self, _HANDLERS[type(command)])(command))

    def _count_junk(self) -> bool:
        self._junk += 1
        if self._junk > self.options.max_junk_commands:
            self.log.warning("smtp too many commands", commands=self._junk)
            self._send(R.TOO_MANY_COMMANDS)
            return True
        return False

    # --- commands: one handler each, run by _run (aiosmtpd's smtp_VERB)

    async def _greet(self) -> None:
        try:
            reply = await self._ask(self.policy.connect, self.session)
        except _PolicyFailed:
            self._send(R.LOCAL_ERROR_CLOSING)
            return
        if reply is None:
            reply = Reply(220, None, f"{self.options.hostname} ESMTP Postroom")
        self._send(reply, count=False)
        if not reply.positive:
            self._close()

    async def smtp_HELO(self, command: grammar.Hello) -> None:
        """HELO and EHLO (``command.extended``)."""
        reply = await self._ask(self.policy.helo, self.session, command.name)
        if reply is not None and not reply.positive:
            self._send(reply)
            return
        session = self.session
        session.helo = command.name
        session.esmtp = command.extended
        session.transaction = None
        self._bdat = None
        greeting = f"{self.options.hostname} Hello {command.name}"
        if command.extended:
            self._send(Reply(250, None, (greeting, *self.capabilities())))
        else:
            self._send(Reply(250, None, greeting))

    def capabilities(self) -> list[str]:
        """The EHLO keywords for the session's current state."""
        caps = ["PIPELINING", f"SIZE {self.options.max_message_size}", "8BITMIME", "SMTPUTF8",
                "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]
        if self.smtp_factory.tls is not None and not self.session.tls_active:
            caps.append("STARTTLS")
        mechanisms = self.mechanisms()
        if mechanisms and not self.session.authenticated:
            caps.append("AUTH " + " ".join(mechanisms))
        return caps

    def mechanisms(self) -> list[str]:
        """SASL mechanisms offered now: none before TLS unless the policy allows it."""
        session = self.session
        if not self.policy.offer_auth:
            return []
        if not session.tls_active and not self.policy.allow_auth_without_tls(session):
            return []
        names = ["PLAIN", "LOGIN"]
        if self.policy.offer_scram:
            names.append("SCRAM-SHA-256")
        return names

    async def smtp_MAIL(self, command: grammar.Mail) -> None:
        session = self.session
        if session.helo is None:
            self._send(R.HELO_FIRST)
        elif session.transaction is not None:
            self._send(R.NESTED_MAIL)
        elif self.policy.require_auth_for_mail and not session.authenticated:
            self._send(R.AUTH_REQUIRED)
        elif not session.esmtp and command.params != MailParams():
            self._send(R.PARAMETERS_NEED_EHLO)
        elif command.params.body == "BINARYMIME":
            self._send(R.BINARYMIME_NOT_SUPPORTED)
        elif command.params.size is not None and \
                command.params.size > self.options.max_message_size:
            self._send(R.MESSAGE_TOO_BIG)
        else:
            reply = await self._ask(self.policy.mail_from, session, command.path, command.params)
            if not isinstance(reply, Reply):
                raise TypeError("mail_from must return a Reply")
            if reply.positive:
                self.session.transaction = Transaction(command.path, command.params)
            self._send(reply)

    async def smtp_RCPT(self, command: grammar.Rcpt) -> None:
        session = self.session
        transaction = session.transaction
        if transaction is None:
            self._send(R.NEED_MAIL)
        elif transaction.content_command is not None:
            self._send(R.BAD_SEQUENCE)
        elif len(transaction.recipients) >= self.options.max_recipients:
            self._send(R.TOO_MANY_RECIPIENTS)
        elif not session.esmtp and command.params != RcptParams():
            self._send(R.PARAMETERS_NEED_EHLO)
        else:
            reply = await self._ask(self.policy.rcpt_to, session, command.path, command.params)
            if not isinstance(reply, Reply):
                raise TypeError("rcpt_to must return a Reply")
            if reply.positive and self.session.transaction is transaction:
                transaction.recipients.append(Recipient(command.path, command.params))
            self._send(reply)

    async def smtp_DATA(self, command: grammar.Data) -> None:
        transaction = self.session.transaction
        if transaction is None:
            self._send(R.NEED_MAIL)
        elif transaction.content_command == "BDAT":
            self._send(R.DATA_AFTER_BDAT)
        elif not transaction.recipients:
            self._send(R.NO_VALID_RECIPIENTS)
        else:
            transaction.content_command = "DATA"
            self._reader = DataReader(self.options.max_message_size, self.options.max_line_length)
            self._chunks = []
            self._state = State.DATA
            self._send(R.START_DATA)
            self._arm_timer()
            self.setRawMode()

    def _data_bytes(self, data: bytes) -> None:
        assert self._reader is not None
        end: End | None = None
        for event in self._reader.feed(data):
            if isinstance(event, Content):
                self._chunks.append(event.data)
            else:
                end = event
        if end is None:
            return
        message = b"".join(self._chunks)
        self._chunks = []
        self._reader = None
        self._state = State.COMMAND
        # what followed CRLF.CRLF are pipelined commands: back to the line buffer
        self.setLineMode(end.rest)
        self._arm_timer()
        self._run(self._finish_message(end.rejection, message))

    async def smtp_BDAT(self, command: grammar.Bdat) -> None:
        transaction = self.session.transaction
        error: Reply | None = None
        if transaction is None:
            error = R.NEED_MAIL
        elif not transaction.recipients:
            error = R.NO_VALID_RECIPIENTS
        elif transaction.content_command is None:
            transaction.content_command = "BDAT"
            self._bdat = ChunkAccumulator(self.options.max_message_size,
                                          self.options.max_line_length)
        # RFC 3030 section 4.2: even a refused chunk is read, or it would be run as commands
        self._bdat_error = error
        self._bdat_remaining = command.size
        self._bdat_size = command.size
        self._bdat_last = command.last
        if command.size == 0:
            await self._chunk_done()
            return
        self._state = State.BDAT
        self._arm_timer()
        self.setRawMode()

    def _bdat_bytes(self, data: bytes) -> None:
        take = data[:self._bdat_remaining]
        self._bdat_remaining -= len(take)
        if self._bdat_error is None and self._bdat is not None:
            self._bdat.feed(take)
        if self._bdat_remaining == 0:
            self._state = State.COMMAND
            self.setLineMode(data[len(take):])
            self._arm_timer()
            self._run(self._chunk_done())

    async def _chunk_done(self) -> None:
        if self._bdat_error is not None:
            self._send(self._bdat_error)
            return
        accumulator = self._bdat
        assert accumulator is not None
        if accumulator.rejection is not None:
            self._bdat = None
            self.session.transaction = None
            self.log.warning("smtp message refused", code=accumulator.rejection.code,
                             reason=accumulator.rejection.lines[0], command="BDAT")
            self._send(accumulator.rejection)
            return
        if not self._bdat_last:
            self._send(R.CHUNK_RECEIVED.with_text(f"{self._bdat_size} octets received"))
            return
        self._bdat = None
        await self._finish_message(accumulator.finish(), accumulator.message())

    async def _finish_message(self, rejection: Reply | None, message: bytes) -> None:
        session = self.session
        transaction = session.transaction
        assert transaction is not None
        if rejection is not None:
            session.transaction = None
            self.log.warning("smtp message refused", code=rejection.code,
                             reason=rejection.lines[0])
            self._send(rejection)
            return
        envelope = Envelope(transaction.mail_from, transaction.mail_params,
                            tuple(transaction.recipients))
        try:
            reply = await self._ask(self.policy.deliver, session, envelope, message)
        except _PolicyFailed:
            session.transaction = None
            raise
        session.transaction = None
        if not isinstance(reply, Reply):
            raise TypeError("deliver must return a Reply")
        self.log.info("smtp message delivered" if reply.positive else "smtp message refused",
                      code=reply.code, size=len(message), reply=reply.lines[-1])
        self._send(reply)

    async def smtp_RSET(self, command: grammar.Rset) -> None:
        if self._count_junk():
            return
        self.session.transaction = None
        self._bdat = None
        self._send(R.RESET_OK)

    async def smtp_NOOP(self, command: grammar.Noop) -> None:
        if not self._count_junk():
            self._send(R.OK)

    async def smtp_VRFY(self, command: grammar.Vrfy) -> None:
        if not self._count_junk():
            self._send(R.VRFY_CANNOT)

    async def smtp_HELP(self, command: grammar.Help) -> None:
        if not self._count_junk():
            self._send(R.HELP_TEXT)

    async def smtp_unimplemented(self, command: grammar.Unimplemented) -> None:
        """EXPN, TURN and the other verbs we know but do not do."""
        if not self._count_junk():
            self._send(R.NOT_IMPLEMENTED)

    async def smtp_QUIT(self, command: grammar.Quit) -> None:
        self._send(R.BYE)
        self._close()

    async def smtp_STARTTLS(self, command: grammar.StartTLS) -> None:
        session = self.session
        if self.smtp_factory.tls is None:
            self._send(R.NOT_IMPLEMENTED.with_text("STARTTLS not offered"))
            return
        if session.tls_active:
            self._send(R.TLS_ALREADY_ACTIVE)
            return
        if session.transaction is not None:
            self._send(R.BAD_SEQUENCE.with_text("STARTTLS not permitted during a transaction"))
            return
        # CVE-2011-0411: anything pipelined after STARTTLS was sent in plaintext; drop it.
        # This handler never awaits, so it runs inside lineReceived: the rest of the
        # packet is still in the line buffer, not yet parsed.
        leftover = self.clearLineBuffer()
        if leftover:
            self.log.warning("smtp plaintext after STARTTLS discarded", octets=len(leftover))
        self._send(R.READY_FOR_TLS)
        self.transport.startTLS(self.smtp_factory.tls)
        session.reset_after_tls()
        self._bdat = None
        self.log.info("smtp tls started")

    # --- AUTH (RFC 4954)

    async def smtp_AUTH(self, command: grammar.Auth) -> None:
        session = self.session
        if not self.policy.offer_auth:
            self._send(R.AUTH_NOT_OFFERED)
        elif session.helo is None or not session.esmtp:
            self._send(R.HELO_FIRST.with_text("Send EHLO first"))
        elif session.authenticated:
            self._send(R.ALREADY_AUTHENTICATED)
        elif session.transaction is not None:
            self._send(R.AUTH_IN_TRANSACTION)
        elif not self.mechanisms():
            self._send(R.ENCRYPTION_REQUIRED)
        elif command.mechanism not in self.mechanisms():
            self._send(R.UNKNOWN_MECHANISM)
        else:
            try:
                initial = None if command.initial is None else decode_response(command.initial)
                self._mechanism = new_mechanism(command.mechanism)
                step = self._mechanism.start(initial)
            except SASLMalformed:
                self._auth_reset()
                self._send(R.AUTH_MALFORMED)
                return
            await self._sasl_step(step)

    async def _sasl_line(self, line: bytes) -> None:
        """One SASL response line (State.SASL), handled like a command."""
        mechanism = self._mechanism
        assert mechanism is not None
        if line.strip(b" ") == b"*":
            self._auth_reset()
            self._send(R.AUTH_CANCELLED)
            return
        if len(line) + 2 > self.options.limits.auth_line:
            self._auth_reset()
            self._send(R.LINE_TOO_LONG)
            return
        try:
            step = mechanism.respond(decode_response(line))
        except SASLMalformed:
            self._auth_reset()
            self._send(R.AUTH_MALFORMED)
            return
        await self._sasl_step(step)

    async def _sasl_step(self, step: Step) -> None:
        mechanism = self._mechanism
        assert mechanism is not None
        if isinstance(step, Challenge):
            self._state = State.SASL
            self.transport.write(b"334 " + base64.b64encode(step.data) + b"\r\n")
        elif isinstance(step, NeedSecrets):
            self._state = State.SASL
            try:
                found = await self._ask(self.policy.scram_secrets, self.session, step.username)
            except _PolicyFailed:
                self._auth_reset()
                raise
            await self._sasl_step(mechanism.provide_secrets(found))
        elif isinstance(step, Outcome):
            self._state = State.COMMAND
            credentials = step.credentials
            try:
                result = await self._ask(self.policy.authenticate, self.session, credentials)
            except _PolicyFailed:
                self._auth_reset()
                raise
            self._auth_done(credentials, result)

    def _auth_reset(self) -> None:
        self._mechanism = None
        if self._state == State.SASL:
            self._state = State.COMMAND

    def _auth_done(self, credentials: Credentials, result: Any) -> None:
        self._auth_reset()
        session = self.session
        fields = {"username": credentials.username, "mechanism": credentials.mechanism}
        if isinstance(result, Reply):
            self.smtp_factory.meter.auth_failed(credentials.mechanism)
            self.log.warning("smtp auth refused", code=result.code, **fields)
            self._send(result)
        elif result is None:
            self.smtp_factory.meter.auth_failed(credentials.mechanism)
            self.log.warning("smtp auth failed", **fields)
            self._send(R.AUTH_FAILED)
        else:
            session.identity = result
            session.auth_username = credentials.username
            session.auth_mechanism = credentials.mechanism
            self.log.info("smtp auth succeeded", **fields)
            self._send(R.AUTH_SUCCEEDED)


class _PolicyFailed(Exception):
    """A policy call failed (logged and counted where it failed): the peer gets 451."""


class _SessionClosed(Exception):
    """The session closed while a handler awaited the policy: the handler stops, silently."""


# the handler (a method name, so a test can replace it) of each parsed command type;
# HELO and EHLO share one (Hello.extended says which)
_HANDLERS: dict[type, str] = {
    grammar.Hello: "smtp_HELO",
    grammar.Mail: "smtp_MAIL",
    grammar.Rcpt: "smtp_RCPT",
    grammar.Data: "smtp_DATA",
    grammar.Bdat: "smtp_BDAT",
    grammar.Rset: "smtp_RSET",
    grammar.Noop: "smtp_NOOP",
    grammar.Quit: "smtp_QUIT",
    grammar.Vrfy: "smtp_VRFY",
    grammar.Help: "smtp_HELP",
    grammar.StartTLS: "smtp_STARTTLS",
    grammar.Auth: "smtp_AUTH",
    grammar.Unimplemented: "smtp_unimplemented",
}
