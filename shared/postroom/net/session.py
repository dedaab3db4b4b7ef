"""The session base every listener's protocol shares: admission, idle timer, error budget, pausing.

SMTP (:mod:`postroom.smtp.server`), IMAP and POP3 each mix
:class:`ListenerSession` into their Twisted protocol, so that the rules a
hostile peer meets first are written once:

* admission: the connection is counted in ``postroom_connections_total`` /
  ``_open`` under its ``listener`` label, then against the per-client limit
  (:class:`~postroom.net.connlimit.PerAddressLimit`); a refusal is counted as
  ``postroom_errors_total{kind="too_many_connections"}``. :meth:`leave`
  undoes both exactly once, whatever order the close happens in.
* the idle timer is Twisted's :class:`~twisted.protocols.policies.TimeoutMixin`
  running on the session's ``clock`` (a test's ``Clock``, or the reactor);
  :meth:`restart_timer` reuses the pending call (one ``reset`` per line
  rather than a cancel and a new call).
* the error budget: :meth:`spend_error` counts a protocol error and says when
  the budget is spent (``postroom_errors_total{kind="too_many_errors"}``); the
  protocol says goodbye in its own words.
* one command at a time: :meth:`run_command` runs one command's ``async def``
  handler and calls the protocol's :meth:`command_ended` when it ends;
  while :attr:`command_running` the protocol leaves the next command where
  its framing holds it (SMTP in LineReceiver's buffer, because DATA and BDAT
  turn what follows into raw bytes; IMAP as parsed events; POP3 as bytes).
* pausing: :meth:`pause_reading` / :meth:`resume_reading` stop and restart
  reading from the peer (once each, never on a transport already going away)
  while the protocol's one-command-at-a-time queue holds too much.

The protocol keeps what differs on the wire: its replies, its framing, and
when it decides to pause.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from postroom.metrics import SessionMetrics
from postroom.net.connlimit import PerAddressLimit


class ListenerSession(TimeoutMixin):
    """Mixed into a listener's protocol (before the Twisted base class)."""

    # zope interfaces are opaque to mypy; the protocol's TCP or TLS transport
    transport: Any
    # whatever the protocol logs with (postroom.logs bound logger)
    log: Any
    # protocol errors counted so far against the budget
    errors: int = 0
    _session_meter: SessionMetrics | None = None
    _session_listener: str | None = None
    _session_limit: PerAddressLimit | None = None
    _session_address: str = ""
    _reading_paused: bool = False
    _command_running: bool = False

    # --- admission: connection metrics and the per-client limit

    def admit(self, meter: SessionMetrics, listener: str, limit: PerAddressLimit | None,
              address: str) -> bool:
        """Count this connection; False (counted as a refusal) when ``address`` is over ``limit``.

        ``limit`` None means no per-client limit. Call :meth:`leave` from
        ``connectionLost`` whatever this returned.
        """
        meter.opened(listener)
        self._session_meter = meter
        self._session_listener = listener
        if limit is not None:
            if not limit.acquire(address):
                meter.error("too_many_connections")
                return False
            self._session_limit = limit
            self._session_address = address
        return True

    def leave(self) -> None:
        """Undo :meth:`admit` (idempotent) and stop the idle timer."""
        self.setTimeout(None)
        if self._session_meter is not None and self._session_listener is not None:
            listener, self._session_listener = self._session_listener, None
            self._session_meter.closed(listener)
        if self._session_limit is not None:
            limit, self._session_limit = self._session_limit, None
            limit.release(self._session_address)

    # --- the idle timer (TimeoutMixin on the session's clock)

    def session_clock(self) -> Any:
        """The clock timers run on (an IReactorTime): the factory's, or a test's ``Clock``."""
        raise NotImplementedError

    def callLater(self, period: float, func: Callable[[], None]) -> IDelayedCall:
        # TimeoutMixin's hook: the session's clock rather than the global reactor
        return self.session_clock().callLater(period, func)

    def restart_timer(self, period: float) -> None:
        """Fire :meth:`session_timed_out` after ``period`` seconds without a restart."""
        # TimeoutMixin resets the pending call when there is one, else makes a new one
        self.setTimeout(period)

    def stop_timer(self) -> None:
        self.setTimeout(None)

    def timeoutConnection(self) -> None:
        # TimeoutMixin calls this once its call fired; it is no longer armed
        self.timeOut = None
        self.session_timed_out()

    def session_timed_out(self) -> None:
        """The idle timer fired: the protocol says why and closes (or re-arms)."""
        raise NotImplementedError

    # --- the error budget

    def spend_error(self, budget: int, meter: SessionMetrics) -> bool:
        """Count one protocol error; True when ``budget`` errors are spent (the caller closes)."""
        self.errors += 1
        if self.errors >= budget:
            meter.error("too_many_errors")
            return True
        return False

    # --- one command at a time

    @property
    def command_running(self) -> bool:
        """A handler started by :meth:`run_command` has not ended yet: the next command waits."""
        return self._command_running

    def run_command(self, handler: Coroutine[Any, Any, Any]) -> None:
        """Run one command's handler; :meth:`command_ended` follows when it ends.

        The first step is taken here: a handler that never waits (most
        replies, and collaborators that answer at once) ends inside this call
        at the cost of the coroutine alone (Deferred.fromCoroutine would add
        about 5 us a command on every listener's hot path). One that waits is
        handed to Deferred.fromCoroutine, which resumes it when the awaited
        Deferred fires (a Deferred ignores what it is sent and yields its own
        result).
        """
        self._command_running = True
        try:
            handler.send(None)
        except StopIteration:
            self._command_ended(None)
            return
        except Exception:  # noqa: BLE001 (the protocol's command_ended reports it)
            self._command_ended(Failure())
            return
        Deferred.fromCoroutine(handler).addBoth(self._command_ended)

    def _command_ended(self, result: Any) -> None:
        self._command_running = False
        self.command_ended(result if isinstance(result, Failure) else None)

    def command_ended(self, failure: Failure | None) -> None:
        """The running handler ended (``failure`` if it raised): report, take the next command."""
        raise NotImplementedError

    # --- reading from the peer while the command queue is full

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    def pause_reading(self) -> None:
        """Stop reading from the peer (once); bytes already received stay queued."""
        if self._reading_paused:
            return
        self._reading_paused = True
        transport = self.transport
        pause = getattr(transport, "pauseProducing", None)
        if pause is not None and not getattr(transport, "disconnecting", False):
            pause()

    def resume_reading(self) -> None:
        """Read from the peer again after :meth:`pause_reading`."""
        if not self._reading_paused:
            return
        self._reading_paused = False
        transport = self.transport
        resume = getattr(transport, "resumeProducing", None)
        if resume is not None and not getattr(transport, "disconnecting", False):
            resume()
