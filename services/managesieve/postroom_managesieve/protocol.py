"""The ManageSieve server state machine (RFC 5804), written on ListenerSession.

This protocol frames (wire.py), checks the session state and replies; every
decision about accounts and scripts comes from an
:class:`~postroom_managesieve.policy.Authority` and the
:class:`~postroom_managesieve.policy.Scripts` it hands out, through
Deferreds. Each command is one ``async def do_VERB`` handler, run one at a
time in the order received; pipelined commands wait in the framer (and
reading pauses when it holds too much). STARTTLS drops whatever came with
it (CVE-2011-0411); AUTHENTICATE (PLAIN, SCRAM-SHA-256) is offered only
under TLS unless the operator allows plaintext logins from loopback.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine, Sequence
from enum import StrEnum
from typing import Any

from twisted.internet import interfaces
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from postroom.auth import sasl
from postroom.logs import get_logger
from postroom.metrics import Metrics, SessionMetrics
from postroom.net.connlimit import PerAddressLimit
from postroom.net.peers import is_loopback, is_tls
from postroom.net.session import ListenerSession
from postroom_managesieve import wire
from postroom_managesieve.policy import (
    AuthFailed,
    Authority,
    LoginDelayed,
    Refusal,
    Scripts,
)

log = get_logger("managesieve")


class State(StrEnum):
    """RFC 5804's two states (a StrEnum: logs keep the plain names)."""

    NONAUTH = "NONAUTH"
    AUTH = "AUTH"


NONAUTH = State.NONAUTH
AUTH = State.AUTH

IDLE_TIMEOUT = 600.0
# answer a failed login only after this long, to slow down guessing on one connection
FAILED_LOGIN_DELAY = 2.0
MAX_FAILED_LOGINS = 3
# protocol errors (unknown commands, bad arguments) before the server hangs up
MAX_ERRORS = 10
# strings before login (SASL responses) are small whatever the script limit
MAX_LITERAL_BEFORE_AUTH = 8 * 1024
# pipelined input held while a command is in progress before reading from the peer pauses
MAX_BUFFERED = 64 * 1024
MECHANISMS = ("PLAIN", "SCRAM-SHA-256")

Handler = Callable[[wire.Command], Coroutine[Any, Any, None]]


class ManageSieveFactory(ServerFactory):
    """Makes :class:`ManageSieveServer` protocols sharing one Authority and TLS setup."""

    def __init__(self, authority: Authority, *, hostname: str, extensions: Sequence[str],
                 max_script_bytes: int, max_redirects: int, tls: Any = None,
                 allow_plaintext_auth_on_loopback: bool = False, clock: Any = None,
                 idle_timeout: float = IDLE_TIMEOUT,
                 failed_login_delay: float = FAILED_LOGIN_DELAY,
                 max_failed_logins: int = MAX_FAILED_LOGINS, max_errors: int = MAX_ERRORS,
                 max_connections_per_ip: int | None = None,
                 metrics: Metrics | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor
            clock = reactor
        self.meter = SessionMetrics(metrics, commands=ManageSieveServer._STATES,
                                    mechanisms=MECHANISMS)
        self.authority = authority
        self.hostname = hostname
        self.extensions = " ".join(extensions)
        self.max_script_bytes = max_script_bytes
        self.max_redirects = max_redirects
        # an IOpenSSLContextFactory for STARTTLS, or None when it is not offered
        self.tls = tls
        self.allow_plaintext_auth_on_loopback = allow_plaintext_auth_on_loopback
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.failed_login_delay = failed_login_delay
        self.max_failed_logins = max_failed_logins
        self.max_errors = max_errors
        # None: no limit (tests); the service passes POSTROOM_MAX_CONNECTIONS_PER_IP
        self.per_address = PerAddressLimit(max_connections_per_ip) \
            if max_connections_per_ip is not None else None
        self.sessions: set[ManageSieveServer] = set()

    def buildProtocol(self, addr: Any) -> Any:
        server = ManageSieveServer()
        server.factory = self
        return server

    def close_sessions(self) -> None:
        """Say BYE to every session (shutdown)."""
        for server in list(self.sessions):
            server.shut_down()


class ManageSieveServer(ListenerSession, Protocol):
    """One ManageSieve session: NONAUTH, then AUTH after AUTHENTICATE."""

    factory: ManageSieveFactory

    def __init__(self) -> None:
        self.state: State = NONAUTH
        self.tls = False
        self.peer_ip = ""
        self.session = secrets.token_hex(6)
        self.log = log.bind(session=self.session)
        self.scripts: Scripts | None = None
        self.username: str | None = None
        self.errors = 0
        self.failed_logins = 0
        self.closing = False
        self.framer = wire.Framer(max_literal=MAX_LITERAL_BEFORE_AUTH,
                                  max_held=MAX_LITERAL_BEFORE_AUTH)
        self._in_process = False
        # an AUTHENTICATE waiting for the client's next SASL response
        self._waiter: Deferred[wire.Command | wire.FrameError] | None = None

    # --- connection life

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.tls = is_tls(transport)
        self.peer_ip = str(getattr(transport.getPeer(), "host", ""))
        self.log = self.log.bind(peer=self.peer_ip)
        self.log.info("session opened", tls=self.tls)
        limit = self.factory.per_address
        if not self.admit(self.factory.meter, "managesieve", limit, self.peer_ip):
            assert limit is not None
            self.log.warning("too many connections", limit=limit.limit)
            self._close(b'BYE (TRYLATER) "too many connections from your address"')
            return
        self.factory.sessions.add(self)
        self._capabilities()
        self._ok(f"{self.factory.hostname} ManageSieve ready")
        self.touch()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closing = True
        self.factory.sessions.discard(self)
        self.framer.discard()
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback(wire.FrameError("connection lost"))
        self.leave()
        self.log.info("session closed", user=self.username, state=self.state)

    def touch(self) -> None:
        if not self.closing:
            self.restart_timer(self.factory.idle_timeout)

    def session_clock(self) -> Any:
        return self.factory.clock

    def session_timed_out(self) -> None:
        self.log.info("idle timeout", state=self.state)
        self._close(b'BYE "idle for too long"')

    def shut_down(self) -> None:
        self._close(b'BYE (TRYLATER) "server shutting down, try again later"')

    def _close(self, line: bytes | None = None) -> None:
        if line is not None and not self.closing:
            self._write(line + wire.CRLF)
        self.closing = True
        self.framer.discard()
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

    # --- replies

    def _write(self, data: bytes) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.write(data)

    def _reply(self, kind: str, text: str, code: str | None = None) -> None:
        line = kind.encode("ascii")
        if code:
            line += b" (" + code.encode("ascii") + b")"
        self._write(line + b" " + wire.quote(text) + wire.CRLF)

    def _ok(self, text: str, code: str | None = None) -> None:
        self._reply("OK", text, code)

    def _no(self, text: str, code: str | None = None) -> None:
        self._reply("NO", text, code)

    def _refused(self, refusal: Refusal) -> None:
        self._no(refusal.text, refusal.code)

    def _error(self, text: str) -> None:
        """A protocol error by the client: counted, and too many end the session."""
        if self.spend_error(self.factory.max_errors, self.factory.meter):
            self.log.warning("too many errors", errors=self.errors)
            self._close(b'BYE "too many errors, closing connection"')
            return
        self._no(text)

    # --- capabilities (RFC 5804 1.7)

    def auth_allowed(self) -> bool:
        return self.tls or (self.factory.allow_plaintext_auth_on_loopback
                            and is_loopback(self.peer_ip))

    def _starttls_available(self) -> bool:
        return (not self.tls and self.factory.tls is not None
                and interfaces.ITLSTransport.providedBy(self.transport))

    def capabilities(self) -> list[tuple[str, str | None]]:
        caps: list[tuple[str, str | None]] = [("IMPLEMENTATION", "Postroom")]
        if self.state == NONAUTH:
            caps.append(("SASL", " ".join(MECHANISMS) if self.auth_allowed() else ""))
        caps.append(("SIEVE", self.factory.extensions))
        if self.state == NONAUTH and self._starttls_available():
            caps.append(("STARTTLS", None))
        caps.append(("MAXREDIRECTS", str(self.factory.max_redirects)))
        if self.state == AUTH and self.username:
            caps.append(("OWNER", self.username))
        caps += [("UNAUTHENTICATE", None), ("VERSION", "1.0")]
        return caps

    def _capabilities(self) -> None:
        out = bytearray()
        for name, value in self.capabilities():
            out += wire.quote(name)
            if value is not None:
                out += b" " + wire.quote(value)
            out += wire.CRLF
        self._write(bytes(out))

    # --- input

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.framer.feed(data)
        self._process()

    def _process(self) -> None:
        if self._in_process:
            return
        self._in_process = True
        try:
            while not self.closing:
                if self.command_running and self._waiter is None:
                    break
                event = self.framer.next()
                if event is None:
                    break
                self.touch()
                if self._waiter is not None:
                    waiter, self._waiter = self._waiter, None
                    waiter.callback(event)
                    continue
                self.run_command(self._dispatch(event))
        finally:
            self._in_process = False
        self._flow_control()

    def _flow_control(self) -> None:
        if self.transport is None or self.closing:
            return
        if self.command_running and self.framer.pending > MAX_BUFFERED + self.framer.max_held:
            self.pause_reading()
        elif not self.command_running:
            self.resume_reading()

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
            self._no("internal error, try again later", "TRYLATER")

    def _next_response(self) -> Deferred[wire.Command | wire.FrameError]:
        """The client's next line (a SASL response), as the framer reads it."""
        waiter: Deferred[wire.Command | wire.FrameError] = Deferred()
        self._waiter = waiter
        # it may be buffered already (inside _process, its loop hands it over)
        if not self._in_process:
            self._process()
        return waiter

    # --- dispatch

    async def _dispatch(self, event: wire.Command | wire.FrameError) -> None:
        if isinstance(event, wire.FrameError):
            if event.quota:
                self.factory.meter.error("literal_too_big")
                self._no(event.message, "QUOTA/MAXSIZE")
                return
            self._error(event.message)
            return
        self.factory.meter.command(event.name or "other")
        handler: Handler | None = getattr(self, f"do_{event.name}", None) if event.name else None
        if handler is None:
            self._error("unknown command")
            return
        if self.state not in self._STATES.get(event.name, ()):
            self._error(f"{event.name} not allowed now")
            return
        await handler(event)

    _STATES: dict[str, tuple[State, ...]] = {
        "CAPABILITY": (NONAUTH, AUTH),
        "LOGOUT": (NONAUTH, AUTH),
        "NOOP": (NONAUTH, AUTH),
        "STARTTLS": (NONAUTH,),
        "AUTHENTICATE": (NONAUTH,),
        "UNAUTHENTICATE": (AUTH,),
        "HAVESPACE": (AUTH,),
        "PUTSCRIPT": (AUTH,),
        "CHECKSCRIPT": (AUTH,),
        "LISTSCRIPTS": (AUTH,),
        "SETACTIVE": (AUTH,),
        "GETSCRIPT": (AUTH,),
        "DELETESCRIPT": (AUTH,),
        "RENAMESCRIPT": (AUTH,),
    }

    def _texts(self, command: wire.Command, low: int, high: int | None = None,
               usage: str = "") -> list[str] | None:
        found = command.strings(low, high)
        if found is None:
            self._error(f"usage: {command.name} {usage}".rstrip())
            return None
        try:
            return [a.decode("utf-8") for a in found]
        except UnicodeDecodeError:
            self._error("strings must be UTF-8")
            return None

    # --- any state

    async def do_CAPABILITY(self, command: wire.Command) -> None:
        if command.args:
            self._error("CAPABILITY takes no arguments")
            return
        self._capabilities()
        self._ok("capability completed")

    async def do_NOOP(self, command: wire.Command) -> None:
        texts = self._texts(command, 0, 1, "[tag]")
        if texts is None:
            return
        if texts:
            tag = texts[0]
            self._write(b"OK (TAG " + wire.quote(tag) + b') "done"' + wire.CRLF)
            return
        self._ok("done")

    async def do_LOGOUT(self, command: wire.Command) -> None:
        self._close(b'OK "logout completed"')

    # --- NONAUTH

    async def do_STARTTLS(self, command: wire.Command) -> None:
        if self.tls:
            self._error("TLS is already active")
            return
        if not self._starttls_available():
            self._error("STARTTLS not available")
            return
        self._ok("begin TLS negotiation")
        # bytes that came with STARTTLS were sent in the clear and may be an injection:
        # they are never executed inside TLS (CVE-2011-0411)
        self.framer.discard()
        assert self.transport is not None
        self.transport.startTLS(self.factory.tls)
        self.tls = True
        self.log.info("tls started")
        # RFC 5804 2.2: the capabilities again, now under TLS
        self._capabilities()
        self._ok("TLS negotiation successful")

    async def do_AUTHENTICATE(self, command: wire.Command) -> None:
        texts = self._texts(command, 1, 2, '"mechanism" ["initial response"]')
        if texts is None:
            return
        if not self.auth_allowed():
            self._no("AUTHENTICATE needs TLS: use STARTTLS first", "ENCRYPT-NEEDED")
            return
        name = texts[0].upper()
        if name not in MECHANISMS:
            self._no("unsupported mechanism")
            return
        mechanism = sasl.new_mechanism(name)
        try:
            step = mechanism.start(sasl.decode_response(texts[1]) if len(texts) == 2
                                   else None)
            while isinstance(step, sasl.Challenge | sasl.NeedSecrets):
                if isinstance(step, sasl.NeedSecrets):
                    found = await self.factory.authority.scram_secrets(step.username,
                                                                       self.peer_ip)
                    step = mechanism.provide_secrets(found)
                    continue
                if name == "SCRAM-SHA-256" and step.data.startswith(b"v="):
                    # the server-final message goes in the OK (RFC 5804 2.1: SASL code)
                    final = step.data
                    step = mechanism.respond(b"")
                    await self._finish_sasl(step, name, final)
                    return
                self._write(wire.quote(sasl.encode_challenge(step.data)) + wire.CRLF)
                event = await self._next_response()
                if self.closing:
                    return
                if isinstance(event, wire.FrameError) or event.name or len(event.args) != 1 \
                        or not isinstance(event.args[0], bytes):
                    self._error("a SASL response is one string")
                    return
                response = event.args[0]
                if response.strip() == b"*":
                    self._no("authentication cancelled")
                    return
                step = mechanism.respond(sasl.decode_response(response))
        except sasl.SASLMalformed as exc:
            self._error(f"malformed SASL response: {exc}")
            return
        await self._finish_sasl(step, name, None)

    async def _finish_sasl(self, step: sasl.Step, mechanism: str, final: bytes | None) -> None:
        if not isinstance(step, sasl.Outcome):
            self._no("authentication failed")
            return
        credentials = step.credentials
        unproven = isinstance(credentials, sasl.VerifiedCredentials) and not credentials.verified
        if credentials.authzid and credentials.authzid != credentials.username and not unproven:
            # a wrong SCRAM proof goes on to be counted as a failed login (no oracle that
            # skips the limiter); a right one, or PLAIN, is refused here
            self._no("cannot act as another user")
            return
        try:
            if isinstance(credentials, sasl.VerifiedCredentials):
                scripts = await self.factory.authority.login_verified(
                    credentials.username, credentials.verified, self.peer_ip)
            else:
                scripts = await self.factory.authority.login(
                    credentials.username, credentials.password, self.peer_ip)
        except Refusal as refusal:
            await self._login_refused(refusal, credentials.username, mechanism)
            return
        if self.closing:
            return
        self.scripts = scripts
        self.username = scripts.address
        self.state = AUTH
        self.framer.max_literal = self.factory.max_script_bytes
        self.framer.max_held = self.factory.max_script_bytes + wire.MAX_QUOTED
        self.log = self.log.bind(user=self.username)
        self.log.info("login succeeded", user=self.username, mechanism=mechanism)
        if final is not None:
            self._write(b"OK (SASL " + wire.quote(sasl.encode_challenge(final))
                        + b') "authenticated"' + wire.CRLF)
            return
        self._ok("authenticated")

    async def _login_refused(self, refusal: Refusal, user: str, mechanism: str) -> None:
        self.log.info("login refused", user=user, reason=type(refusal).__name__)
        if not isinstance(refusal, AuthFailed | LoginDelayed):
            self._refused(refusal)
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
            code = f"({refusal.code}) " if refusal.code else ""
            self._close(f"BYE {code}".encode() + wire.quote(refusal.text))
            return
        self._refused(refusal)

    # --- AUTH

    async def do_UNAUTHENTICATE(self, command: wire.Command) -> None:
        if command.args:
            self._error("UNAUTHENTICATE takes no arguments")
            return
        self.log.info("unauthenticated", user=self.username)
        self.state, self.scripts, self.username = NONAUTH, None, None
        self.log = log.bind(session=self.session, peer=self.peer_ip)
        self.framer.max_literal = self.framer.max_held = MAX_LITERAL_BEFORE_AUTH
        self._ok("unauthenticated")

    async def _do(self, action: Deferred[Any], done: str) -> bool:
        try:
            await action
        except Refusal as refusal:
            self._refused(refusal)
            return False
        if done:
            self._ok(done)
        return True

    async def do_HAVESPACE(self, command: wire.Command) -> None:
        if len(command.args) != 2 or not isinstance(command.args[0], bytes) \
                or not isinstance(command.args[1], int):
            self._error('usage: HAVESPACE "name" size')
            return
        try:
            name = command.args[0].decode("utf-8")
        except UnicodeDecodeError:
            self._error("strings must be UTF-8")
            return
        assert self.scripts is not None
        await self._do(self.scripts.have_space(name, command.args[1]), "putscript would succeed")

    async def _checked(self, text_bytes: bytes) -> str | None:
        """The script as text when it is valid here; else None (the client has been told)."""
        assert self.scripts is not None
        try:
            text = text_bytes.decode("utf-8")
        except UnicodeDecodeError:
            self._no("line 1: the script is not UTF-8")
            return None
        problems = await self.scripts.check(text)
        if problems:
            self._no("; ".join(str(p) for p in problems[:5]))
            return None
        return text

    async def do_PUTSCRIPT(self, command: wire.Command) -> None:
        found = command.strings(2)
        if found is None:
            self._error('usage: PUTSCRIPT "name" {n+} script')
            return
        try:
            name = found[0].decode("utf-8")
        except UnicodeDecodeError:
            self._error("strings must be UTF-8")
            return
        assert self.scripts is not None
        text = await self._checked(found[1])
        if text is None:
            return
        if await self._do(self.scripts.put(name, text), "script stored"):
            self.log.info("script stored", name=name[:128], octets=len(found[1]))

    async def do_CHECKSCRIPT(self, command: wire.Command) -> None:
        found = command.strings(1)
        if found is None:
            self._error("usage: CHECKSCRIPT {n+} script")
            return
        if await self._checked(found[0]) is not None:
            self._ok("script is valid")

    async def do_LISTSCRIPTS(self, command: wire.Command) -> None:
        if command.args:
            self._error("LISTSCRIPTS takes no arguments")
            return
        assert self.scripts is not None
        listed = await self.scripts.list()
        out = bytearray()
        for name, active in listed:
            out += wire.quote(name) + (b" ACTIVE" if active else b"") + wire.CRLF
        self._write(bytes(out))
        self._ok("listscripts completed")

    async def do_SETACTIVE(self, command: wire.Command) -> None:
        texts = self._texts(command, 1, 1, '"name"')
        if texts is None:
            return
        assert self.scripts is not None
        if await self._do(self.scripts.set_active(texts[0] or None), "active script set"):
            self.log.info("script activated", name=texts[0][:128] or None)

    async def do_GETSCRIPT(self, command: wire.Command) -> None:
        texts = self._texts(command, 1, 1, '"name"')
        if texts is None:
            return
        assert self.scripts is not None
        try:
            text = await self.scripts.get(texts[0])
        except Refusal as refusal:
            self._refused(refusal)
            return
        data = text.encode("utf-8")
        self._write(b"{%d}\r\n" % len(data) + data + wire.CRLF)
        self._ok("getscript completed")

    async def do_DELETESCRIPT(self, command: wire.Command) -> None:
        texts = self._texts(command, 1, 1, '"name"')
        if texts is None:
            return
        assert self.scripts is not None
        if await self._do(self.scripts.delete(texts[0]), "script deleted"):
            self.log.info("script deleted", name=texts[0][:128])

    async def do_RENAMESCRIPT(self, command: wire.Command) -> None:
        texts = self._texts(command, 2, 2, '"old" "new"')
        if texts is None:
            return
        assert self.scripts is not None
        if await self._do(self.scripts.rename(texts[0], texts[1]), "script renamed"):
            self.log.info("script renamed", old=texts[0][:128], new=texts[1][:128])
