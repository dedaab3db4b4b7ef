"""The shared PROXY protocol wrapping factory in front of the SMTP engine, over StringTransport."""

from __future__ import annotations

import io
import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from postroom import logs
from postroom.metrics import Metrics
from postroom.net.proxyproto import HEADER_TIMEOUT, REASONS, ProxyProtocolFactory
from postroom.smtp.options import ServerOptions
from postroom.smtp.server import SMTPServerFactory
from tests.unit.test_smtp_support import RecordingPolicy


@pytest.fixture
def log_lines(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(logs._sink, "stream", stream)
    monkeypatch.setattr(logs._sink, "threshold", logs.LEVELS["info"])
    return lambda: [json.loads(line) for line in stream.getvalue().splitlines()]


HEADER = b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 25\r\n"


def connect(peer_ip: str = "10.0.0.5", trusted: tuple[str, ...] = ("10.0.0.0/8",),
            metrics: Metrics | None = None):
    clock = Clock()
    policy = RecordingPolicy(clock=clock)
    smtp = SMTPServerFactory(policy, ServerOptions(hostname="mx.test"), clock=clock)
    factory = ProxyProtocolFactory(smtp, trusted, clock=clock, metrics=metrics,
                                   listener="proxy:tcp:10025")
    transport = StringTransport(hostAddress=IPv4Address("TCP", "10.0.0.1", 2525),
                                peerAddress=IPv4Address("TCP", peer_ip, 5000))
    protocol = factory.buildProtocol(transport.getPeer())
    protocol.makeConnection(transport)
    return protocol, transport, smtp, clock


def test_untrusted_peer_is_refused_before_any_header():
    protocol, transport, smtp, _ = connect(peer_ip="192.0.2.99")
    assert transport.value() == b""  # not even a banner: no session, so no claimed address
    assert transport.disconnecting
    protocol.dataReceived(HEADER + b"EHLO x\r\n")
    assert protocol.wrapped is None and not smtp.per_address.open


def test_trusted_proxy_header_sets_the_session_client_address():
    protocol, transport, smtp, _ = connect()
    protocol.dataReceived(HEADER)
    assert protocol.wrapped.session.peer_ip == "198.51.100.7"
    assert protocol.wrapped.session.local_port == 25
    assert transport.value().startswith(b"220 mx.test")
    assert smtp.per_address.open == {"198.51.100.7": 1}


def test_header_split_across_reads_with_pipelined_command():
    protocol, transport, _, _ = connect()
    protocol.dataReceived(HEADER[:10])
    assert transport.value() == b""
    protocol.dataReceived(HEADER[10:] + b"EHLO client.example\r\n")
    assert b"250-mx.test Hello client.example" in transport.value()


def test_no_header_within_the_timeout_drops_the_connection():
    protocol, transport, _, clock = connect()
    clock.advance(HEADER_TIMEOUT + 1)
    assert transport.disconnecting and protocol.wrapped is None


def test_smtp_instead_of_a_header_drops_the_connection():
    protocol, transport, _, _ = connect()
    protocol.dataReceived(b"EHLO client.example\r\n")
    assert transport.disconnecting and protocol.wrapped is None


def test_connection_lost_reaches_the_smtp_session():
    protocol, _, smtp, _ = connect()
    protocol.dataReceived(HEADER)
    protocol.connectionLost(None)
    assert not smtp.per_address.open


def refused(metrics: Metrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value("postroom_proxy_refused_total", {"reason": reason})


def test_every_refusal_reason_is_a_series_from_the_start():
    metrics = Metrics("mta", process_metrics=False)
    connect(metrics=metrics)
    assert {reason: refused(metrics, reason) for reason in REASONS} == dict.fromkeys(REASONS, 0)


def test_untrusted_peer_is_logged_and_counted(log_lines):
    metrics = Metrics("mta", process_metrics=False)
    connect(peer_ip="192.0.2.99", metrics=metrics)
    assert refused(metrics, "untrusted_peer") == 1
    [event] = [e for e in log_lines() if e["event"] == "proxy header refused"]
    assert (event["level"], event["peer"], event["reason"], event["listener"]) == (
        "warning", "192.0.2.99", "untrusted_peer", "proxy:tcp:10025")


def test_timeout_and_malformed_headers_are_counted_by_reason():
    metrics = Metrics("mta", process_metrics=False)
    _, _, _, clock = connect(metrics=metrics)
    clock.advance(HEADER_TIMEOUT + 1)
    protocol, _, _, _ = connect(metrics=metrics)
    protocol.dataReceived(b"PROXY TCP4 not-an-address 192.0.2.1 1 25\r\n")
    assert (refused(metrics, "timeout"), refused(metrics, "malformed")) == (1, 1)


def test_a_v2_header_longer_than_the_bound_is_refused_before_it_is_read_whole():
    metrics = Metrics("mta", process_metrics=False)
    protocol, transport, _, _ = connect(metrics=metrics)
    protocol.dataReceived(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff")  # 65535-byte payload
    assert transport.disconnecting and protocol.wrapped is None
    assert refused(metrics, "malformed") == 1


def test_the_wrapped_factory_starts_and_stops_with_the_port():
    _, _, smtp, _ = connect()
    factory = ProxyProtocolFactory(smtp, ("10.0.0.0/8",), clock=Clock())
    factory.doStart()
    assert smtp.numPorts == 1
    factory.doStop()
    assert smtp.numPorts == 0
