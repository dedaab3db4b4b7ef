"""Spam scoring with rspamd over its HTTP protocol (``POST /checkv2``), and its learning calls.

The client sends the message with the envelope, client IP, HELO,
authenticated user and queue id as request headers, and our own SPF, DKIM and
DMARC results in the ``SPF``/``DKIM``/``DMARC`` headers read by rspamd's
``http_headers`` module, so rspamd does not look them up again. rspamd's
action becomes our action: ``reject`` -> reject (554 5.7.1), ``add header`` /
``rewrite subject`` -> quarantine (Junk), ``greylist`` / ``soft reject`` ->
tempfail (451), ``no action`` -> accept. Its result goes into the stored
message as ``X-Spamd-Result``, ``X-Spam-Score`` and ``X-Spam-Status``.

When rspamd cannot be asked (refused, timeout, a bad answer) the result is
tempfail, or accept with ``X-Spam-Status: Unknown`` when the operator chose
``POSTROOM_RSPAMD_FAIL_OPEN``. Learning (:meth:`RspamdClient.learn`) talks to
the controller; rspamd's "already learned" counts as done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram
from twisted.internet import defer

from postroom.logs import get_logger
from postroom.metrics import Metrics
from postroom_dmarc.content import ContentResult
from postroom_dmarc.content.httpclient import PostClient

log = get_logger("rspamd")

CHECK = "rspamd"
ACTION_MAP = {
    "reject": "reject",
    "add header": "quarantine",
    "rewrite subject": "quarantine",
    "greylist": "tempfail",
    "soft reject": "tempfail",
    "no action": "accept",
}
MAX_SYMBOLS_IN_HEADER = 60
# an answer with a few hundred symbols and their options is tens of KiB
MAX_ANSWER = 1024 * 1024


class RspamdError(Exception):
    """rspamd gave no usable answer."""


@dataclass(frozen=True)
class ScanRequest:
    """What rspamd is told about one message besides its bytes."""

    message: bytes
    queue_id: str | None = None
    client_ip: str = ""
    helo: str = ""
    mail_from: str = ""
    recipients: Sequence[str] = ()
    user: str = ""  # the authenticated submitter, if any
    spf: str | None = None  # our results: pass, fail, softfail, neutral, none, temperror...
    dkim: Sequence[tuple[str, str]] = ()  # (result, domain)
    dmarc: str | None = None  # pass, none, temperror, permerror, or the applied policy on fail
    extra: Mapping[str, str] = field(default_factory=dict)


_SPF = {"pass": "pass", "fail": "fail", "softfail": "softfail", "neutral": "neutral",
        "none": "na", "temperror": "tempfail", "permerror": "permfail"}
_DKIM = {"pass": "pass", "fail": "fail", "temperror": "tempfail", "permerror": "permfail",
         "none": "na", "neutral": "na", "policy": "fail"}
_DMARC = {"pass": "pass", "none": "na", "temperror": "tempfail", "permerror": "permfail",
          "reject": "reject", "quarantine": "quarantine", "fail": "softfail"}


def _clean(value: str, limit: int = 512) -> str:
    """One header line: no control characters (a peer's HELO must not add request headers)."""
    return "".join(c if c.isprintable() else "?" for c in value)[:limit]


def request_headers(scan: ScanRequest, password: str | None) -> dict[str, str]:
    """The /checkv2 request headers (rspamd protocol) for ``scan``."""
    headers: dict[str, str] = {}
    if scan.queue_id:
        headers["Queue-Id"] = _clean(scan.queue_id)
    if scan.client_ip:
        headers["IP"] = _clean(scan.client_ip)
    if scan.helo:
        headers["Helo"] = _clean(scan.helo)
    # the envelope sender; rspamd reads an empty From as the null reverse-path
    headers["From"] = _clean(scan.mail_from) if scan.mail_from else "<>"
    if scan.user:
        headers["User"] = _clean(scan.user)
    if password:
        headers["Password"] = password
    if scan.spf is not None:
        headers["SPF"] = json.dumps({"result": _SPF.get(scan.spf, "na")})
    if scan.dkim:
        headers["DKIM"] = json.dumps({"results": [
            {"result": _DKIM.get(result, "na"), "domain": _clean(domain, 255)}
            for result, domain in scan.dkim[:20]]})
    if scan.dmarc is not None:
        headers["DMARC"] = json.dumps({"result": _DMARC.get(scan.dmarc, "na")})
    for name, value in scan.extra.items():
        headers[name] = _clean(value)
    return headers


def rcpt_headers(recipients: Sequence[str]) -> list[str]:
    """Each recipient as its own ``Rcpt`` value (rspamd takes the header repeated)."""
    return [_clean(r) for r in recipients[:100]]


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RspamdError("score is not a number")
    return float(value)


def parse_answer(body: bytes) -> tuple[str, float, float, list[tuple[str, float]]]:
    """(action, score, required score, symbols by score) from a /checkv2 answer; RspamdError."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RspamdError("answer is not JSON") from exc
    if not isinstance(data, dict):
        raise RspamdError("answer is not a JSON object")
    action = data.get("action")
    if not isinstance(action, str) or action not in ACTION_MAP:
        raise RspamdError(f"unknown action {str(action)[:40]!r}")
    score = _number(data.get("score", 0))
    required = _number(data.get("required_score", 0))
    symbols = []
    raw = data.get("symbols")
    if isinstance(raw, dict):
        for name, sym in raw.items():
            if isinstance(name, str) and isinstance(sym, dict):
                sym_score = sym.get("score", 0)
                if isinstance(sym_score, int | float) and not isinstance(sym_score, bool):
                    symbols.append((_clean(name, 64), float(sym_score)))
    symbols.sort(key=lambda s: (-abs(s[1]), s[0]))
    return action, score, required, symbols


def result_headers(action: str, score: float, required: float,
                   symbols: Sequence[tuple[str, float]]) -> list[tuple[str, str]]:
    """X-Spamd-Result (folded with ``\\n`` between symbols), X-Spam-Score, X-Spam-Status."""
    spam = ACTION_MAP[action] != "accept"
    shown = [f"{name}({value:.2f})" for name, value in symbols[:MAX_SYMBOLS_IN_HEADER]]
    result = f"default: {spam} [{score:.2f} / {required:.2f}]"
    if shown:
        result += ";\n" + ";\n".join(shown)
    status = f"{'Yes' if spam else 'No'}, score={score:.2f} required={required:.2f}"
    return [("X-Spamd-Result", result), ("X-Spam-Score", f"{score:.2f}"),
            ("X-Spam-Status", status)]


class RspamdMetrics:
    """rspamd's metrics: latency, errors by kind, learning (results: ContentChecks counts them)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.latency: Histogram | None = None
        self.errors: Counter | None = None
        self.learned: Counter | None = None
        if metrics is None:
            return
        self.latency = metrics.histogram(
            "content_scan_seconds", "Time a content scanner took per message.", ["scanner"])
        self.errors = metrics.counter(
            "content_scan_errors", "Content scans that failed, by scanner and kind.",
            ["scanner", "kind"])
        self.learned = metrics.counter(
            "rspamd_learned", "Messages submitted to rspamd's learning, by class and outcome.",
            ["klass", "outcome"])


class RspamdClient:
    """Scans messages with rspamd's normal worker; learns through its controller."""

    def __init__(self, url: str, *, reactor: Any, timeout: float = 15.0,
                 password: str | None = None, fail_open: bool = False,
                 controller_url: str | None = None, metrics: Metrics | None = None,
                 http: PostClient | None = None) -> None:
        self.url = url.rstrip("/")
        self.controller_url = (controller_url or "").rstrip("/") or None
        self.timeout = timeout
        self.password = password
        self.fail_open = fail_open
        self.http = http or PostClient(reactor, max_answer=MAX_ANSWER)
        self.metrics = RspamdMetrics(metrics)

    async def check(self, scan: ScanRequest) -> ContentResult:
        """rspamd's opinion of one message; never raises (see the module docstring)."""
        headers = request_headers(scan, self.password)
        started = time.monotonic()
        try:
            status, body = await self._post(self.url + "/checkv2", scan.message, headers,
                                             rcpt_headers(scan.recipients))
            if status != 200:
                raise RspamdError(f"rspamd answered HTTP {status}")
            action, score, required, symbols = parse_answer(body)
        except Exception as exc:  # noqa: BLE001 - any failure is "not scanned"
            return self._unavailable(scan, exc, time.monotonic() - started)
        elapsed = time.monotonic() - started
        ours = ACTION_MAP[action]
        reason = "" if ours == "accept" else \
            f"spam score {score:.2f} (rspamd action: {action})"
        result = ContentResult(
            CHECK, ours, reason, result_headers(action, score, required, symbols),
            {"rspamd_action": action, "score": round(score, 2),
             "required_score": round(required, 2),
             "category": "clean" if ours == "accept" else "spam",
             "symbols": [name for name, _ in symbols[:20]]})
        self._observe(result, elapsed)
        log.info("rspamd verdict", queue_id=scan.queue_id, action=ours, rspamd_action=action,
                 score=round(score, 2), required_score=round(required, 2),
                 elapsed=round(elapsed, 4))
        return result

    def _unavailable(self, scan: ScanRequest, exc: Exception, elapsed: float) -> ContentResult:
        timed_out = isinstance(exc, defer.TimeoutError | defer.CancelledError)
        kind = "timeout" if timed_out else (
            "bad_answer" if isinstance(exc, RspamdError) else "unreachable")
        error = f"no answer within {self.timeout:g}s" if timed_out else \
            (str(exc) or type(exc).__name__)[:200]
        if self.metrics.errors is not None:
            self.metrics.errors.labels(scanner=CHECK, kind=kind).inc()
        if self.fail_open:
            result = ContentResult(CHECK, "accept", "", [("X-Spam-Status", "Unknown")],
                                   {"error": error, "fail_open": True, "category": "error"})
        else:
            result = ContentResult(CHECK, "tempfail", "spam scanner unavailable",
                                   details={"error": error, "category": "error"})
        self._observe(result, elapsed)
        log.warning("rspamd scan failed", queue_id=scan.queue_id, error=error, kind=kind,
                    action=result.action, fail_open=self.fail_open)
        return result

    def _observe(self, result: ContentResult, elapsed: float) -> None:
        if self.metrics.latency is not None:
            self.metrics.latency.labels(scanner=CHECK).observe(elapsed)

    async def _post(self, url: str, body: bytes, headers: dict[str, str],
                    rcpts: list[str]) -> tuple[int, bytes]:
        if rcpts:
            # the Headers API takes one value per name from a dict; rspamd reads repeated Rcpt
            # headers or a comma-separated list alike
            headers = {**headers, "Rcpt": ",".join(rcpts)}
        return await self.http.post(url, body, headers, self.timeout)

    async def learn(self, message: bytes, klass: str, *, queue_id: str | None = None) -> str:
        """Teach the controller ``klass`` (spam or ham): "learned" or "already"; raises else."""
        if klass not in ("spam", "ham"):
            raise ValueError(f"unknown class {klass!r}")
        if self.controller_url is None:
            raise RspamdError("no rspamd controller configured")
        headers = {"Password": self.password} if self.password else {}
        status, body = await self.http.post(f"{self.controller_url}/learn{klass}", message,
                                            headers, self.timeout)
        text = body[:2000].decode("utf-8", "replace").lower()
        if status == 208 or "already learned" in text or "already been learned" in text:
            outcome = "already"
        elif status == 200:
            outcome = "learned"
        else:
            if self.metrics.learned is not None:
                self.metrics.learned.labels(klass=klass, outcome="error").inc()
            raise RspamdError(f"rspamd learn{klass} answered HTTP {status}: {text[:200]}")
        if self.metrics.learned is not None:
            self.metrics.learned.labels(klass=klass, outcome=outcome).inc()
        log.info("rspamd learned", queue_id=queue_id, klass=klass, outcome=outcome)
        return outcome

    def close(self) -> defer.Deferred[Any]:
        return self.http.close()
