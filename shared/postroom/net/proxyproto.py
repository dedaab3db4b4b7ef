"""PROXY protocol v1/v2 (HAProxy spec): a pure header parser and the one wrapping factory.

A load balancer in front of the mail listeners (mta, msa, pop3, imap) hides
each client's address; with the PROXY protocol it sends the real addresses
first. Every ``proxy:`` listener (``haproxy:`` is the older spelling) goes
through :class:`ProxyProtocolFactory`, never Twisted's permissive ``haproxy:``
endpoint: the header is believed only from POSTROOM_PROXY_TRUSTED (anyone else
could claim any client address, and so pass SPF or dodge per-address limits),
is parsed strictly with a bounded size, and must arrive within a timeout. Only
then is the wrapped protocol built, with a transport whose ``getPeer()`` is the
real client. Every refusal closes the connection without a byte, is logged
(``proxy header refused``) and counted (``postroom_proxy_refused_total``).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure

from postroom.interfaces import DelayedCall, ReactorTime, global_reactor
from postroom.logs import get_logger
from postroom.metrics import Metrics
from postroom.net.peers import parse_ip

_log = get_logger("proxyproto")

V1_PREFIX = b"PROXY "
# the v1 spec: 107 bytes is the longest possible line, CRLF included
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
# TLVs make v2 headers variable; more than this is not a header a balancer of ours sends
V2_MAX_PAYLOAD = 1024
HEADER_TIMEOUT = 10.0

_PORT = rb"(?:0|[1-9][0-9]{0,4})"
_V1_RE = re.compile(rb"PROXY (TCP4|TCP6) ([0-9A-Fa-f:.]{2,45}) ([0-9A-Fa-f:.]{2,45}) "
                    rb"(" + _PORT + rb") (" + _PORT + rb")\r\n")
_V1_UNKNOWN_RE = re.compile(rb"PROXY UNKNOWN(?: [\x20-\x7e]*)?\r\n")


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY header; the connection must be dropped."""


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header: ``source``/``destination`` are (ip, port), or None for LOCAL/UNKNOWN."""

    version: int
    length: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def _v1_address(raw: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(raw.decode("ascii"))
    except ValueError:
        raise ProxyHeaderError("invalid address in PROXY v1 header") from None
    if address.version != version:
        raise ProxyHeaderError("address family does not match PROXY v1 protocol")
    return str(address)


def _v1_port(raw: bytes) -> int:
    port = int(raw)
    if port > 65535:
        raise ProxyHeaderError("port out of range in PROXY v1 header")
    return port


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end == -1:
        if len(data) >= V1_MAX or b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("PROXY v1 header too long or not CRLF-terminated")
        return None
    line = data[:end + 2]
    if _V1_UNKNOWN_RE.fullmatch(line):
        return ProxyHeader(version=1, length=len(line))
    match = _V1_RE.fullmatch(line)
    if match is None:
        raise ProxyHeaderError("malformed PROXY v1 header")
    family = 4 if match.group(1) == b"TCP4" else 6
    return ProxyHeader(
        version=1, length=len(line),
        source=(_v1_address(match.group(2), family), _v1_port(match.group(4))),
        destination=(_v1_address(match.group(3), family), _v1_port(match.group(5))))


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_FIXED:
        return None
    version_command, family, length = struct.unpack("!BBH", data[12:16])
    if version_command >> 4 != 2:
        raise ProxyHeaderError("unsupported PROXY v2 version")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError("unknown PROXY v2 command")
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError("PROXY v2 header too long")
    if len(data) < V2_FIXED + length:
        return None
    payload = data[V2_FIXED:V2_FIXED + length]
    total = V2_FIXED + length
    if command == 0:
        # LOCAL: the proxy's own connection (health checks); the real addresses stand
        return ProxyHeader(version=2, length=total)
    if family == 0x11:  # TCP over IPv4
        if length < 12:
            raise ProxyHeaderError("PROXY v2 IPv4 address block too short")
        src, dst, sport, dport = struct.unpack("!4s4sHH", payload[:12])
        return ProxyHeader(version=2, length=total,
                           source=(str(ipaddress.IPv4Address(src)), sport),
                           destination=(str(ipaddress.IPv4Address(dst)), dport))
    if family == 0x21:  # TCP over IPv6
        if length < 36:
            raise ProxyHeaderError("PROXY v2 IPv6 address block too short")
        src, dst, sport, dport = struct.unpack("!16s16sHH", payload[:36])
        return ProxyHeader(version=2, length=total,
                           source=(str(ipaddress.IPv6Address(src)), sport),
                           destination=(str(ipaddress.IPv6Address(dst)), dport))
    if family == 0x00:  # UNSPEC: addresses unknown, keep the connection's own
        return ProxyHeader(version=2, length=total)
    raise ProxyHeaderError("unsupported PROXY v2 address family (only TCP over IPv4/IPv6)")


def parse_header(data: bytes) -> ProxyHeader | None:
    """Parse a PROXY header at the start of ``data``; None means "need more bytes".

    ``ProxyHeader.length`` says how many bytes the header took; the rest belongs
    to the wrapped protocol. Anything that is not a valid header raises
    :class:`ProxyHeaderError`.
    """
    if data[:len(V1_PREFIX)] == V1_PREFIX[:len(data)] and len(data) < len(V1_PREFIX):
        return None
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    probe = data[:len(V2_SIGNATURE)]
    if probe != V2_SIGNATURE[:len(probe)]:
        raise ProxyHeaderError("connection does not start with a PROXY header")
    if len(data) < len(V2_SIGNATURE):
        return None
    return _parse_v2(data)


def parse_networks(items: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                                   ...]:
    """Addresses and CIDRs (``10.0.0.0/8``, ``::1``) as networks; ValueError on a bad one."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())


def is_trusted(ip: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """True when ``ip`` is inside one of ``networks`` (IPv4-mapped IPv6 counts as IPv4)."""
    address = parse_ip(ip)
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in networks)


def _twisted_address(ip: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in ip:
        return IPv6Address("TCP", ip, port)
    return IPv4Address("TCP", ip, port)


class ProxiedTransport:
    """The real transport, except that it reports the addresses from the PROXY header."""

    def __init__(self, transport: Any, peer: Any, host: Any) -> None:
        self._transport = transport
        self._peer = peer
        self._host = host

    def getPeer(self) -> Any:
        return self._peer

    def getHost(self) -> Any:
        return self._host

    def __getattr__(self, name: str) -> Any:
        # everything else (write, startTLS, pauseProducing, disconnecting...) is the real one's
        return getattr(self._transport, name)


# refusal reasons: the metric's label values (a closed set) and the log's ``reason``
UNTRUSTED = "untrusted_peer"
MALFORMED = "malformed"
TOO_LONG = "too_long"
TIMEOUT = "timeout"
REASONS = (UNTRUSTED, MALFORMED, TOO_LONG, TIMEOUT)


def refused_total(metrics: Metrics) -> Any:
    """Connections a PROXY listener closed without serving them, by reason."""
    return metrics.counter("proxy_refused", "Connections refused by a PROXY protocol listener, "
                           "by reason.", ["reason"])


class ProxyProtocolWrapper(Protocol):
    """Reads and checks the PROXY header, then hands the connection to the wrapped protocol."""

    transport: Any

    def __init__(self, factory: ProxyProtocolFactory) -> None:
        self.proxy_factory = factory
        self.wrapped: Any = None
        self._buffer = b""
        self._timer: DelayedCall | None = None
        self._done = False
        self._proxy_ip = ""

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self._proxy_ip = str(getattr(peer, "host", ""))
        if not is_trusted(self._proxy_ip, self.proxy_factory.trusted):
            self._refuse(UNTRUSTED)
            return
        self._timer = self.proxy_factory.clock.callLater(self.proxy_factory.timeout,
                                                         self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)
            return
        if self._done:
            return
        self._buffer += data
        try:
            header = parse_header(self._buffer)
        except ProxyHeaderError as exc:
            self._refuse(MALFORMED, str(exc))
            return
        if header is None:
            if len(self._buffer) > V2_FIXED + V2_MAX_PAYLOAD:
                self._refuse(TOO_LONG)
            return
        rest = self._buffer[header.length:]
        self._buffer = b""
        self._start(header, rest)

    def _start(self, header: ProxyHeader, rest: bytes) -> None:
        self._cancel_timer()
        self._done = True
        peer, host = self.transport.getPeer(), self.transport.getHost()
        if header.source is not None and header.destination is not None:
            peer = _twisted_address(*header.source)
            host = _twisted_address(*header.destination)
        _log.debug("proxy header accepted", proxy=self._proxy_ip, version=header.version,
                   client=getattr(peer, "host", None), listener=self.proxy_factory.listener)
        wrapped = self.proxy_factory.wrapped_factory.buildProtocol(peer)
        if wrapped is None:
            self.transport.loseConnection()
            return
        self.wrapped = wrapped
        wrapped.makeConnection(ProxiedTransport(self.transport, peer, host))
        if rest:
            wrapped.dataReceived(rest)

    def _timed_out(self) -> None:
        self._timer = None
        if self.wrapped is None and not self._done:
            self._refuse(TIMEOUT)

    def _refuse(self, reason: str, detail: str | None = None) -> None:
        """Close without a byte: the peer is never served, nor taken for the claimed client."""
        self._done = True
        self._buffer = b""
        self._cancel_timer()
        _log.warning("proxy header refused", peer=self._proxy_ip, reason=reason, detail=detail,
                     listener=self.proxy_factory.listener)
        if self.proxy_factory.refused is not None:
            self.proxy_factory.refused.labels(reason=reason).inc()
        self.transport.loseConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancel_timer()
        if self.wrapped is not None:
            self.wrapped.connectionLost(reason)
            self.wrapped = None


class ProxyProtocolFactory(ServerFactory):
    """Wraps another factory: every connection must come from ``trusted`` and start with a
    PROXY header within ``timeout`` seconds, or it is closed unserved."""

    noisy = False

    def __init__(self, wrapped_factory: Any, trusted: Iterable[str], *,
                 timeout: float = HEADER_TIMEOUT, clock: ReactorTime | None = None,
                 metrics: Metrics | None = None, listener: str = "") -> None:
        if clock is None:
            clock = global_reactor()
        self.wrapped_factory = wrapped_factory
        self.trusted = parse_networks(trusted)
        self.timeout = timeout
        self.clock: ReactorTime = clock
        self.listener = listener
        self.refused = refused_total(metrics) if metrics is not None else None
        if self.refused is not None:
            for reason in REASONS:  # every series exists from start, at 0
                self.refused.labels(reason=reason)

    def doStart(self) -> None:
        # the wrapped factory is started and stopped with the port, as WrappingFactory does
        self.wrapped_factory.doStart()
        super().doStart()

    def doStop(self) -> None:
        super().doStop()
        self.wrapped_factory.doStop()

    def buildProtocol(self, addr: Any) -> ProxyProtocolWrapper:
        protocol = ProxyProtocolWrapper(self)
        protocol.factory = self
        return protocol
