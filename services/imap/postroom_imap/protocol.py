"""The IMAP server state machine (RFC 3501) on Twisted: framing, states, auth, TLS, dispatch.

Why not twisted.mail.imap4: it executes plaintext pipelined after STARTTLS,
fails APPEND without flags and SEARCH on headers, drops the connection on
non-ASCII headers in FETCH, and calls mailboxes synchronously. This protocol
parses with :mod:`postroom_imap.syntax`, replies, and asks a
:class:`~postroom_imap.policy.Accounts` / :class:`~postroom_imap.policy.UserStore`
for everything else through Deferreds. Commands run one at a time in the
order received; untagged mailbox updates are sent before a command's tagged
reply, and EXPUNGE never during FETCH, STORE or SEARCH (RFC 3501 7.4.1).
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from postroom.auth import sasl
from postroom.logs import get_logger
from postroom.metrics import Metrics, SessionMetrics, imap_idle_sessions
from postroom.net.connlimit import PerAddressLimit
from postroom.net.peers import is_loopback, is_tls
from postroom.net.session import ListenerSession
from postroom_imap.compress import STEPS_PER_TURN, Deflate
from postroom_imap.handlers_mailbox import MailboxCommands
from postroom_imap.handlers_message import MessageCommands
from postroom_imap.handlers_metadata import MetadataCommands
from postroom_imap.policy import Accounts, AuthFailed, Refusal, UserStore
from postroom_imap.selected import Selected
from postroom_imap.syntax import (
    Command,
    CommandReader,
    Event,
    LiteralRefused,
    LiteralTooBig,
    NeedContinuation,
    ParseError,
    RawLine,
)
from postroom_imap.syntax import Limits as ReaderLimits
from postroom_imap.syntax_lexer import SyntaxProblem
from postroom_imap.syntax_types import Append, Authenticate, Compress, Login

log = get_logger("imap")



class State(StrEnum):
    """The connection states of RFC 3501 section 3 (a StrEnum: logs keep the plain names)."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


NOT_AUTHENTICATED = State.NOT_AUTHENTICATED
AUTHENTICATED = State.AUTHENTICATED
SELECTED = State.SELECTED
LOGOUT = State.LOGOUT

# RFC 3501 5.4: the autologout timer is at least 30 minutes
IDLE_TIMEOUT = 30 * 60.0
# while IDLE, look at the store this often even if no change event arrives (Redis is a signal)
IDLE_POLL = 60.0
FAILED_LOGIN_DELAY = 1.0
MAX_FAILED_LOGINS = 3
MAX_ERRORS = 20
# parsed commands waiting behind a running one before reading from the peer pauses (the bytes
# they hold have a budget of their own: Limits.max_held, max_preauth_held)
MAX_QUEUED = 64

# IMAP4rev2 (RFC 9051): its rules apply to a session after ENABLE IMAP4rev2 (docs/imap.md)
BASE_CAPABILITIES = ("IMAP4rev1", "IMAP4rev2", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE",
                     "NAMESPACE",
                     "UIDPLUS", "MOVE", "UNSELECT", "SPECIAL-USE", "CREATE-SPECIAL-USE",
                     "CHILDREN", "CONDSTORE", "QUOTA", "QUOTA=RES-STORAGE",
                     "QUOTA=RES-MESSAGE",
                     "MULTIAPPEND", "BINARY", "COMPRESS=DEFLATE", "CATENATE",
                     "LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE",
                     "QRESYNC",
                     "METADATA")
# imap-search (issue 18): RFC 4731, 5182, 5256, 5957
SEARCH_CAPABILITIES = ("ESEARCH", "SEARCHRES", "SORT", "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT",
                       "THREAD=REFERENCES")

_ANY = ("CAPABILITY", "NOOP", "LOGOUT", "ID")
_NOT_AUTH = ("STARTTLS", "AUTHENTICATE", "LOGIN")
_AUTH = ("SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST",
         "LSUB", "STATUS", "APPEND", "NAMESPACE", "ENABLE", "IDLE", "GETQUOTA", "GETQUOTAROOT",
         "SETQUOTA", "COMPRESS",
         "GETMETADATA", "SETMETADATA")
_SELECTED = ("CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE",
             "SORT", "THREAD")
# commands during which EXPUNGE responses must not be sent (RFC 3501 7.4.1, RFC 5256)
_NO_EXPUNGE = ("FETCH", "STORE", "SEARCH", "SORT", "THREAD")
_ALWAYS_SYNC = ("NOOP", "CHECK", "IDLE")

Reply = tuple[str, str]  # ("OK" | "NO" | "BAD", text)
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class IMAPFactory(ServerFactory):
    """Makes :class:`IMAPServer` protocols sharing accounts, TLS and limits."""

    def __init__(self, accounts: Accounts, *, hostname: str, tls: Any = None,
                 allow_plaintext_auth_on_loopback: bool = False, clock: Any = None,
                 limits: ReaderLimits | None = None, idle_timeout: float = IDLE_TIMEOUT,
                 idle_poll: float = IDLE_POLL, failed_login_delay: float = FAILED_LOGIN_DELAY,
                 max_failed_logins: int = MAX_FAILED_LOGINS, max_errors: int = MAX_ERRORS,
                 metrics: Metrics | None = None, max_connections_per_ip: int = 50) -> None:
        if clock is None:
            from twisted.internet import reactor
            clock = reactor
        self.meter = SessionMetrics(metrics, commands=_ANY + _NOT_AUTH + _AUTH + _SELECTED,
                                    mechanisms=("LOGIN", "PLAIN"))
        self.idle_sessions = imap_idle_sessions(metrics) if metrics is not None else None
        self.accounts = accounts
        self.hostname = hostname
        self.tls = tls
        self.allow_plaintext_auth_on_loopback = allow_plaintext_auth_on_loopback
        self.clock = clock
        self.limits = limits or ReaderLimits()
        self.idle_timeout = idle_timeout
        self.idle_poll = idle_poll
        self.failed_login_delay = failed_login_delay
        self.max_failed_logins = max_failed_logins
        self.max_errors = max_errors
        self.sessions: set[IMAPServer] = set()
        self.per_address = PerAddressLimit(max_connections_per_ip)

    def buildProtocol(self, addr: Any) -> Any:
        server = IMAPServer()
        server.factory = self
        return server

    def close_sessions(self) -> None:
        """Say BYE to every session (shutdown)."""
        for server in list(self.sessions):
            server.close(b"* BYE server shutting down\r\n")


class IMAPServer(MailboxCommands, MessageCommands, MetadataCommands, ListenerSession,
                 Protocol):
    """One IMAP connection."""

    factory: IMAPFactory

    def __init__(self) -> None:
        self.state: State = NOT_AUTHENTICATED
        self.tls = False
        self.peer_ip = ""
        self.session_id = secrets.token_hex(6)
        self.log = log.bind(session=self.session_id)
        self.reader: CommandReader | None = None
        self.store: UserStore | None = None
        self.selected: Selected | None = None
        self.condstore = False
        self.qresync_enabled = False
        # after ENABLE IMAP4rev2 (RFC 9051): no \\Recent, SEARCH answered with ESEARCH
        self.rev2 = False
        self.errors = 0
        self.failed_logins = 0
        self.closing = False
        self._queue: list[Event] = []
        self._queued_bytes = 0  # Command.size of the commands in _queue
        self._running_bytes = 0  # and of the one running
        self._pumping = False
        self._raw_waiter: Deferred[bytes] | None = None
        self._unwatch: Callable[[], None] | None = None
        self._idle_wakeup: Deferred[None] | None = None
        self._syncing = False
        self.deflate: Deflate | None = None  # after COMPRESS DEFLATE (RFC 4978)
        self._inflating = False
        self._inflate_call: Any = None

    # --- connection life

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.tls = is_tls(transport)
        self.peer_ip = str(getattr(transport.getPeer(), "host", ""))
        self.log = self.log.bind(peer=self.peer_ip)
        if not self.admit(self.factory.meter, "imaps" if self.tls else "imap",
                          self.factory.per_address, self.peer_ip):
            # a flood from one address must not starve everyone else (RFC 5530 UNAVAILABLE)
            self.log.warning("connection refused", reason="too many connections from address")
            self.closing = True
            transport.write(b"* BYE [UNAVAILABLE] too many connections from your address\r\n")
            transport.loseConnection()
            return
        self._no_delay(transport)
        self.reader = CommandReader(self.factory.limits)
        self.factory.sessions.add(self)
        self.log.info("session opened", tls=self.tls)
        self.write(b"* OK [CAPABILITY %s] %s Postroom IMAP4rev1 ready\r\n"
                   % (self.capabilities().encode("ascii"), self.factory.hostname.encode("utf-8")))
        self.touch()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closing = True
        self.leave()
        self.factory.sessions.discard(self)
        self._clear_queue()
        if self.reader is not None:
            self.reader.close()
        self.drop_selected()
        if self.store is not None:
            store, self.store = self.store, None
            store.close()
        if self._raw_waiter is not None:
            waiter, self._raw_waiter = self._raw_waiter, None
            waiter.errback(Failure(ConnectionError("connection lost")))
        self.log.info("session closed", state=self.state)

    @property
    def meter(self) -> SessionMetrics:
        return self.factory.meter

    @property
    def max_message_size(self) -> int:
        return self.factory.limits.max_append_literal

    def write(self, data: bytes) -> None:
        transport: Any = self.transport
        if transport is not None and not self.closing:
            if self.deflate is not None:
                data = self.deflate.compress(data)
            transport.write(data)

    def close(self, line: bytes | None = None) -> None:
        if line is not None:
            self.write(line)
        self.closing = True
        self.state = LOGOUT
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

    def touch(self) -> None:
        """Restart the autologout timer (RFC 3501 5.4)."""
        if self.closing:
            return
        self.restart_timer(self.factory.idle_timeout)

    def session_clock(self) -> Any:
        return self.factory.clock

    def session_timed_out(self) -> None:
        self.log.info("idle timeout", state=self.state)
        self.close(b"* BYE autologout; idle for too long\r\n")

    # --- capabilities and auth rules

    def login_allowed(self) -> bool:
        return self.tls or (self.factory.allow_plaintext_auth_on_loopback
                            and is_loopback(self.peer_ip))

    def capabilities(self) -> str:
        caps = list(BASE_CAPABILITIES) + list(SEARCH_CAPABILITIES)
        if self.state == NOT_AUTHENTICATED:
            if not self.tls and self.factory.tls is not None:
                caps.append("STARTTLS")
            if self.login_allowed():
                caps.append("AUTH=PLAIN")
                caps.append("AUTH=SCRAM-SHA-256")
            else:
                caps.append("LOGINDISABLED")
        return " ".join(caps)

    # --- input

    def dataReceived(self, data: bytes) -> None:
        if self.closing or self.reader is None:
            return
        self.touch()
        if self.deflate is not None:
            self.deflate.feed(data)
            self._inflate_more()
            return
        self._take(data)

    def _take(self, data: bytes) -> None:
        """Frame and queue the (decompressed) bytes the peer sent."""
        assert self.reader is not None
        try:
            events = self.reader.feed(data)
            if self.reader.in_command:
                self._ack_now()
            self._enqueue(events)
        except Exception as exc:  # a bug in framing must not leak a traceback to the peer
            self.log.exception("input handling failed", exc)
            self.close(b"* BYE internal server error\r\n")

    @staticmethod
    def _no_delay(transport: Any) -> None:
        """Send each write at once (TCP_NODELAY), as Dovecot does.

        Twisted already gathers what one reactor turn writes into one send, so
        this does not make tiny packets; without it, a reply written in two
        parts with a database round trip between them (``* OK [CLOSED]`` then
        the rest of a second SELECT, untagged data then the tagged line after a
        sync) waits for the client's delayed ACK: 40 ms on Linux, measured on
        a 100,000-message SELECT served from the cache (44 ms instead of 3).
        """
        for layer in (transport, getattr(transport, "transport", None)):
            set_no_delay = getattr(layer, "setTcpNoDelay", None)
            if set_no_delay is not None:
                try:
                    set_no_delay(True)
                    return
                except (OSError, AttributeError):
                    continue

    def _ack_now(self) -> None:
        """Acknowledge the bytes of an unfinished command at once (Linux TCP_QUICKACK).

        A client that writes a literal and then its closing CRLF as two small
        writes (Python's imaplib does, on APPEND) has the CRLF held back by
        Nagle's algorithm until the literal is acknowledged, and Linux delays
        that acknowledgement up to 40 ms: measured on loopback, APPEND took
        52 ms instead of 8. The kernel clears the option by itself, so it is
        set again whenever a command is still incomplete after a read.
        """
        transport: Any = self.transport
        for layer in (transport, getattr(transport, "transport", None)):
            handle = getattr(layer, "getHandle", None)
            sock = handle() if handle is not None else None
            if sock is not None and hasattr(sock, "setsockopt") and _QUICKACK is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                    return
                except (OSError, TypeError, AttributeError):
                    continue

    def _enqueue(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, RawLine) and self._raw_waiter is not None:
                waiter, self._raw_waiter = self._raw_waiter, None
                waiter.callback(event.data)
            else:
                if isinstance(event, Command):
                    self._queued_bytes += event.size
                self._queue.append(event)
        self._pump()

    def _clear_queue(self) -> None:
        """Drop the commands not yet run, freeing what they hold (an APPEND's temporary files)."""
        queue, self._queue = self._queue, []
        self._queued_bytes = 0
        for event in queue:
            if isinstance(event, Command) and isinstance(event.args, Append):
                event.args.close()

    @property
    def held(self) -> int:
        """Bytes this connection holds: unread input, the command being read, queued, running."""
        reader = self.reader.held if self.reader is not None else 0
        backlog = self.deflate.backlog if self.deflate is not None else 0
        return reader + backlog + self._queued_bytes + self._running_bytes

    def _should_pause(self) -> bool:
        queued = len(self._queue)
        if queued > MAX_QUEUED or (self.reading_paused and queued > MAX_QUEUED // 2):
            return True
        if not (self.command_running or queued) or self._raw_waiter is not None:
            # nothing will run and free bytes without more input (the command being read, or
            # IDLE/AUTHENTICATE waiting for a line): what is held is bounded by the per-command
            # and line limits, so reading on is both safe and necessary
            return False
        limits = self.factory.limits
        budget = limits.max_preauth_held if self.state == NOT_AUTHENTICATED else limits.max_held
        return self.held > budget

    def _flow_control(self) -> None:
        """Stop reading from the peer while too much is held; go on once commands have run."""
        if self.transport is None or self.closing:
            return
        pause = self._should_pause()
        if self.deflate is not None and self.deflate.backlog:
            # compressed input is waiting: inflate more of it (a step a turn) before reading on
            if not pause and not self._inflating and self._inflate_call is None:
                self._inflate_call = self.factory.clock.callLater(0, self._inflate_more)
            self.pause_reading()
            return
        if pause and not self.reading_paused:
            self.factory.meter.error("input_paused")
            self.log.info("reading paused", held=self.held, queued=len(self._queue))
            self.pause_reading()
        elif not pause and self.reading_paused:
            self.resume_reading()

    def _inflate_more(self) -> None:
        """Decompress what the peer sent, a bounded step at a time (RFC 4978 after COMPRESS).

        Between steps the session's byte budget is looked at, as for
        uncompressed input, so a deflate bomb is held compressed rather than
        expanded; and a turn does at most STEPS_PER_TURN steps, so other
        connections are served while one inflates.
        """
        self._inflate_call = None
        deflate = self.deflate
        if deflate is None or self.closing or self._inflating:
            return
        self._inflating = True
        try:
            for _ in range(STEPS_PER_TURN):
                if self.closing or self._should_pause():
                    break
                data = deflate.inflate()
                if deflate.broken:
                    self.factory.meter.error("compress_broken")
                    self.log.warning("invalid compressed input")
                    self.close(b"* BYE invalid compressed data\r\n")
                    return
                if not data:
                    break
                self._take(data)
        finally:
            self._inflating = False
        self._flow_control()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._queue and not self.command_running and not self.closing:
                event = self._queue.pop(0)
                if isinstance(event, Command):
                    self._queued_bytes -= event.size
                self._handle_event(event)
        finally:
            self._pumping = False
        self._flow_control()

    def _handle_event(self, event: Event) -> None:
        if isinstance(event, Command):
            self._running_bytes = event.size
            self.run_command(self._run(event))
        elif isinstance(event, NeedContinuation):
            self.write(b"+ Ready for literal data\r\n")
        elif isinstance(event, LiteralTooBig):
            self.factory.meter.error("literal_too_big")
            tag = (event.tag or "*").encode("ascii")
            self.write(b"%s NO [TOOBIG] literal of %d octets is too large\r\n" % (tag, event.size))
        elif isinstance(event, LiteralRefused):
            self.factory.meter.error("literal_" + event.why)
            self.log.info("literal refused", why=event.why, state=self.state)
            if event.status == "BAD":
                self._bad(event.tag, event.text)
            else:
                self.write(b"%s %s %s\r\n" % ((event.tag or "*").encode("ascii"),
                                              event.status.encode("ascii"),
                                              event.text.encode("utf-8")))
        elif isinstance(event, ParseError):
            if event.code == "BADCHARSET" and event.tag:
                self.write(b"%s NO [BADCHARSET (UTF-8 US-ASCII)] %s\r\n"
                           % (event.tag.encode("ascii"), event.text.encode("utf-8")))
            elif event.code == "CANNOT" and event.tag:
                # a legal command naming a mailbox that cannot be made: NO, no error spent
                self.write(b"%s NO [CANNOT] %s\r\n"
                           % (event.tag.encode("ascii"), event.text.encode("utf-8")))
            else:
                self._bad(event.tag, event.text)
        elif isinstance(event, RawLine):
            self._bad(None, "unexpected line")

    def _bad(self, tag: str | None, text: str) -> None:
        if self.spend_error(self.factory.max_errors, self.factory.meter):
            self.log.warning("too many errors", errors=self.errors)
            self.close(b"* BYE too many protocol errors\r\n")
            return
        self.write(b"%s BAD %s\r\n" % ((tag or "*").encode("ascii"),
                                      text.encode("utf-8", "replace")))

    def command_ended(self, failure: Failure | None) -> None:
        if failure is not None:
            self.log.error("command failed", error=failure.getErrorMessage(),
                           traceback=failure.getTraceback())
            self.close(b"* BYE internal server error\r\n")
        self._running_bytes = 0
        if self.reader is not None and self.reader.paused and not self.closing:
            self._enqueue(self.reader.resume())
        else:
            self._pump()

    def raw_line(self) -> Deferred[bytes]:
        """The client's next line, unparsed (SASL responses, IDLE's DONE)."""
        assert self.reader is not None
        waiter: Deferred[bytes] = Deferred()
        self._raw_waiter = waiter
        self._enqueue(self.reader.resume(raw_line=True))
        return waiter

    # --- dispatch

    def _allowed(self, name: str) -> bool:
        if name in _ANY:
            return True
        if name in _NOT_AUTH:
            return self.state == NOT_AUTHENTICATED
        if name in _AUTH:
            return self.state in (AUTHENTICATED, SELECTED)
        return self.state == SELECTED and name in _SELECTED

    async def _run(self, command: Command) -> None:
        try:
            await self._dispatch(command)
        finally:
            if isinstance(command.args, Append):
                command.args.close()  # its spooled messages are stored, or never will be

    async def _dispatch(self, command: Command) -> None:
        name = command.name
        self.factory.meter.command(name)
        known = name in _ANY or name in _NOT_AUTH or name in _AUTH or name in _SELECTED
        if not known:
            self._bad(command.tag, "command not supported")
            return
        if not self._allowed(name) and not (command.uid and self.state == SELECTED):
            self._bad(command.tag, f"{name} not allowed now")
            return
        handler: Callable[[Command], Coroutine[Any, Any, Reply | None]] = getattr(
            self, "do_" + name.lower())
        try:
            reply = await handler(command)
        except SyntaxProblem as exc:
            self._bad(command.tag, str(exc))
            return
        except Refusal as exc:
            reply = ("NO", exc.response())
        except ConnectionError:
            return
        except Exception as exc:
            self.log.exception("command failed", exc, command=name)
            reply = ("NO", "[SERVERBUG] internal server error, logged")
        # whatever the handler did not claim (e.g. an APPEND that failed half-way)
        self.absorb_own_changes(self.selected)
        if reply is None or self.closing:
            return
        if self.selected is not None and (self.selected.dirty or name in _ALWAYS_SYNC):
            await self.sync(allow_expunge=not (name in _NO_EXPUNGE and not command.uid))
        status, text = reply
        self.write(b"%s %s %s\r\n" % (command.tag.encode("ascii"), status.encode("ascii"),
                                      text.encode("utf-8")))

    # --- mailbox updates

    async def sync(self, allow_expunge: bool = True) -> None:
        """Ask the store what changed in the selected mailbox and tell the client."""
        selected, store = self.selected, self.store
        if selected is None or store is None or self._syncing:
            return
        self._syncing = True
        selected.dirty = False
        try:
            # a read-write session takes the new messages' \\Recent (only one session does)
            # (an IMAP4rev2 session has no \\Recent, so it leaves it to rev1 sessions)
            changes = await store.changes(selected.mailbox_id, selected.highestmodseq,
                                          selected.max_uid, len(selected),
                                          take_recent=selected.track_recent
                                          and not selected.readonly)
            if self.selected is selected:
                lines = selected.apply(changes, allow_expunge=allow_expunge,
                                       condstore=self.condstore)
                self.write(b"".join(lines))
        except Exception as exc:  # the next sync point tries again  # noqa: BLE001 -- any failure is logged and answered, never raised to the peer
            self.log.warning("mailbox sync failed", error=str(exc))
        finally:
            self._syncing = False

    def absorb_own_changes(self, box: Selected | None, fallback_dirty: bool = False) -> None:
        """Move ``box`` past the changes this session's command just committed.

        Each change is absorbed without a round trip when nothing else happened
        in between (``Selected.own_change``); otherwise ``box`` is marked dirty
        and the usual sync runs before the tagged reply. A store that does not
        report its changes (``take_own_changes``) gets the old rule:
        ``fallback_dirty`` marks the box dirty.
        """
        take = getattr(self.store, "take_own_changes", None)
        if take is None:
            if box is not None and fallback_dirty:
                box.dirty = True
            return
        lines: list[bytes] = []
        for change in take():
            if box is None or self.selected is not box or change.mailbox_id != box.mailbox_id:
                continue
            if change.recent_from is not None and change.uid is not None:
                box.took_recent(change.recent_from, change.uid)
            got = box.own_change(change.before, change.after, change.uid)
            if got is None:
                box.dirty = True
            else:
                lines += got
        exists = [i for i, line in enumerate(lines) if line.endswith(b" EXISTS\r\n")]
        if len(exists) > 1:
            # a MULTIAPPEND's messages: the last count says it all, as other sessions see it
            drop = set(exists[:-1])
            lines = [line for i, line in enumerate(lines) if i not in drop]
        if box is not None and self.selected is box and box.claim_pending_recent():
            # its own APPEND: this session is the first told of the messages (RFC 3501 2.3.2);
            # when the view does not have them yet, the sync that brings them claims them
            lines.append(b"* %d RECENT\r\n" % box.recent_count())
        if lines:
            self.write(b"".join(lines))

    def _changed(self, modseq: int | None = None) -> None:
        """A change event for the selected mailbox arrived (with its modseq when known)."""
        if self.selected is None:
            return
        if modseq is not None and self.selected.knows(modseq):
            return  # our own change coming back, or one a sync already showed
        self.selected.dirty = True
        if self._idle_wakeup is not None:
            wakeup, self._idle_wakeup = self._idle_wakeup, None
            wakeup.callback(None)

    def select_mailbox(self, selected: Selected) -> None:
        self.drop_selected()
        self.selected = selected
        self.state = SELECTED
        assert self.store is not None
        # known: a change committed after the view was read but announced before this
        # watch (this process's own events come without the Redis round trip) marks it dirty
        self._unwatch = self.store.watch(selected.mailbox_id, self._changed,
                                         known=selected.highestmodseq)

    def drop_selected(self) -> None:
        if self._unwatch is not None:
            unwatch, self._unwatch = self._unwatch, None
            unwatch()
        self.selected = None
        if self.state == SELECTED:
            self.state = AUTHENTICATED

    # --- commands valid in any state

    async def do_capability(self, command: Command) -> Reply:
        self.write(b"* CAPABILITY %s\r\n" % self.capabilities().encode("ascii"))
        return ("OK", "CAPABILITY completed")

    async def do_noop(self, command: Command) -> Reply:
        return ("OK", "NOOP completed")

    async def do_logout(self, command: Command) -> None:
        self.write(b"* BYE logging out\r\n%s OK LOGOUT completed\r\n"
                   % command.tag.encode("ascii"))
        self.close()

    async def do_id(self, command: Command) -> Reply:
        self.write(b'* ID ("name" "Postroom" "vendor" "Postroom")\r\n')
        return ("OK", "ID completed")

    async def do_compress(self, command: Command) -> Reply | None:
        args = command.args
        assert isinstance(args, Compress) and self.reader is not None
        if self.deflate is not None:
            return ("NO", "[COMPRESSIONACTIVE] DEFLATE active via COMPRESS")
        if args.mechanism != "DEFLATE":
            return ("BAD", "unsupported compression mechanism")
        self.write(b"%s OK DEFLATE active\r\n" % command.tag.encode("ascii"))
        # from here on both directions are compressed; what the peer sent after the
        # command (the reader paused on it) is the start of its compressed stream
        self.deflate = Deflate()
        pending = self.reader.take_pending()
        if pending:
            self.deflate.feed(pending)
        self.log.info("compression started", mechanism="DEFLATE")
        return None

    # --- not authenticated

    async def do_starttls(self, command: Command) -> Reply | None:
        assert self.reader is not None
        if self.tls or self.factory.tls is None:
            return ("BAD", "STARTTLS not available")
        # the injection guard: plaintext pipelined after STARTTLS is never executed
        dropped = self.reader.discard_pending()
        if dropped:
            self.log.warning("plaintext after STARTTLS discarded", octets=dropped)
        self._clear_queue()
        self.write(b"%s OK Begin TLS negotiation now\r\n" % command.tag.encode("ascii"))
        self.transport.startTLS(self.factory.tls)  # type: ignore[union-attr]
        self.tls = True
        self.log.info("tls started")
        return None

    async def _login(self, username: str, password: str, mechanism: str = "LOGIN",
                     verified: bool | None = None) -> Reply:
        """Log in with a password, or (``verified`` not None) after a SCRAM exchange."""
        accounts = self.factory.accounts
        try:
            if verified is None:
                store = await accounts.login(username, password, self.peer_ip)
            else:
                store = await accounts.login_verified(username, verified, self.peer_ip)
        except AuthFailed as exc:
            self.factory.meter.auth_failed(mechanism)
            self.failed_logins += 1
            self.log.info("login failed", user=username, failures=self.failed_logins)
            if self.factory.failed_login_delay > 0:
                await deferLater(self.factory.clock, self.factory.failed_login_delay,
                                 lambda: None)
            if self.failed_logins >= self.factory.max_failed_logins:
                self.close(b"* BYE too many failed logins\r\n")
                return ("NO", exc.response())
            return ("NO", exc.response())
        if self.closing:
            store.close()
            return ("NO", "connection closing")
        self.store = store
        self.state = AUTHENTICATED
        if self.reader is not None:
            self.reader.authenticated = True  # literals now get the logged-in limits
        self.log = self.log.bind(user=store.address)
        self.log.info("login", user=store.address, tls=self.tls)
        return ("OK", f"[CAPABILITY {self.capabilities()}] logged in")

    async def do_login(self, command: Command) -> Reply:
        if not self.login_allowed():
            return ("NO", "[PRIVACYREQUIRED] LOGIN needs TLS; use STARTTLS first")
        args = command.args
        assert isinstance(args, Login)
        return await self._login(args.user, args.password)

    async def do_authenticate(self, command: Command) -> Reply:
        args = command.args
        assert isinstance(args, Authenticate)
        if not self.login_allowed():
            return ("NO", "[PRIVACYREQUIRED] AUTHENTICATE needs TLS; use STARTTLS first")
        if args.mechanism not in ("PLAIN", "SCRAM-SHA-256"):
            return ("NO", "unsupported mechanism")
        mechanism = sasl.new_mechanism(args.mechanism)
        try:
            if args.initial is not None:
                step = mechanism.start(sasl.decode_response(args.initial))
            else:
                step = mechanism.start(None)
            while isinstance(step, sasl.Challenge | sasl.NeedSecrets):
                if isinstance(step, sasl.NeedSecrets):
                    found = await self.factory.accounts.scram_secrets(step.username,
                                                                      self.peer_ip)
                    step = mechanism.provide_secrets(found)
                    continue
                self.write(b"+ " + sasl.encode_challenge(step.data).encode("ascii") + b"\r\n")
                line = await self.raw_line()
                if line.strip() == b"*":
                    return ("BAD", "authentication cancelled")
                step = mechanism.respond(sasl.decode_response(line))
        except sasl.SASLMalformed as exc:
            return ("BAD", f"malformed SASL response: {exc}")
        if isinstance(step, sasl.Outcome) and isinstance(step.credentials,
                                                          sasl.VerifiedCredentials):
            scram = step.credentials
            if scram.verified and scram.authzid and scram.authzid != scram.username:
                return ("NO", "[AUTHORIZATIONFAILED] cannot act as another user")
            return await self._login(scram.username, "", scram.mechanism, scram.verified)
        if not isinstance(step, sasl.Outcome) or not isinstance(
                step.credentials, sasl.PasswordCredentials):
            return ("NO", "unsupported mechanism")
        credentials = step.credentials
        if credentials.authzid and credentials.authzid != credentials.username:
            return ("NO", "[AUTHORIZATIONFAILED] cannot act as another user")
        return await self._login(credentials.username, credentials.password, "PLAIN")

    # --- IDLE (RFC 2177)

    async def do_idle(self, command: Command) -> Reply:
        gauge = self.factory.idle_sessions
        if gauge is not None:
            gauge.inc()
        try:
            return await self._idle(command)
        finally:
            if gauge is not None:
                gauge.dec()

    async def _idle(self, command: Command) -> Reply:
        self.write(b"+ idling\r\n")
        done = self.raw_line()
        finished: list[bytes] = []

        def ended(result: bytes | Failure) -> None:
            finished.append(result if isinstance(result, bytes) else b"")
            self._wake_idle()

        done.addBoth(ended)
        if self.selected is not None:
            await self.sync()
        while not finished and not self.closing:
            wakeup: Deferred[None] = Deferred()
            self._idle_wakeup = wakeup
            poll = self.factory.clock.callLater(self.factory.idle_poll, self._changed_poll)
            await wakeup
            if poll.active():
                poll.cancel()
            if not finished and self.selected is not None:
                await self.sync()
        self._idle_wakeup = None
        if self.closing:
            return ("BAD", "closing")
        if finished[0].strip().upper() != b"DONE":
            return ("BAD", "expected DONE")
        return ("OK", "IDLE terminated")

    def _changed_poll(self) -> None:
        if self.selected is not None:
            self.selected.dirty = True
        self._wake_idle()

    def _wake_idle(self) -> None:
        if self._idle_wakeup is not None:
            wakeup, self._idle_wakeup = self._idle_wakeup, None
            wakeup.callback(None)
