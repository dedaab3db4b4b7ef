"""The bearer token (POSTROOM_INTERNAL_TOKEN) guarding the dmarc API and `/metrics`.

Services meet over plain HTTP on the internal network; compose never
publishes these ports, but an operator who does must set the token. The
comparison is constant-time, a refusal is 401 with ``WWW-Authenticate:
Bearer``, and the token itself is never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from typing import Any

from postroom.config import PROXY_PREFIXES
from postroom.logs import Logger, get_logger

log = get_logger("internal-auth")

CHALLENGE = b"Bearer"


def authorization_header(token: str) -> bytes:
    """The ``Authorization`` value a client sends: ``Bearer <token>``."""
    return b"Bearer " + token.encode("utf-8")


def token_ok(header: bytes | None, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` (scheme case-insensitive)."""
    if not header:
        return False
    scheme, _, credentials = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(credentials.strip(), token.encode("utf-8"))


def authorized(request: Any, token: str | None) -> bool:
    """True when no token is configured or the twisted.web ``request`` carries it.

    When not, the request is already answered 401 (status and headers set); the
    caller returns the body. The refusal is logged without any credential.
    """
    if token is None:
        return True
    if token_ok(request.getHeader(b"authorization"), token):
        return True
    peer = request.getClientAddress()
    log.warning("internal request unauthorized", path=request.path.decode("latin-1"),
                peer=getattr(peer, "host", None),
                credentials="wrong" if request.getHeader(b"authorization") else "missing")
    request.setResponseCode(401)
    request.setHeader(b"www-authenticate", CHALLENGE)
    request.setHeader(b"cache-control", b"no-store")
    return False


def _split(endpoint: str) -> list[str]:
    """Twisted endpoint string fields (``:`` separated, ``\\:`` escaped)."""
    parts, current, chars = [], "", iter(endpoint)
    for char in chars:
        if char == "\\":
            current += next(chars, "")
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def is_loopback(endpoint: str) -> bool:
    """Whether a server endpoint string listens only on loopback (or a unix socket).

    A tcp endpoint without ``interface=`` listens on every address, so it is
    not loopback; anything we cannot tell (systemd sockets) counts as exposed.
    """
    fields = _split(endpoint)
    if fields[0] in PROXY_PREFIXES:
        fields = fields[1:]
    kind = fields[0] if fields else ""
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6"):
        return False
    interface = next((f.split("=", 1)[1] for f in fields[1:] if f.startswith("interface=")), "")
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def warn_if_exposed(what: str, endpoints: Iterable[str], token: str | None,
                    logger: Logger | None = None) -> bool:
    """Log one start-up warning when ``what`` is unauthenticated on a non-loopback address."""
    exposed = [e for e in endpoints if not is_loopback(e)]
    if token is not None or not exposed:
        return False
    (logger or log).warning("internal endpoint unauthenticated", endpoint=what,
                            listeners=exposed, fix="set POSTROOM_INTERNAL_TOKEN")
    return True
