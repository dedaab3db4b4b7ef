"""The mta's HTTP client of the dmarc service: requests, answers, reuse, retries, deadlines.

The end-to-end tests run it against the real dmarc service on loopback; these
drive its connection state machine byte by byte with a fake endpoint and clock.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from postroom_mta.dmarcclient import DMARCClient

VERDICT = json.dumps({"disposition": "inbox", "reason": "", "authentication_results": "x; none",
                      "dmarc": {"result": "none"}}).encode()


def ok(body: bytes = VERDICT, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra
            + b"\r\n" + body)


class FakeEndpoint:
    """Each connect() makes a protocol on a StringTransport the test reads and answers."""

    def __init__(self, refuse: bool = False) -> None:
        self.connections: list[tuple[Any, StringTransport]] = []
        self.refuse = refuse

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if self.refuse:
            return defer.fail(ConnectionRefusedError())
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.connections.append((proto, transport))
        return defer.succeed(proto)


def client(token: str | None = None, **kw: Any) -> tuple[DMARCClient, FakeEndpoint, Clock]:
    clock, endpoint = Clock(), FakeEndpoint(**kw)
    c = DMARCClient("http://dmarc.internal:8025", 5.0, reactor=clock, token=token,
                    endpoint=endpoint)
    return c, endpoint, clock


def check(c: DMARCClient) -> Any:
    results: list[Any] = []
    c.check(client_ip="192.0.2.1", helo="h.example", mail_from="a@example.com",
            recipients=["u@bench.test"], message=b"Subject: x\r\n\r\nbody\r\n",
            queue_id="Q1").addCallback(results.append)
    return results


def lost(proto: Any) -> None:
    proto.connectionLost(Failure(ConnectionDone()))


def test_request_is_a_post_with_length_host_and_token_and_no_content_type():
    c, ep, _ = client(token="s3cret")
    check(c)
    data = ep.connections[0][1].value()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/check-raw HTTP/1.1"
    assert b"Host: dmarc.internal:8025" in lines
    assert b"Authorization: Bearer s3cret" in lines
    assert f"Content-Length: {len(body)}".encode() in lines
    assert not any(line.lower().startswith(b"content-type") for line in lines)
    envelope, _, message = body.partition(b"\n")
    assert json.loads(envelope) == {"client_ip": "192.0.2.1", "helo": "h.example",
                                    "mail_from": "a@example.com",
                                    "recipients": ["u@bench.test"], "queue_id": "Q1",
                                    "verdict": "mta"}
    assert message == b"Subject: x\r\n\r\nbody\r\n"


def not_found() -> bytes:
    return b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}"


def test_a_service_without_the_raw_endpoint_is_asked_with_json_from_then_on():
    c, ep, _ = client()
    result = check(c)
    proto, transport = ep.connections[0]
    transport.clear()
    proto.dataReceived(not_found())
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/check HTTP/1.1\r\n")
    assert base64.b64decode(json.loads(body)["message_b64"]) == b"Subject: x\r\n\r\nbody\r\n"
    proto.dataReceived(ok())
    assert result[0].disposition == "inbox" and not result[0].unavailable
    transport.clear()
    check(c)
    assert transport.value().startswith(b"POST /v1/check HTTP/1.1\r\n")


def test_a_404_of_the_json_endpoint_is_a_tempfail():
    c, ep, _ = client()
    c.raw = False
    result = check(c)
    ep.connections[0][0].dataReceived(not_found())
    assert result[0].disposition == "tempfail" and result[0].unavailable


def test_answer_in_pieces_gives_the_verdict_and_the_connection_is_reused():
    c, ep, _ = client()
    first = check(c)
    proto, transport = ep.connections[0]
    answer = ok()
    for i in range(0, len(answer), 7):
        proto.dataReceived(answer[i:i + 7])
    assert first[0].disposition == "inbox" and not first[0].unavailable
    transport.clear()
    second = check(c)
    assert len(ep.connections) == 1 and transport.value().startswith(b"POST ")
    proto.dataReceived(ok())
    assert second[0].disposition == "inbox"


def test_connection_close_answer_is_not_reused():
    c, ep, _ = client()
    first = check(c)
    ep.connections[0][0].dataReceived(ok(extra=b"Connection: close\r\n"))
    assert first[0].disposition == "inbox"
    assert ep.connections[0][1].disconnecting
    check(c)
    assert len(ep.connections) == 2


def test_answer_without_length_ends_at_close():
    c, ep, _ = client()
    result = check(c)
    proto, _ = ep.connections[0]
    proto.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n" + VERDICT)
    assert result == []
    lost(proto)
    assert result[0].disposition == "inbox"


def test_interim_1xx_answer_is_skipped():
    c, ep, _ = client()
    result = check(c)
    ep.connections[0][0].dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n" + ok())
    assert result[0].disposition == "inbox"


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}",
    b"SMTP 220 hello\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",  # JSON, not a verdict
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n" + b"x" * (1024 * 1024 + 1),
    b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * (70 * 1024),
], ids=["500", "not-http", "chunked", "bad-length", "not-a-verdict", "too-big", "head-too-long"])
def test_anything_but_a_verdict_is_tempfail_and_the_connection_is_not_kept(answer):
    c, ep, _ = client()
    result = check(c)
    proto, _ = ep.connections[0]
    proto.dataReceived(answer)
    lost(proto)
    assert result[0].disposition == "tempfail" and result[0].unavailable
    check(c)
    assert len(ep.connections) == 2  # never reused after a bad answer


def test_deadline_gives_tempfail_and_drops_the_connection():
    c, ep, clock = client()
    result = check(c)
    proto, _ = ep.connections[0]
    clock.advance(5.1)
    assert result[0].disposition == "tempfail"
    lost(proto)  # the abort's connectionLost arrives later: nothing fires twice
    proto.dataReceived(ok())  # nor does a late answer
    check(c)
    assert len(ep.connections) == 2


def test_reused_connection_closed_by_the_server_is_retried_once_on_a_new_one():
    c, ep, _ = client()
    first = check(c)
    ep.connections[0][0].dataReceived(ok())
    assert first[0].disposition == "inbox"
    second = check(c)  # sent on the idle connection...
    lost(ep.connections[0][0])  # ...which the server had timed out: no byte of an answer
    assert len(ep.connections) == 2 and second == []
    ep.connections[1][0].dataReceived(ok())
    assert second[0].disposition == "inbox"


def test_new_connection_closed_before_the_answer_is_tempfail_not_retried():
    c, ep, _ = client()
    result = check(c)
    lost(ep.connections[0][0])
    assert result[0].disposition == "tempfail"
    assert len(ep.connections) == 1


def test_refused_connection_is_tempfail():
    c, _, _ = client(refuse=True)
    assert check(c)[0].disposition == "tempfail"


def test_only_http_urls_are_accepted():
    with pytest.raises(ValueError, match="not an http:// URL"):
        DMARCClient("https://dmarc:8025", 5.0, reactor=Clock(), endpoint=FakeEndpoint())



def test_content_headers_are_kept_only_when_safe():
    from postroom_mta.dmarcclient import content_headers, parse_verdict
    body = json.dumps({"disposition": "junk", "decided_by": "rspamd", "headers": [
        ["X-Spam-Status", "Yes, score=9.1\n folded"], ["Bad Name", "x"], ["X: y", "x"],
        ["X-Evil", "a\r\nInjected: yes"], ["short"], ["X-A", 1], ["X-Long", "x" * 9000]],
        "content": [{"check": "rspamd", "action": "quarantine", "reason": "",
                     "headers": [["X-Ignored", "only the top-level list is added"]]}]}).encode()
    verdict = parse_verdict(body)
    # values keep their line breaks: inbound.added_field folds them and neutralises the rest
    assert verdict.headers == (("X-Spam-Status", "Yes, score=9.1\n folded"),
                               ("X-Evil", "a\r\nInjected: yes"))
    assert verdict.decided_by == "rspamd"
    assert content_headers(None) == () and content_headers("X-A: b") == ()
    assert len(content_headers([["X-A", "1"]] * 40)) == 16
