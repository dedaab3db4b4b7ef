"""Time-based one-time passwords (TOTP, RFC 6238) for two-factor login, with pyotp; recovery
codes; the QR code a phone's authenticator app scans (segno, SVG).

Pure functions: :mod:`postroom.store.totp` keeps the secret (sealed with
:mod:`postroom.secretbox` when a key is configured), the last accepted time
step and the hashed recovery codes. A code is accepted for the current 30 s
step or one step either side (clocks drift), and only for a step later than
the last one accepted for the account, so a code seen over someone's
shoulder cannot be used again. Recovery codes are ten random words of ten
letters and digits (about 49 bits each), shown once and kept as SHA-256:
they are random, so a slow hash would add nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import pyotp
import segno

STEP_SECONDS = 30
DIGITS = 6
# steps accepted either side of the current one (RFC 6238 section 5.2 recommends at most one)
WINDOW = 1
RECOVERY_CODES = 10
# letters and digits that cannot be misread (no 0/o, 1/l/i)
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
RECOVERY_HALF = 5
DEFAULT_ISSUER = "Postroom"


def new_secret() -> str:
    """A fresh TOTP secret: 32 base32 characters (160 bits, the size RFC 4226 recommends)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, account: str, issuer: str = DEFAULT_ISSUER) -> str:
    """The ``otpauth://totp/...`` URI an authenticator app takes (as text or as a QR code)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=account, issuer_name=issuer)


def step_at(when: float) -> int:
    """The TOTP time step of a Unix time."""
    return int(when // STEP_SECONDS)


def code_at_step(secret: str, step: int, *, digits: int = DIGITS,
                 digest: str = "sha1") -> str:
    """The code of ``step`` (RFC 6238 with HMAC-SHA-1 as authenticator apps use)."""
    otp = pyotp.TOTP(secret, digits=digits, interval=STEP_SECONDS,
                     digest=getattr(hashlib, digest))
    return otp.generate_otp(step)


def normalise_code(text: str) -> str | None:
    """The six digits of a typed code (spaces allowed), or None when it is not one."""
    digits = text.replace(" ", "").strip()
    if len(digits) != DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    return digits


def matching_step(secret: str, code: str, *, last_step: int | None = None,
                  now: float | None = None, window: int = WINDOW) -> int | None:
    """The time step ``code`` is right for (current first, then ±``window``), or None.

    A step not later than ``last_step`` (the last one accepted) is never matched:
    the caller stores the returned step as the new ``last_step``.
    """
    typed = normalise_code(code)
    if typed is None:
        return None
    current = step_at(time.time() if now is None else now)
    offsets = [0] + [sign * k for k in range(1, window + 1) for sign in (-1, 1)]
    found = None
    for offset in offsets:
        step = current + offset
        if step < 0 or (last_step is not None and step <= last_step):
            continue
        # compare every candidate (constant work whichever matches)
        if hmac.compare_digest(code_at_step(secret, step), typed) and found is None:
            found = step
    return found


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """Fresh single-use recovery codes, ``abcde-23456``."""
    def half() -> str:
        return "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_HALF))
    return [f"{half()}-{half()}" for _ in range(count)]


def normalise_recovery_code(text: str) -> str | None:
    """The ten characters of a typed recovery code (dash, spaces and case ignored), or None."""
    if len(text) > 40:
        return None
    chars = text.replace("-", "").replace(" ", "").strip().lower()
    if len(chars) != 2 * RECOVERY_HALF or not all(c in RECOVERY_ALPHABET for c in chars):
        return None
    return chars


def recovery_code_hash(code: str) -> str | None:
    """The SHA-256 (hex) a recovery code is kept as, or None when ``code`` cannot be one."""
    chars = normalise_recovery_code(code)
    return None if chars is None else hashlib.sha256(chars.encode("ascii")).hexdigest()


def totp_qr_svg(uri: str, *, scale: int = 4) -> str:
    """An inline ``<svg>`` QR code of ``uri`` for the web page (no external resources)."""
    return str(segno.make(uri, error="m").svg_inline(scale=scale))
