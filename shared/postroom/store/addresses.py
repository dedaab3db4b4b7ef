"""Normalising and validating e-mail addresses and domain names before they are stored."""

from __future__ import annotations

import re
from functools import lru_cache

import idna

from postroom.store.errors import InvalidAddress

# RFC 5321 dot-atom local parts; non-ASCII is allowed too (RFC 6531, SMTPUTF8)
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_LOCALPART = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
MAX_LOCALPART_OCTETS = 64
MAX_ADDRESS_OCTETS = 254
# a login name longer than this is no account's, however it is spelt (a valid address is at
# most 254 octets; the slack is for <>, spaces and trailing dots clients add)
MAX_LOGIN_NAME_CHARS = 512


def normalise_domain(domain: str) -> str:
    """The lowercase ASCII (A-label) form of ``domain``, or InvalidAddress."""
    text = domain.strip().rstrip(".")
    if not text:
        raise InvalidAddress("empty domain name")
    try:
        ascii_name = text.lower() if text.isascii() else idna.encode(text, uts46=True).decode()
    except idna.IDNAError as exc:
        raise InvalidAddress(f"invalid domain name {domain!r}: {exc}") from None
    ascii_name = ascii_name.lower()
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidAddress(f"invalid domain name {domain!r}")
    if labels[-1].isdigit():
        raise InvalidAddress(f"invalid domain name {domain!r}: numeric top-level label")
    return ascii_name


def valid_domains(names: set[str] | frozenset[str]) -> set[str]:
    """The stored forms of ``names`` (a filter's domains); one that is no valid domain name
    is left out: it matches no domain."""
    done = set()
    for name in names:
        try:
            done.add(normalise_domain(name))
        except InvalidAddress:
            continue
    return done


def split_address(address: str) -> tuple[str, str]:
    """(localpart, domain) of ``address``, both normalised (lowercase), or InvalidAddress."""
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    localpart, at, domain = text.rpartition("@")
    if not at or not localpart:
        raise InvalidAddress(f"invalid address {address!r}: expected localpart@domain")
    localpart = localpart.lower()
    if not _LOCALPART.fullmatch(localpart) or any(c.isspace() for c in localpart):
        raise InvalidAddress(f"invalid address {address!r}: bad local part")
    if len(localpart.encode("utf-8")) > MAX_LOCALPART_OCTETS:
        raise InvalidAddress(f"invalid address {address!r}: local part over 64 octets")
    domain = normalise_domain(domain)
    if len(localpart.encode("utf-8")) + 1 + len(domain) > MAX_ADDRESS_OCTETS:
        raise InvalidAddress(f"invalid address {address!r}: over 254 octets")
    return localpart, domain


def normalise_address(address: str) -> str:
    """The stored form of ``address``: lowercase local part @ lowercase A-label domain."""
    localpart, domain = split_address(address)
    return f"{localpart}@{domain}"


def login_name(name: str) -> str | None:
    """The one canonical form of a login name: the address of the account it logs in to.

    Login resolution (``postroom.store.users``), the failed-login limiter and the
    login cache all read a name through this function, so ``ALICE@Example.COM.``,
    ``<alice@example.com>`` and a full-width domain are one account everywhere.
    It is pure (no store question), so the limiter can ask it before any password
    check. None: no account can have this name (it is not a valid address).
    """
    if len(name) > MAX_LOGIN_NAME_CHARS:
        return None  # before the cache: no long name is hashed, kept or IDNA-mapped
    return _canonical_login(name)


# every login asks several times (limiter check and reset, login cache): ~6 us a call for
# ASCII, ~30 us through IDNA, ~0.3 us from this cache, whose size bounds its memory
@lru_cache(maxsize=4096)
def _canonical_login(name: str) -> str | None:
    try:
        return normalise_address(name)
    except InvalidAddress:
        return None
