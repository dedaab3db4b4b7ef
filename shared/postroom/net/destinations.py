"""Which addresses outbound connections may reach: internal networks only when the operator allows.

A remote domain's DNS is written by whoever owns the domain, so an MX (or the
implicit MX, the domain's own A/AAAA) may point at our loopback, the private
networks around us or link-local metadata services. Mail we send on behalf of
anyone (submissions, bounces, vacation replies) would then reach internal
SMTP-speaking or line-oriented services. :class:`DestinationPolicy` refuses
such addresses unless they are in the operator's allow-list
(POSTROOM_RELAY_ALLOWED_NETWORKS); a smarthost the operator configures is not
subject to it.

What counts as internal: Python's ``ipaddress`` properties (private, loopback,
link-local, reserved, multicast, unspecified), which change between Python
versions, plus explicit lists so the answer does not. An IPv4-mapped IPv6
address (``::ffff:127.0.0.1``) is judged, and matched against the allow-list,
as the IPv4 address it carries; so is an address of the NAT64 well-known
prefix (``64:ff9b::/96``, RFC 6052), which a DNS64 resolver makes for
IPv4-only hosts, and a 6to4 address (``2002::/16``). Anything that does not
parse as an address is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

INTERNAL_IPV4: tuple[ipaddress.IPv4Network, ...] = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8",        # "this network": 0.0.0.0 connects to the local host on Linux
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",    # carrier-grade NAT (RFC 6598), often a cloud's internal range
    "127.0.0.0/8",      # loopback
    "169.254.0.0/16",   # link-local, cloud metadata services (169.254.169.254)
    "192.0.0.0/24",     # IETF protocol assignments
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",  # documentation
    "198.18.0.0/15",    # benchmarking
    "224.0.0.0/4",      # multicast
    "240.0.0.0/4",      # reserved, and the broadcast address
))
INTERNAL_IPV6: tuple[ipaddress.IPv6Network, ...] = tuple(ipaddress.IPv6Network(n) for n in (
    "::/128", "::1/128",  # unspecified, loopback
    "::/96",            # IPv4-compatible (deprecated): never a real MX
    "100::/64",         # discard-only
    "2001:db8::/32",    # documentation
    "fc00::/7",         # unique local
    "fe80::/10",        # link-local
    "fec0::/10",        # site-local (deprecated, still routed by some stacks)
    "ff00::/8",         # multicast
))
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def parse(address: str) -> Address | None:
    """The address as it is judged: IPv4-mapped and NAT64 addresses as their IPv4; None if bad."""
    try:
        ip = ipaddress.ip_address(address.strip().split("%", 1)[0])
    except ValueError:
        return None
    return _as_ipv4(ip)


def _as_ipv4(ip: Address) -> Address:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_internal(ip: Address) -> bool:
    """Loopback, private, link-local, reserved, multicast, unspecified, CGNAT or the like."""
    ip = _as_ipv4(ip)
    if (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
            or ip.is_multicast or ip.is_unspecified):
        return True
    if isinstance(ip, ipaddress.IPv4Address):
        return any(ip in net for net in INTERNAL_IPV4)
    if ip.sixtofour is not None and is_internal(ip.sixtofour):
        return True
    return any(ip in net for net in INTERNAL_IPV6)


def _network(text: str) -> Network:
    net = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and (
            net.network_address in _MAPPED):
        # ::ffff:10.0.0.0/104 means 10.0.0.0/8: addresses are compared as IPv4
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}")
    return net


@dataclass(frozen=True)
class DestinationPolicy:
    """Addresses we may connect to: any public one, internal ones only in ``allowed``."""

    allowed: tuple[Network, ...] = ()

    @classmethod
    def allowing(cls, networks: Iterable[str]) -> DestinationPolicy:
        """From CIDR strings (POSTROOM_RELAY_ALLOWED_NETWORKS); raises ValueError on a bad one."""
        return cls(tuple(_network(n) for n in networks if n.strip()))

    def permits(self, address: str) -> bool:
        """True when a connection to ``address`` is allowed."""
        ip = parse(address)
        if ip is None:
            return False
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return True
        return not is_internal(ip)


# the default: nothing internal is reachable until the operator says so
STRICT = DestinationPolicy()
