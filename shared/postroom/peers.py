"""Facts about a connection that every listener asks: is it TLS, is the peer on loopback."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import interfaces


def is_tls(transport: Any) -> bool:
    """True for an implicit-TLS transport or one that has completed STARTTLS."""
    return bool(interfaces.ISSLTransport.providedBy(transport)
                or interfaces.INegotiated.providedBy(transport))


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback; anything unparsable is not loopback."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
