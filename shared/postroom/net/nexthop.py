"""Smarthost next hops and transport-map precedence: pure parsing and choosing, no I/O.

The forms are Postfix's (``relayhost``, ``transport_maps``):

* ``host`` or ``host:port``: the MX records of ``host`` are looked up and its
  MX hosts tried in preference order (no MX: ``host`` itself);
* ``[host]`` or ``[host]:port``: no MX lookup, the A/AAAA records of ``host``
  (or the IP literal, ``[192.0.2.1]``, ``[2001:db8::1]``, ``[ipv6:2001:db8::1]``);
* an optional ``smtp:`` transport prefix, as Postfix writes a transport entry.

The port defaults to 25. A recipient domain's route is, first to last: the
transport-map entry for the exact domain, then ``.parent`` entries from the
nearest parent up (``.example.com`` matches ``a.b.example.com`` but not
``example.com``, as Postfix transport maps do with the default
``parent_domain_matches_subdomains``), then the global relay host, then MX
(:func:`choose_route` returns None).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

# TLS modes of a route: STARTTLS required, implicit TLS (port 465), or no TLS requirement
STARTTLS = "starttls"
IMPLICIT_TLS = "tls"
NO_TLS = "none"
TLS_MODES = (STARTTLS, IMPLICIT_TLS, NO_TLS)

DEFAULT_PORT = 25
MAX_LENGTH = 300
# a DNS host name: labels of letters, digits and hyphens (checked per label, no backtracking)
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


@dataclass(frozen=True)
class NextHop:
    """Where a route goes: ``host`` (lower case), ``port``, and whether MX records are used."""

    host: str
    port: int = DEFAULT_PORT
    mx_lookup: bool = True

    @property
    def is_address(self) -> bool:
        """True when ``host`` is an IP literal (never looked up)."""
        return _ip(self.host) is not None

    def __str__(self) -> str:
        host = f"[{self.host}]" if not self.mx_lookup else self.host
        return f"{host}:{self.port}"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _hostname(text: str) -> str:
    name = text.lower().rstrip(".")
    if not name or len(name) > 253:
        raise ValueError(f"{text!r} is not a host name")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(f"{text!r} is not a host name")
    return name


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port (1-65535)")
    return int(text)


def parse_nexthop(text: str, *, default_port: int = DEFAULT_PORT) -> NextHop:
    """``host``, ``host:port``, ``[host]``, ``[host]:port`` (optionally ``smtp:...``).

    Raises ValueError saying what is wrong.
    """
    raw = text.strip()
    if not raw or len(raw) > MAX_LENGTH:
        raise ValueError("empty or too long next hop")
    if raw.lower().startswith("smtp:"):
        raw = raw[5:]
    if raw.startswith("["):
        inner, closed, rest = raw[1:].partition("]")
        if not closed:
            raise ValueError(f"{text!r}: missing ']'")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: only ':port' may follow ']'")
        port = _port(rest[1:]) if rest else default_port
        if inner.lower().startswith("ipv6:"):
            inner = inner[5:]
            if not isinstance(_ip(inner), ipaddress.IPv6Address):
                raise ValueError(f"{text!r}: not an IPv6 address")
        ip = _ip(inner)
        host = str(ip) if ip is not None else _hostname(inner)
        return NextHop(host, port, mx_lookup=False)
    host, colon, port_text = raw.rpartition(":")
    if not colon:
        host, port_text = raw, ""
    if ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, [2001:db8::1]:25")
    port = _port(port_text) if colon else default_port
    if _ip(host) is not None:
        # an address has no MX records: Postfix looks it up as a name and fails; say so here
        raise ValueError(f"{text!r}: write an IP address in brackets, [{host}]")
    return NextHop(_hostname(host), port, mx_lookup=True)


def parse_tls_mode(text: str) -> str:
    """``starttls``, ``tls`` or ``none``; raises ValueError."""
    mode = text.strip().lower()
    if mode not in TLS_MODES:
        raise ValueError(f"{text!r}: TLS mode must be one of {', '.join(TLS_MODES)}")
    return mode


@dataclass(frozen=True)
class Route:
    """A smarthost route: next hop, TLS mode, and the SASL login (the password by reference).

    ``password_ref`` is a file path (or, for a transport entry, a secret name under
    /run/secrets), never the password itself; ``source`` says where the route came
    from: ``relayhost`` or ``transport:<key>``.
    """

    nexthop: NextHop
    tls: str = STARTTLS
    username: str | None = None
    password_ref: str | None = None
    source: str = "relayhost"

    def __post_init__(self) -> None:
        if self.tls not in TLS_MODES:
            raise ValueError(f"{self.tls!r}: TLS mode must be one of {', '.join(TLS_MODES)}")
        if (self.username is None) != (self.password_ref is None):
            raise ValueError("a login needs both a user name and a password reference")
        if self.username is not None and self.tls == NO_TLS:
            raise ValueError("AUTH is only sent under TLS: a login needs tls starttls or tls")

    @property
    def key(self) -> str:
        """What concurrency limits and message grouping key on: the next hop and the login."""
        return f"{self.nexthop}|{self.tls}|{self.username or ''}"


def transport_keys(domain: str) -> list[str]:
    """The transport-map keys to try for ``domain``, first to last.

    ``a.b.example.com`` -> ``a.b.example.com``, ``.b.example.com``, ``.example.com``, ``.com``.
    """
    name = domain.lower().rstrip(".")
    labels = name.split(".")
    return [name] + ["." + ".".join(labels[i:]) for i in range(1, len(labels))]


def normalise_key(text: str) -> str:
    """A transport-map key as stored: ``example.com`` or ``.example.com``; raises ValueError."""
    raw = text.strip()
    if raw.startswith("."):
        return "." + _hostname(raw[1:])
    return _hostname(raw)


def choose_route(domain: str, entries: Mapping[str, Route],
                 relayhost: Route | None) -> Route | None:
    """The route for ``domain``: transport entry (exact, then parents) > relay host > None (MX)."""
    for key in transport_keys(domain):
        route = entries.get(key)
        if route is not None:
            return route
    return relayhost
