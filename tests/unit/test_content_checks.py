"""The one content-check framework (ContentChecks): entries, the pooled attachment check, folding.

The pool and the reactor here run work at once on the calling thread, so a
Deferred that is fired when ``run`` returns proves the answer never waited
for another thread or a later reactor turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from postroom_dmarc import dkimcheck, spfcheck
from postroom_dmarc.content import ContentResult
from postroom_dmarc.content.attachments import AttachmentCheck, Policy
from postroom_dmarc.content.checks import ContentChecks, PooledCheck
from postroom_dmarc.verdict import CheckRequest, DMARCResult, Verdict, with_content

PLAIN = b"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
EXE = (b"From: a@example.org\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
       b"Content-Type: text/plain\r\n\r\nhi\r\n--B\r\n"
       b"Content-Type: application/octet-stream\r\n"
       b"Content-Disposition: attachment; filename=\"tool.exe\"\r\n"
       b"Content-Transfer-Encoding: base64\r\n\r\neA==\r\n--B--\r\n")


class InlineReactor(Clock):
    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        f(*args, **kw)


class CountingPool:
    """A ThreadPool stand-in that runs each call at once and counts them."""

    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(self, on_result: Callable[..., Any],
                                 f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.calls += 1
        try:
            result = f(*args, **kw)
        except Exception as exc:
            on_result(False, exc)
        else:
            on_result(True, result)


def request(message: bytes) -> CheckRequest:
    return CheckRequest("192.0.2.1", "h", "a@example.org", ("b@example.net",), message, "Q1")


def verdict(disposition: str = "inbox") -> Verdict:
    return Verdict(spfcheck.SPFResult("pass", "mailfrom", "example.org", "a@example.org", ""),
                   None, [], dkimcheck.ARCResult("none", ""),
                   DMARCResult("pass", "example.org"), disposition, "", "x")


def run(checks: ContentChecks, message: bytes) -> defer.Deferred[list[ContentResult]]:
    return defer.Deferred.fromCoroutine(checks.run(request(message), verdict()))


def pooled() -> tuple[ContentChecks, CountingPool]:
    pool = CountingPool()
    entry = PooledCheck(AttachmentCheck(Policy()), pool, InlineReactor(),  # type: ignore[arg-type]
                        deadline=5.0)
    return ContentChecks(extra=[entry]), pool


def test_a_plain_message_is_answered_inline_without_the_pool() -> None:
    checks, pool = pooled()
    d = run(checks, PLAIN)
    assert d.called and pool.calls == 0
    [result] = d.result
    assert (result.check, result.action) == ("attachments", "accept")


def test_an_attachment_is_judged_in_the_pool() -> None:
    checks, pool = pooled()
    d = run(checks, EXE)
    assert d.called and pool.calls == 1
    assert d.result[0].action == "reject" and "tool.exe" in d.result[0].reason


def test_an_entry_that_raises_or_fails_is_a_tempfail_never_a_pass() -> None:
    def raises(_r: CheckRequest) -> ContentResult:
        raise RuntimeError("boom")

    def fails(_r: CheckRequest) -> defer.Deferred[ContentResult]:
        return defer.fail(ConnectionRefusedError())

    raises.name = "first"  # type: ignore[attr-defined]
    fails.name = "second"  # type: ignore[attr-defined]
    d = run(ContentChecks(extra=[raises, fails]), PLAIN)
    assert [(r.check, r.action) for r in d.result] == [("first", "tempfail"),
                                                        ("second", "tempfail")]


def test_a_late_entry_is_awaited_and_the_strictest_wins() -> None:
    late: defer.Deferred[ContentResult] = defer.Deferred()
    spam = ContentResult("rspamd", "quarantine", "spam", [("X-Spam-Status", "Yes")])
    checks = ContentChecks(extra=[lambda _r: ContentResult("attachments", "accept"),
                                  lambda _r: late])
    d = run(checks, PLAIN)
    assert not d.called
    late.callback(spam)
    decided = with_content(verdict(), d.result)
    assert (decided.disposition, decided.reason, decided.decided_by) == ("junk", "spam", "rspamd")
    body = decided.to_json()
    assert body["headers"] == [["X-Spam-Status", "Yes"]] and body["decided_by"] == "rspamd"
    assert [c["check"] for c in body["content"]] == ["attachments", "rspamd"]


def test_content_never_loosens_dmarcs_disposition() -> None:
    decided = with_content(verdict("junk"), [ContentResult("rspamd", "accept")])
    assert (decided.disposition, decided.decided_by) == ("junk", None)
    virus = with_content(verdict("junk"), [ContentResult("clamd", "reject", "virus found: X")])
    assert (virus.disposition, virus.reason, virus.decided_by) == (
        "reject", "virus found: X", "clamd")
