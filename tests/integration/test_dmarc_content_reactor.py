"""The content checks keep a cached verdict on the reactor (issue 17, after the cf-scan merge).

With the attachment policy on (an entry of ContentChecks through PooledCheck)
and the sender's DNS answers cached, a plain message is answered within
``render_POST`` itself: no thread of the `policy` pool is used. A message with
an attachment is judged in the pool; one DMARC rejects is not scanned.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from io import BytesIO
from typing import Any

from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from postroom_dmarc.api import CheckResource
from postroom_dmarc.content.attachments import AttachmentCheck, Policy
from postroom_dmarc.content.checks import ContentChecks, PooledCheck
from postroom_dmarc.verdict import CheckRequest, Options, evaluate

GOOD_IP, BAD_IP = "192.0.2.10", "198.51.100.1"
PLAIN = (b"From: Alice <alice@example.com>\r\nTo: bob@receiver.test\r\nSubject: hi\r\n"
         b"Message-ID: <1@example.com>\r\n\r\nHi Bob.\r\n")
EXE = (b"From: Alice <alice@example.com>\r\nTo: bob@receiver.test\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
       b"Content-Type: text/plain\r\n\r\nhi\r\n--B\r\n"
       b"Content-Type: application/octet-stream\r\n"
       b"Content-Disposition: attachment; filename=\"tool.exe\"\r\n"
       b"Content-Transfer-Encoding: base64\r\n\r\neA==\r\n--B--\r\n")


class InlineReactor(Clock):
    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        f(*args, **kw)


class CountingPool:
    """Runs each call at once, counting them: zero calls means the reactor answered alone."""

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


def post(resource: CheckResource, message: bytes, ip: str = GOOD_IP) -> DummyRequest:
    request = DummyRequest([b"v1", b"check"])
    request.method = b"POST"
    request.content = BytesIO(json.dumps({
        "client_ip": ip, "helo": "mail.example.com", "mail_from": "b@example.com",
        "recipients": ["bob@receiver.test"], "queue_id": "QR1",
        "message_b64": base64.b64encode(message).decode()}).encode())
    resource.render_POST(request)  # type: ignore[arg-type]
    return request


def body(request: DummyRequest) -> dict[str, Any]:
    assert request.finished, "not answered within render_POST"
    return json.loads(b"".join(request.written))


def test_cached_plain_message_stays_on_the_reactor(dns_server):
    dns_server.set_records("example.com", "TXT", [f"v=spf1 ip4:{GOOD_IP} -all"], ttl=300)
    dns_server.set_records("mail.example.com", "TXT", [f"v=spf1 ip4:{GOOD_IP} -all"], ttl=300)
    dns_server.set_records("_dmarc.example.com", "TXT", ["v=DMARC1; p=reject"], ttl=300)
    resolver = dns_server.resolver()
    options = Options(authserv_id="mx.receiver.test", sampler=lambda: 0.0)
    for ip in (GOOD_IP, BAD_IP):  # warm the cache for both senders
        evaluate(CheckRequest(ip, "mail.example.com", "b@example.com", ("bob@receiver.test",),
                              PLAIN, "W"), resolver, options)
    reactor, pool = InlineReactor(), CountingPool()
    checks = ContentChecks(extra=[PooledCheck(AttachmentCheck(Policy()), pool,  # type: ignore[arg-type]
                                              reactor, deadline=5.0)])
    resource = CheckResource(resolver, options, pool, reactor,  # type: ignore[arg-type]
                             max_inflight=4, deadline=5.0, content=checks)

    plain = body(post(resource, PLAIN))
    assert plain["disposition"] == "inbox" and pool.calls == 0, plain
    assert [(c["check"], c["action"]) for c in plain["content"]] == [("attachments", "accept")]

    exe = body(post(resource, EXE))
    assert exe["disposition"] == "reject" and exe["decided_by"] == "attachments", exe
    assert pool.calls == 1  # judged in the policy pool

    spoofed = body(post(resource, EXE, ip=BAD_IP))
    assert spoofed["disposition"] == "reject" and "content" not in spoofed, spoofed
    assert pool.calls == 1  # DMARC rejects it: not scanned
