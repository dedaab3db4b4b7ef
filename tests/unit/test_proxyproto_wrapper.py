"""The PROXY protocol wrapping factory in front of the SMTP engine, over StringTransport."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from postroom.smtp.options import ServerOptions
from postroom.smtp.server import SMTPServerFactory
from postroom_mta.proxyproto import HEADER_TIMEOUT, ProxyProtocolFactory
from tests.unit.test_smtp_support import RecordingPolicy

HEADER = b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 25\r\n"


def connect(peer_ip: str = "10.0.0.5", trusted: tuple[str, ...] = ("10.0.0.0/8",)):
    clock = Clock()
    policy = RecordingPolicy(clock=clock)
    smtp = SMTPServerFactory(policy, ServerOptions(hostname="mx.test"), clock=clock)
    factory = ProxyProtocolFactory(smtp, trusted, refusal=b"421 4.7.0 refused\r\n", clock=clock)
    transport = StringTransport(hostAddress=IPv4Address("TCP", "10.0.0.1", 2525),
                                peerAddress=IPv4Address("TCP", peer_ip, 5000))
    protocol = factory.buildProtocol(transport.getPeer())
    protocol.makeConnection(transport)
    return protocol, transport, smtp, clock


def test_untrusted_peer_is_refused_before_any_header():
    protocol, transport, smtp, _ = connect(peer_ip="192.0.2.99")
    assert transport.value() == b"421 4.7.0 refused\r\n"
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
