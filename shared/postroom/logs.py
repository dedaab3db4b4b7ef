"""Structured logs: one JSON object per line on stdout, Twisted's own events included.

Every line has ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``service``
and ``event`` (a constant message), then the event's fields such as
``queue_id``, ``session`` and ``peer``. Code never builds messages by string
concatenation: ``log.info("message accepted", queue_id=qid, size=n)``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    LogLevel,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import provider

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

_TWISTED_LEVELS = {
    LogLevel.debug: "debug",
    LogLevel.info: "info",
    LogLevel.warn: "warning",
    LogLevel.error: "error",
    LogLevel.critical: "critical",
}


class _Sink:
    """Where lines go; shared by every Logger of the process."""

    def __init__(self) -> None:
        self.service = "postroom"
        self.threshold = LEVELS["info"]
        self.stream: IO[str] = sys.stdout
        self.lock = threading.Lock()

    def emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if LEVELS[level] < self.threshold:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        record: dict[str, Any] = {
            "ts": f"{stamp}.{int(now % 1 * 1000):03d}Z",
            "level": level,
            "service": self.service,
            "event": event,
        }
        for key, value in fields.items():
            if value is not None and key not in record:
                record[key] = value
        line = json.dumps(record, default=_jsonable, ensure_ascii=False, separators=(",", ":"))
        with self.lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                # stdout closed (our supervisor went away): logging must never kill a service
                pass


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


_sink = _Sink()


class Logger:
    """A component's logger: ``log.info("event", key=value, ...)``; bound fields ride along."""

    def __init__(self, component: str | None = None, **bound: Any) -> None:
        self._bound = dict(bound)
        if component:
            self._bound.setdefault("component", component)

    def bind(self, **fields: Any) -> Logger:
        """A logger that adds ``fields`` to every event (e.g. ``session``, ``peer``)."""
        child = Logger()
        child._bound = {**self._bound, **fields}
        return child

    def log(self, level: str, event: str, **fields: Any) -> None:
        _sink.emit(level, event, {**self._bound, **fields})

    def debug(self, event: str, **fields: Any) -> None:
        if _sink.threshold <= LEVELS["debug"]:
            self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, **fields)

    def exception(self, event: str, exc: BaseException | None = None, **fields: Any) -> None:
        """Log an unexpected failure with its traceback as a field (never sent to a peer)."""
        if exc is None:
            exc = sys.exc_info()[1]
        if exc is not None:
            fields["error"] = f"{type(exc).__name__}: {exc}"
            fields["traceback"] = "".join(traceback.format_exception(exc)).rstrip()
        self.log("error", event, **fields)


def get_logger(component: str | None = None, **bound: Any) -> Logger:
    return Logger(component, **bound)


@provider(ILogObserver)
def _twisted_observer(event: dict[str, Any]) -> None:
    level = _TWISTED_LEVELS.get(event.get("log_level", LogLevel.info), "info")
    if "log_failure" in event:
        level = "error"
    fields: dict[str, Any] = {"component": event.get("log_namespace", "twisted")}
    # our own structured fields pass through; Twisted's bookkeeping keys do not
    for key, value in event.items():
        if not key.startswith("log_") and key not in ("format", "message", "isError", "system",
                                                        "time", "printed", "why", "failure"):
            if isinstance(value, (str, int, float, bool)):
                fields[key] = value
    text = formatEvent(event) if event.get("log_format") or event.get("message") else ""
    failure = event.get("log_failure")
    if failure is not None:
        fields["traceback"] = failure.getTraceback().rstrip()
    _sink.emit(level, text or "twisted event", fields)


_configured = False


def configure(service: str, level: str = "info", stream: IO[str] | None = None) -> None:
    """Set this process's service name and level, and route Twisted's log events here."""
    global _configured
    _sink.service = service
    _sink.threshold = LEVELS[level]
    if stream is not None:
        _sink.stream = stream
    if not _configured:
        _configured = True
        globalLogBeginner.beginLoggingTo([_twisted_observer], redirectStandardIO=False,
                                         discardBuffer=True)
