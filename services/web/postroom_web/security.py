"""What every response carries and every request is checked for: headers, cookies, origins.

Pure functions of a request's headers and the settings, so they are tested alone.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from postroom.config import Network
from postroom.net.peers import parse_ip

SESSION_COOKIE = "postroom_session"
# the login form's double-submit token (there is no session yet to hold one)
LOGIN_CSRF_COOKIE = "postroom_login_csrf"
# a page's one-time notice after a redirect ("Domain added."), percent-encoded
NOTICE_COOKIE = "postroom_notice"
# a password-checked login waiting for its second factor (postroom_web.auth.Logins)
PENDING_COOKIE = "postroom_pending_login"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)

# over HTTPS (ours, or a trusted proxy's): browsers come back only over HTTPS for a year
HSTS = b"max-age=31536000"

# Sec-Fetch-Site values of a request the page itself (or the user, typing) made
_SAME_SITE_FETCH = ("same-origin", "none")


def tokens_equal(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison of a presented CSRF token with the session's."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def cross_site(headers: Mapping[str, str], host: str | None) -> bool:
    """True when the browser says the request comes from another site (refuse it).

    ``Sec-Fetch-Site`` other than same-origin/none, or an ``Origin`` (``null``
    included) whose host and port differ from the ``Host`` the request was sent to.
    No header at all (curl, old browsers) is not cross-site: the CSRF token decides.
    """
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() not in _SAME_SITE_FETCH:
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    origin = origin.strip()
    if origin == "null" or not host:
        return True
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return True
    return netloc.lower() != host.strip().lower()


def client_address(peer: str, forwarded_for: str | None,
                   proxies: Sequence[Network]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the
    rightmost X-Forwarded-For entry that is not itself a trusted proxy."""
    if not forwarded_for or not trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",")[-16:] if h.strip()]
    for hop in reversed(hops):
        if parse_ip(hop) is None:
            return peer  # a malformed chain: believe nothing of it
        if not trusted(hop, proxies):
            return hop
    return hops[0] if hops else peer


def forwarded_secure(peer: str, forwarded_proto: str | None,
                     proxies: Sequence[Network]) -> bool:
    """True when a trusted proxy says the client spoke HTTPS to it."""
    return bool(forwarded_proto) and trusted(peer, proxies) and \
        forwarded_proto.split(",")[0].strip().lower() == "https"  # type: ignore[union-attr]


def trusted(ip: str, networks: Sequence[Network]) -> bool:
    """True when ``ip`` is in one of ``networks`` (POSTROOM_WEB_PROXY_TRUSTED)."""
    address = parse_ip(ip)
    return address is not None and any(
        address.version == net.version and address in net for net in networks)


def cookie_header(name: str, value: str, *, secure: bool, max_age: int | None = None) -> bytes:
    """A Set-Cookie value: HttpOnly, SameSite=Strict, Path=/, Secure when asked;
    ``max_age=0`` deletes the cookie."""
    parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode("ascii")


def local_path(target: str | None, default: str = "/") -> str:
    """``target`` when it is a path on this site (``/domains?x=1``), else ``default``:
    a login's ``next`` never sends the browser elsewhere (``//evil``, ``/\\evil``, URLs)."""
    if not target or not target.startswith("/") or target.startswith("//") \
            or "\\" in target or any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
        return default
    try:
        parts = urlsplit(target)
    except ValueError:
        return default
    if parts.scheme or parts.netloc:
        return default
    return target[:2048]
