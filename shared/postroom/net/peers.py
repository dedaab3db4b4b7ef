"""Facts about a connection that every listener asks: is it TLS, is the peer on loopback,
which client (address or IPv6 /64) its limits count against."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import interfaces


def is_tls(transport: Any) -> bool:
    """True for an implicit-TLS transport or one that has completed STARTTLS."""
    return bool(interfaces.ISSLTransport.providedBy(transport)
                or interfaces.INegotiated.providedBy(transport))


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddress | None:
    """``text`` as an address, IPv4-mapped IPv6 (``::ffff:192.0.2.1``) as the IPv4 it maps;
    None when it is not one. The one place a peer's address text is parsed."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback; anything unparsable is not loopback."""
    address = parse_ip(host)
    return address is not None and address.is_loopback


# one IPv6 subscriber usually holds a whole /64 (RFC 6177), so it can take a fresh address
# for every connection: per-client limits count the /64, not the address
IPV6_CLIENT_PREFIX = 64
_IPV6_CLIENT_MASK = ((1 << IPV6_CLIENT_PREFIX) - 1) << (128 - IPV6_CLIENT_PREFIX)


def client_key(host: str) -> str:
    """The client a per-address limit counts ``host`` against.

    An IPv4 address (also written IPv4-mapped, ``::ffff:192.0.2.1``) is itself;
    an IPv6 address is its /64 (``2001:db8:1:2::/64``), zone index dropped;
    anything unparsable (a UNIX socket's name) is left as it is. The one helper
    the connection limit and the failed-login limiter share.
    """
    if ":" not in host:
        return host  # IPv4 as the transport gives it (dotted quad), or no address at all
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    prefix = ipaddress.IPv6Address(int(address) & _IPV6_CLIENT_MASK)
    return f"{prefix}/{IPV6_CLIENT_PREFIX}"
