"""The POP3 server state machine (RFC 1939, 2449 CAPA, 2595 STLS, 3206, 5034 SASL PLAIN, 6856).

Why not twisted.mail.pop3: it has no STLS, crashes on ``AUTH PLAIN`` and a
bare ``USER``, and dot-stuffs RETR per 16 KiB chunk, so a ``.`` line that
starts exactly at a chunk boundary ends the message early. This protocol
parses and replies only; every decision and every byte of mail comes from an
:class:`~postroom_pop3.policy.Authority` and the
:class:`~postroom_pop3.policy.Maildrop` it hands out, through Deferreds.

Each command is one ``async def do_VERB`` handler. Commands are handled one
at a time in the order received: while one awaits a Deferred or streams a
message, later pipelined lines stay buffered
(and reading pauses when the buffer grows), so PIPELINING (RFC 2449) works
whatever the policy object does.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine, Sequence
from enum import StrEnum
from typing import Any

from twisted.internet import interfaces
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from postroom.logs import get_logger
from postroom.metrics import Metrics, SessionMetrics
from postroom.net.connlimit import PerAddressLimit
from postroom.net.peers import is_loopback, is_tls
from postroom.net.session import ListenerSession
from postroom_pop3 import wire
from postroom_pop3.policy import AuthFailed, Authority, LoginDelayed, Maildrop, Refusal

log = get_logger("pop3")



class State(StrEnum):
    """The session states of RFC 1939 section 3 (a StrEnum: logs keep the plain names)."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


AUTHORIZATION = State.AUTHORIZATION
TRANSACTION = State.TRANSACTION
UPDATE = State.UPDATE

# RFC 1939 section 3: an autologout timer of at least 10 minutes
IDLE_TIMEOUT = 600.0
# answer a failed login only after this long, to slow down guessing on one connection
FAILED_LOGIN_DELAY = 2.0
# failed logins on one connection before it is closed
MAX_FAILED_LOGINS = 3
# protocol errors (unknown commands, bad arguments, long lines) before the server hangs up
MAX_ERRORS = 10
# RETR/TOP stream in chunks of this size; 16 KiB is where twisted.mail's per-chunk stuffing broke
CHUNK_SIZE = 16384
# pipelined input held while a command is in progress before reading from the peer pauses
MAX_BUFFERED = 64 * 1024

# every command handler: ``async def do_VERB(self, command)``, replying as it goes
Handler = Callable[[wire.Command], Coroutine[Any, Any, None]]


class POP3Factory(ServerFactory):
    """Makes :class:`POP3Server` protocols sharing one Authority and TLS configuration."""

    def __init__(self, authority: Authority, *, hostname: str, tls: Any = None,
                 allow_plaintext_auth_on_loopback: bool = False, clock: Any = None,
                 idle_timeout: float = IDLE_TIMEOUT, failed_login_delay: float = FAILED_LOGIN_DELAY,
                 max_failed_logins: int = MAX_FAILED_LOGINS, max_errors: int = MAX_ERRORS,
                 max_connections_per_ip: int | None = None, login_delay: int = 0,
                 metrics: Metrics | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor
            clock = reactor
        self.meter = SessionMetrics(metrics, commands=POP3Server._STATES,
                                    mechanisms=("USER", "PLAIN"))
        self.authority = authority
        self.hostname = hostname
        # an IOpenSSLContextFactory for STLS, or None when STLS is not offered
        self.tls = tls
        self.allow_plaintext_auth_on_loopback = allow_plaintext_auth_on_loopback
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.failed_login_delay = failed_login_delay
        self.max_failed_logins = max_failed_logins
        self.max_errors = max_errors
        self.max_connections_per_ip = max_connections_per_ip
        # the LOGIN-DELAY capability's value (RFC 2449 6.8); we enforce none between logins
        self.login_delay = login_delay
        # None: no limit (tests); the service passes POSTROOM_MAX_CONNECTIONS_PER_IP
        self.per_address = PerAddressLimit(max_connections_per_ip) \
            if max_connections_per_ip is not None else None
        self.sessions: set[POP3Server] = set()

    def buildProtocol(self, addr: Any) -> Any:
        server = POP3Server()
        server.factory = self
        return server

    def close_sessions(self) -> None:
        """End every session without UPDATE (shutdown): nothing is expunged, locks are freed."""
        for server in list(self.sessions):
            server.shut_down()


@implementer(IPullProducer)
class _MessageSender:
    """Streams one dot-stuffed multi-line response, one chunk each time the peer has room."""

    def __init__(self, server: POP3Server, data: bytes) -> None:
        self.server = server
        self.data = data
        self.position = 0
        self.stuffer = wire.DotStuffer()
        self.done: Deferred[None] = Deferred()

    def resumeProducing(self) -> None:
        if self.done.called:
            return
        transport: Any = self.server.transport
        chunk = self.data[self.position:self.position + CHUNK_SIZE]
        if chunk:
            self.position += len(chunk)
            transport.write(self.stuffer.feed(chunk))
            self.server.touch()  # the peer is reading: not idle
            return
        transport.write(self.stuffer.finish())
        transport.unregisterProducer()
        self.data = b""
        self.done.callback(None)

    def stopProducing(self) -> None:
        if not self.done.called:
            self.data = b""
            self.done.callback(None)


class POP3Server(ListenerSession, LineReceiver):
    """One POP3 session: AUTHORIZATION, then TRANSACTION, then UPDATE on QUIT."""

    factory: POP3Factory
    delimiter = b"\r\n"

    def __init__(self) -> None:
        self.state: State = AUTHORIZATION
        self.tls = False
        self.peer_ip = ""
        self.session = secrets.token_hex(6)
        self.log = log.bind(session=self.session)
        self.maildrop: Maildrop | None = None
        self.deleted: set[int] = set()
        self.user: str | None = None
        self.username: str | None = None
        self.errors = 0
        self.failed_logins = 0
        self.closing = False
        self._buffer = b""
        self._skipping = False
        self._in_process = False
        self._sasl_pending = False
        self._sender: _MessageSender | None = None

    # --- connection life

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.tls = is_tls(transport)
        self.peer_ip = str(getattr(transport.getPeer(), "host", ""))
        self.log = self.log.bind(peer=self.peer_ip)
        self.log.info("session opened", tls=self.tls)
        limit = self.factory.per_address
        if not self.admit(self.factory.meter, "pop3s" if self.tls else "pop3", limit,
                          self.peer_ip):
            assert limit is not None
            self.log.warning("too many connections", limit=limit.limit)
            self._close(b"-ERR [SYS/TEMP] too many connections from your address")
            return
        self.factory.sessions.add(self)
        self.reply_ok(f"{self.factory.hostname} POP3 server ready")
        self.touch()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closing = True
        self.factory.sessions.discard(self)
        if self._sender is not None:
            self._sender.stopProducing()
        self.leave()
        self._release()
        self.log.info("session closed", user=self.username, state=self.state)

    def _release(self) -> None:
        if self.maildrop is not None:
            drop, self.maildrop = self.maildrop, None
            try:
                drop.release()
            except Exception as exc:  # a failed unlock must not stop the close
                self.log.exception("maildrop release failed", exc)

    def touch(self) -> None:
        """Restart the autologout timer (RFC 1939 section 3)."""
        if self.closing:
            return
        self.restart_timer(self.factory.idle_timeout)

    def session_clock(self) -> Any:
        return self.factory.clock

    def session_timed_out(self) -> None:
        # autologout: the session ends WITHOUT entering UPDATE, so nothing is expunged
        self.log.info("idle timeout", state=self.state)
        self._close(b"-ERR autologout: idle for too long")

    def shut_down(self) -> None:
        """The server is stopping: say so and close (RFC 1939: no UPDATE without QUIT)."""
        self._close(b"-ERR [SYS/TEMP] server shutting down, try again later")

    def _close(self, line: bytes | None = None) -> None:
        if line is not None and not self.closing:
            self.sendLine(line)
        self.closing = True
        self._buffer = b""
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

    # --- replies

    def reply_ok(self, text: str = "") -> None:
        self.sendLine(b"+OK " + text.encode("utf-8") if text else b"+OK")

    def reply_err(self, text: str) -> None:
        self.sendLine(b"-ERR " + text.encode("utf-8"))

    def reply_multi(self, first: str, lines: Sequence[str]) -> None:
        body = b"".join(line.encode("utf-8") + wire.CRLF for line in lines)
        transport: Any = self.transport
        transport.write(b"+OK " + first.encode("utf-8") + wire.CRLF + wire.dot_stuff(body))

    def _error(self, text: str) -> None:
        """A protocol error by the client: counted, and too many end the session."""
        if self.spend_error(self.factory.max_errors, self.factory.meter):
            self.log.warning("too many errors", errors=self.errors)
            self._close(b"-ERR too many errors, closing connection")
            return
        self.reply_err(text)

    # --- input: our own line framing, so long lines, STLS and pipelining are handled exactly

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self._buffer += data
        self._process()

    def _line_limit(self) -> int:
        return wire.MAX_SASL_LINE_LENGTH if self._sasl_pending else wire.MAX_COMMAND_LENGTH

    def _process(self) -> None:
        if self._in_process:
            return
        self._in_process = True
        try:
            while not self.command_running and not self.closing and self._buffer:
                if self._skipping:
                    # the rest of an over-long line: drop it up to and including its LF
                    end = self._buffer.find(b"\n")
                    if end < 0:
                        self._buffer = b""
                        break
                    self._buffer = self._buffer[end + 1:]
                    self._skipping = False
                    continue
                limit = self._line_limit()
                end = self._buffer.find(b"\n", 0, limit + 2)
                if end < 0:
                    if len(self._buffer) > limit + 1:
                        self._buffer = self._buffer[limit + 1:]
                        self._skipping = True
                        self._line_too_long()
                        continue
                    break
                line = self._buffer[:end]
                self._buffer = self._buffer[end + 1:]
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) > limit:
                    self._line_too_long()
                    continue
                self._run(line)
        finally:
            self._in_process = False
        self._flow_control()

    def _flow_control(self) -> None:
        if self.transport is None or self.closing:
            return
        if self.command_running and len(self._buffer) > MAX_BUFFERED:
            self.pause_reading()
        elif not self.command_running:
            self.resume_reading()

    def _line_too_long(self) -> None:
        self.touch()
        if self._sasl_pending:
            self._sasl_pending = False
        self._error("line too long")

    def _run(self, line: bytes) -> None:
        self.touch()
        # a handler that never waits finishes here, before the next line is looked at
        self.run_command(self._dispatch(line))

    def command_ended(self, failure: Failure | None) -> None:
        if failure is not None:
            self._internal_error(failure)
        if not self.closing:
            self.touch()
            self._process()

    def _internal_error(self, failure: Failure) -> None:
        # never a traceback to the peer: the log gets it, the client a temporary error
        self.log.error("command failed", error=failure.getErrorMessage(),
                       traceback=failure.getTraceback())
        if not self.closing:
            self.reply_err("[SYS/TEMP] internal error, try again later")

    # --- dispatch

    async def _dispatch(self, line: bytes) -> None:
        if self._sasl_pending:
            self._sasl_pending = False
            await self._sasl_response(line)
            return
        try:
            command = wire.parse_command(line)
        except wire.CommandSyntaxError:
            self._error("unknown command")
            return
        self.factory.meter.command(command.keyword)
        handler: Handler | None = getattr(self, f"do_{command.keyword}", None)
        if handler is None:
            self._error("unknown command")
            return
        allowed = self._STATES.get(command.keyword, ())
        if self.state not in allowed:
            self._error(f"{command.keyword} not allowed now")
            return
        await handler(command)

    _STATES: dict[str, tuple[State, ...]] = {
        "CAPA": (AUTHORIZATION, TRANSACTION),
        "QUIT": (AUTHORIZATION, TRANSACTION),
        "NOOP": (TRANSACTION,),
        "STLS": (AUTHORIZATION,),
        "UTF8": (AUTHORIZATION,),
        "USER": (AUTHORIZATION,),
        "PASS": (AUTHORIZATION,),
        "AUTH": (AUTHORIZATION,),
        "STAT": (TRANSACTION,),
        "LIST": (TRANSACTION,),
        "UIDL": (TRANSACTION,),
        "RETR": (TRANSACTION,),
        "TOP": (TRANSACTION,),
        "DELE": (TRANSACTION,),
        "RSET": (TRANSACTION,),
    }

    # --- AUTHORIZATION

    def password_allowed(self) -> bool:
        """USER/PASS and AUTH only under TLS, or from loopback when the operator allows it."""
        return self.tls or (self.factory.allow_plaintext_auth_on_loopback
                            and is_loopback(self.peer_ip))

    def _stls_available(self) -> bool:
        return (not self.tls and self.factory.tls is not None
                and interfaces.ITLSTransport.providedBy(self.transport))

    def capabilities(self) -> list[str]:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER",
                f"LOGIN-DELAY {self.factory.login_delay}"]
        if self.state == AUTHORIZATION:
            if self.password_allowed():
                caps += ["USER", "SASL PLAIN"]
            if self._stls_available():
                caps.append("STLS")
            caps.append("UTF8 USER")
        caps.append("IMPLEMENTATION Postroom")
        return caps

    async def do_CAPA(self, command: wire.Command) -> None:
        self.reply_multi("capability list follows", self.capabilities())

    async def do_QUIT(self, command: wire.Command) -> None:
        if self.state == AUTHORIZATION:
            self._close(f"+OK {self.factory.hostname} POP3 server signing off".encode())
            return
        await self._update()

    async def do_UTF8(self, command: wire.Command) -> None:
        # RFC 6856: we take UTF-8 user names and passwords and never downgrade messages
        self.reply_ok("UTF8 enabled")

    async def do_STLS(self, command: wire.Command) -> None:
        if self.tls:
            self._error("command not permitted when TLS active")
            return
        if not self._stls_available():
            self._error("STLS not available")
            return
        self.reply_ok("begin TLS negotiation")
        # RFC 2595 / CVE-2011-0411: bytes that came with STLS were sent in the clear and
        # may be an injection; they must never be executed inside TLS
        self._buffer = b""
        self._skipping = False
        assert self.transport is not None
        self.transport.startTLS(self.factory.tls)  # type: ignore[attr-defined]
        self.tls = True
        self.user = None
        self.log.info("tls started")

    def _refuse_cleartext(self) -> bool:
        if self.password_allowed():
            return False
        self.reply_err("[AUTH] plaintext authentication disallowed without TLS, use STLS")
        return True

    async def do_USER(self, command: wire.Command) -> None:
        if self._refuse_cleartext():
            return
        name = command.argument.strip()
        if not name:
            self._error("USER needs a user name")
            return
        try:
            self.user = name.decode("utf-8")
        except UnicodeDecodeError:
            self._error("user name is not UTF-8")
            return
        self.reply_ok("send PASS")

    async def do_PASS(self, command: wire.Command) -> None:
        if self._refuse_cleartext():
            return
        if self.user is None:
            self._error("USER first")
            return
        user, self.user = self.user, None
        try:
            # the whole rest of the line: passwords may contain spaces
            password = command.argument.decode("utf-8")
        except UnicodeDecodeError:
            self._error("password is not UTF-8")
            return
        if not password:
            self._error("PASS needs a password")
            return
        await self._login(user, password)

    async def do_AUTH(self, command: wire.Command) -> None:
        if self._refuse_cleartext():
            return
        words = command.words()
        if not words:
            # RFC 1734 clients (Outlook) list mechanisms with a bare AUTH
            self.reply_multi("SASL mechanisms follow", ["PLAIN"])
            return
        if len(words) > 2:
            self._error("AUTH takes a mechanism and an optional initial response")
            return
        if words[0].upper() != b"PLAIN":
            self._error("unsupported authentication mechanism")
            return
        self.user = None
        if len(words) == 2:
            await self._sasl_response(words[1])
            return
        self._sasl_pending = True
        self.sendLine(b"+ ")

    async def _sasl_response(self, line: bytes) -> None:
        if line.strip() == b"*":
            self.reply_err("authentication cancelled")
            return
        try:
            authzid, authcid, password = wire.decode_sasl_plain(line)
        except wire.SaslError as exc:
            self._error(str(exc))
            return
        if authzid and authzid != authcid:
            self.reply_err("[AUTH] acting as another user is not allowed")
            return
        await self._login(authcid, password, "PLAIN")

    async def _login(self, user: str, password: str, mechanism: str = "USER") -> None:
        try:
            maildrop = await self.factory.authority.login(user, password, self.peer_ip)
        except Refusal as refusal:
            await self._login_refused(refusal, user, mechanism)
            return
        self._logged_in(maildrop, user)

    def _logged_in(self, maildrop: Maildrop, user: str) -> None:
        if self.closing:
            maildrop.release()  # the peer went away while we were logging in
            return
        self.maildrop = maildrop
        self.username = user
        self.deleted = set()
        self.state = TRANSACTION
        count, size = self._totals()
        self.log.info("login succeeded", user=user, messages=count, octets=size)
        self.reply_ok(f"maildrop has {count} messages ({size} octets)")

    async def _login_refused(self, refusal: Refusal, user: str, mechanism: str) -> None:
        # anything but a Refusal goes on to the internal-error path, which logs it
        self.log.info("login refused", user=user, reason=refusal.code)
        if not isinstance(refusal, (AuthFailed, LoginDelayed)):
            self.reply_err(refusal.response())
            return
        self.failed_logins += 1
        self.factory.meter.auth_failed(mechanism)
        # the delay holds back pipelined commands too: guessing on one connection stays slow
        await deferLater(self.factory.clock, self.factory.failed_login_delay,
                         self._answer_failed_login, refusal)

    def _answer_failed_login(self, refusal: Refusal) -> None:
        if self.closing:
            return
        if self.failed_logins >= self.factory.max_failed_logins:
            self._close(f"-ERR {refusal.response()}".encode())
            return
        self.reply_err(refusal.response())

    # --- TRANSACTION

    def _totals(self) -> tuple[int, int]:
        assert self.maildrop is not None
        live = [m for i, m in enumerate(self.maildrop.messages) if i not in self.deleted]
        return len(live), sum(m.size for m in live)

    def _message_index(self, argument: bytes) -> int | None:
        """The 0-based index of a live message named by ``argument``, or None (already replied)."""
        assert self.maildrop is not None
        number = wire.parse_number(argument)
        if number is None:
            self._error("invalid message number")
            return None
        if not 1 <= number <= len(self.maildrop.messages):
            self.reply_err("no such message")
            return None
        if number - 1 in self.deleted:
            self.reply_err("message already deleted")
            return None
        return number - 1

    def _one_argument(self, command: wire.Command, name: str) -> bytes | None:
        words = command.words()
        if len(words) != 1:
            self._error(f"{name} takes one message number")
            return None
        return words[0]

    async def do_STAT(self, command: wire.Command) -> None:
        count, size = self._totals()
        self.reply_ok(f"{count} {size}")

    def _listing(self, command: wire.Command, name: str,
                 item: Callable[[int], str]) -> None:
        assert self.maildrop is not None
        words = command.words()
        if len(words) > 1:
            self._error(f"{name} takes at most one message number")
            return
        if words:
            index = self._message_index(words[0])
            if index is not None:
                self.reply_ok(f"{index + 1} {item(index)}")
            return
        lines = [f"{i + 1} {item(i)}" for i in range(len(self.maildrop.messages))
                 if i not in self.deleted]
        count, size = self._totals()
        self.reply_multi(f"{count} messages ({size} octets)", lines)

    async def do_LIST(self, command: wire.Command) -> None:
        assert self.maildrop is not None
        messages = self.maildrop.messages
        self._listing(command, "LIST", lambda i: str(messages[i].size))

    async def do_UIDL(self, command: wire.Command) -> None:
        assert self.maildrop is not None
        messages = self.maildrop.messages
        self._listing(command, "UIDL", lambda i: messages[i].unique_id)

    async def do_DELE(self, command: wire.Command) -> None:
        argument = self._one_argument(command, "DELE")
        if argument is None:
            return
        index = self._message_index(argument)
        if index is None:
            return
        self.deleted.add(index)
        self.reply_ok(f"message {index + 1} deleted")

    async def do_RSET(self, command: wire.Command) -> None:
        self.deleted = set()
        count, size = self._totals()
        self.reply_ok(f"maildrop has {count} messages ({size} octets)")

    async def do_NOOP(self, command: wire.Command) -> None:
        self.reply_ok()

    async def do_RETR(self, command: wire.Command) -> None:
        argument = self._one_argument(command, "RETR")
        if argument is None:
            return
        index = self._message_index(argument)
        if index is None:
            return
        data = await self._retrieve(index)
        if data is not None:
            await self._send(f"{len(data)} octets", data)

    async def do_TOP(self, command: wire.Command) -> None:
        words = command.words()
        if len(words) != 2:
            self._error("TOP takes a message number and a line count")
            return
        lines = wire.parse_number(words[1])
        if lines is None:
            self._error("invalid line count")
            return
        index = self._message_index(words[0])
        if index is None:
            return
        data = await self._retrieve(index)
        if data is not None:
            await self._send("top of message follows", wire.top(data, lines))

    async def _retrieve(self, index: int) -> bytes | None:
        """The message's bytes, or None when the maildrop refused (the client has been told)."""
        assert self.maildrop is not None
        try:
            return await self.maildrop.retrieve(index)
        except Refusal as refusal:
            # anything else goes on to the internal-error path, which logs it
            if not self.closing:
                self.reply_err(refusal.response())
            return None

    def _send(self, first: str, data: bytes) -> Deferred[None]:
        if self.closing or self.transport is None:
            return succeed(None)
        self.reply_ok(first)
        sender = self._sender = _MessageSender(self, data)
        self.transport.registerProducer(sender, False)

        def sent(_: Any) -> None:
            self._sender = None

        return sender.done.addCallback(sent)

    # --- UPDATE

    async def _update(self) -> None:
        assert self.maildrop is not None
        self.state = UPDATE
        deleted = sorted(self.deleted)
        if not deleted:
            self._quit_done(0)
            return
        try:
            removed = await self.maildrop.commit(deleted)
        except Exception:  # noqa: BLE001 -- any failure: logged, the client told, locks freed
            self._commit_failed(Failure())
            return
        self._quit_done(removed)

    def _quit_done(self, removed: int) -> None:
        self.log.info("maildrop updated", user=self.username, deleted=removed)
        remaining = len(self.maildrop.messages) - len(self.deleted) if self.maildrop else 0
        self._release()
        self._close(f"+OK {self.factory.hostname} POP3 server signing off "
                    f"({remaining} messages left)".encode())

    def _commit_failed(self, failure: Failure) -> None:
        self.log.error("maildrop update failed", user=self.username,
                       error=failure.getErrorMessage())
        self._release()
        self._close(b"-ERR [SYS/TEMP] some deleted messages not removed")
