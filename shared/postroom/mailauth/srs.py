"""The Sender Rewriting Scheme (SRS0/SRS1, Shevek's scheme as libsrs2 and postsrsd write it), pure.

When we forward a message off our domains, its envelope sender is rewritten
so that SPF at the next hop judges *our* domain and a bounce comes back to us:

* ``alice@example.org`` forwarded by ``fwd.test`` becomes
  ``SRS0=HHHH=TT=example.org=alice@fwd.test``;
* an ``SRS0=...@first.test`` (or ``SRS1``) address forwarded again becomes
  ``SRS1=HHHH=first.test==HHHH=TT=example.org=alice@fwd.test``: the first
  forwarder stays named, so a bounce goes back through it only.

``HHHH`` is the first :data:`HASH_LENGTH` characters of the base64 of an
HMAC-SHA1 over the lower-cased fields (libsrs2's ``srs_hash_create``), so
nobody can make us relay mail to an address of their choosing; ``TT`` is the
day number modulo 1024 in two base32 characters, and an SRS0 address older
than ``max_age`` days is refused (so a leaked address stops working).
Decoding is case-insensitive (some MTAs upper- or lower-case local parts):
the hash is compared case-folded, as libsrs2 does.

Keys rotate as postsrsd's do: the first key signs, every key verifies
(:func:`load_keys` reads one secret a line from POSTROOM_SRS_KEY_FILE).
Everything here is a function of its arguments; nothing reads the clock
unless no ``now`` is given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

HASH_LENGTH = 4
DEFAULT_MAX_AGE_DAYS = 21
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_TIME_SLOTS = 1024  # two base32 characters: ten bits of day number
_DAY = 86400
# RFC 5321 4.5.3.1.1: a local part has at most 64 octets; SRS may exceed it, as postsrsd
# does, but an address we are asked to decode is bounded before any work is done
MAX_ADDRESS = 512


class SRSError(ValueError):
    """An address that is not a valid SRS address of ours (bad hash, expired, malformed)."""


@dataclass(frozen=True)
class SRS:
    """The keys and limits of one SRS rewriter; ``keys[0]`` signs, all of them verify."""

    keys: tuple[bytes, ...]
    max_age_days: int = DEFAULT_MAX_AGE_DAYS
    hash_length: int = HASH_LENGTH

    def __post_init__(self) -> None:
        if not self.keys or any(not k for k in self.keys):
            raise ValueError("SRS needs at least one non-empty key")

    # --- hashing and timestamps

    def _hash(self, key: bytes, *fields: str) -> str:
        mac = hmac.new(key, digestmod=hashlib.sha1)
        for field in fields:
            mac.update(field.lower().encode("utf-8", "surrogateescape"))
        return base64.b64encode(mac.digest()).decode("ascii")[:self.hash_length]

    def _check_hash(self, given: str, *fields: str) -> None:
        if len(given) < self.hash_length:
            raise SRSError("SRS hash too short")
        for key in self.keys:
            if hmac.compare_digest(self._hash(key, *fields).lower(), given.lower()):
                return
        raise SRSError("SRS hash invalid")

    # --- encoding

    def forward(self, sender: str, alias_domain: str, *, now: float | None = None) -> str:
        """The envelope sender to use when ``alias_domain`` forwards mail from ``sender``.

        The null sender stays null, and a sender in ``alias_domain`` needs no
        rewriting (SPF already judges our own domain); anything else becomes
        SRS0, or SRS1 when it is an SRS address already.
        """
        if not sender:
            return ""
        local, at, domain = sender.rpartition("@")
        if not at or not local or not domain:
            raise SRSError("not an address")
        if domain.lower() == alias_domain.lower():
            return sender
        upper = local[:5].upper()
        if upper.startswith("SRS0") and len(local) > 4 and local[4] in "=+-":
            # SRS0<sep>opaque@first -> SRS1=HHH=first==opaque (the separator is kept)
            opaque = local[4:]
            hashed = self._hash(self.keys[0], domain, opaque)
            return f"SRS1={hashed}={domain}={opaque}@{alias_domain}"
        if upper.startswith("SRS1") and len(local) > 4 and local[4] in "=+-":
            # SRS1=hhh=first==opaque@prev -> SRS1=HHH=first==opaque@us: the first
            # forwarder stays, our hash replaces the previous one's
            parts = local[5:].split("=", 2)
            if len(parts) != 3:
                raise SRSError("malformed SRS1 address")
            _old, first, opaque = parts
            hashed = self._hash(self.keys[0], first, opaque)
            return f"SRS1={hashed}={first}={opaque}@{alias_domain}"
        stamp = timestamp(now)
        hashed = self._hash(self.keys[0], stamp, domain, local)
        return f"SRS0={hashed}={stamp}={domain}={local}@{alias_domain}"

    # --- decoding

    def reverse(self, address: str, *, now: float | None = None) -> str:
        """Where a bounce to the SRS address ``address`` goes: the original sender (from
        SRS0) or the first forwarder's SRS0 address (from SRS1). SRSError otherwise."""
        if len(address) > MAX_ADDRESS:
            raise SRSError("address too long")
        local, at, _domain = address.rpartition("@")
        if not at:
            raise SRSError("not an address")
        kind = local[:4].upper()
        if kind not in ("SRS0", "SRS1") or len(local) < 5 or local[4] not in "=+-":
            raise SRSError("not an SRS address")
        if kind == "SRS1":
            parts = local[5:].split("=", 2)
            if len(parts) != 3 or not parts[1] or not parts[2]:
                raise SRSError("malformed SRS1 address")
            hashed, first, opaque = parts
            self._check_hash(hashed, first, opaque)
            # opaque keeps the separator that followed SRS0 (``=HHHH=TT=...``)
            return f"SRS0{opaque}@{first}"
        parts = local[5:].split("=", 3)
        if len(parts) != 4 or not all(parts):
            raise SRSError("malformed SRS0 address")
        hashed, stamp, domain, original = parts
        self._check_hash(hashed, stamp, domain, original)
        if not timestamp_valid(stamp, self.max_age_days, now):
            raise SRSError("SRS address expired")
        return f"{original}@{domain}"


def is_srs(address: str) -> bool:
    """Whether ``address``'s local part looks like SRS (SRS0/SRS1 and a separator)."""
    local = address.rpartition("@")[0]
    return len(local) > 4 and local[:4].upper() in ("SRS0", "SRS1") and local[4] in "=+-"


def timestamp(now: float | None = None) -> str:
    """Today's two-character base32 day stamp (libsrs2's ``srs_timestamp_create``)."""
    day = int((time.time() if now is None else now) // _DAY)
    return _BASE32[(day >> 5) & 31] + _BASE32[day & 31]


def timestamp_valid(stamp: str, max_age_days: int, now: float | None = None) -> bool:
    """Whether ``stamp`` is at most ``max_age_days`` old (modulo 1024 days, as libsrs2)."""
    if len(stamp) != 2:
        return False
    try:
        then = (_BASE32.index(stamp[0].upper()) << 5) | _BASE32.index(stamp[1].upper())
    except ValueError:
        return False
    today = int((time.time() if now is None else now) // _DAY) % _TIME_SLOTS
    return (today - then) % _TIME_SLOTS <= max_age_days


def load_keys(path: str) -> tuple[bytes, ...]:
    """The secrets of an SRS key file: one a line, the first signs (blank lines and ``#``
    comments skipped). ValueError when it holds none."""
    with open(path, "rb") as handle:
        lines = handle.read(1 << 16).splitlines()
    keys = tuple(line.strip() for line in lines
                 if line.strip() and not line.strip().startswith(b"#"))
    if not keys:
        raise ValueError(f"{path} holds no SRS key")
    return keys


def new_key() -> bytes:
    """A new random secret for an SRS key file (32 bytes, base64: one line)."""
    return base64.b64encode(secrets.token_bytes(32))


def write_key_file(path: str, keys: Sequence[bytes] = ()) -> bytes:
    """Write a key file (mode 0600): a new key first, then ``keys`` (older ones, which keep
    verifying). Never over an existing file unless the caller moved it aside. The new key."""
    key = new_key()
    data = b"\n".join((key, *keys)) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return key
