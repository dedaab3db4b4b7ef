"""Password hashing: scrypt in a self-describing string; imported hashes verified until replaced;
and the strength rule every password a person chooses must pass (:func:`check_password_strength`).

Stored form: ``$scrypt$ln=14,r=8,p=1$<salt>$<hash>`` where salt and hash are
unpadded standard base64, ``ln`` is log2 of scrypt's N. Passwords are
NFC-normalised first so that the same password typed on two systems that
compose accents differently still matches.

A bare bcrypt string, or a ``{SCHEME}hash`` that `postroom import dovecot`
kept from the old server (:mod:`postroom.auth.dovecotpw`), is verified too;
:func:`needs_rehash` is true for both, so the next successful login stores ours.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import unicodedata

from postroom.auth import dovecotpw

# ln=14 (N=16384, 16 MiB) costs about 60 ms on the project's machines: slow enough to make
# offline guessing expensive, fast enough that a burst of IMAP logins does not stall the db pool.
DEFAULT_LN = 14
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
_PREFIX = "$scrypt$"
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
# refuse absurd parameters read from a stored hash (a corrupt row must not exhaust memory)
_MAX_LN = 20


def _encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _secret(password: str) -> bytes:
    return unicodedata.normalize("NFC", password).encode("utf-8")


def _scrypt(secret: bytes, salt: bytes, ln: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << ln
    # hashlib's default maxmem (32 MiB) is below what some parameter sets need
    maxmem = 128 * r * n * 2 + 128 * r * p + (1 << 20)
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)


def hash_password(password: str, *, ln: int = DEFAULT_LN, r: int = DEFAULT_R,
                  p: int = DEFAULT_P) -> str:
    """Hash ``password`` with scrypt and a fresh random salt; tests may pass a cheaper ``ln``."""
    if not 1 <= ln <= _MAX_LN or r < 1 or p < 1:
        raise ValueError("scrypt parameters out of range")
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(_secret(password), salt, ln, r, p, HASH_BYTES)
    return f"{_PREFIX}ln={ln},r={r},p={p}${_encode(salt)}${_encode(digest)}"


def _parse_scrypt(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """(ln, r, p, salt, hash) of a stored scrypt string, or None when it is malformed."""
    if not stored.startswith(_PREFIX):
        return None
    parts = stored[len(_PREFIX):].split("$")
    if len(parts) != 3:
        return None
    params_text, salt_text, hash_text = parts
    try:
        params = dict(item.split("=", 1) for item in params_text.split(","))
        ln, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
        salt, digest = _decode(salt_text), _decode(hash_text)
    except (ValueError, KeyError, binascii.Error):
        return None
    if not 1 <= ln <= _MAX_LN or not 1 <= r <= 32 or not 1 <= p <= 16 or not salt or not digest:
        return None
    return ln, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (scrypt, bcrypt, or an imported Dovecot hash).

    Never raises for a malformed or unknown stored value: that is simply no match.
    """
    parsed = _parse_scrypt(stored)
    if parsed is not None:
        ln, r, p, salt, digest = parsed
        candidate = _scrypt(_secret(password), salt, ln, r, p, len(digest))
        return hmac.compare_digest(candidate, digest)
    if stored.startswith(_BCRYPT_PREFIXES):
        return _verify_bcrypt(password, stored)
    if stored.startswith("{"):
        return dovecotpw.verify(password, stored)
    return False


def _verify_bcrypt(password: str, stored: str) -> bool:
    try:
        import bcrypt
    except ImportError:
        return False
    try:
        return bool(bcrypt.checkpw(password.encode("utf-8"), stored.encode("ascii")))
    except ValueError:
        # malformed hash, or a password over bcrypt's 72-byte limit in newer releases
        return False


def needs_rehash(stored: str, *, ln: int = DEFAULT_LN, r: int = DEFAULT_R,
                 p: int = DEFAULT_P) -> bool:
    """True when ``stored`` is not scrypt with the current parameters (rehash at next login)."""
    parsed = _parse_scrypt(stored)
    if parsed is None:
        return True
    return parsed[:3] != (ln, r, p)


# --- strength: what a person may choose (imported hashes are exempt: their plaintext is unknown)

#: the default of POSTROOM_PASSWORD_MIN_LENGTH (NIST SP 800-63B asks for 8 at least; 12 keeps
#: an online guesser, even a patient one behind the login delays, far from any chance)
DEFAULT_MIN_LENGTH = 12
# longer is a paste accident, and scrypt of megabytes is a cost nobody needs
MAX_LENGTH = 1024


class WeakPassword(ValueError):
    """A password refused by :func:`check_password_strength`; the message says why."""


@functools.cache
def _common_passwords() -> frozenset[str]:
    """The 30,000 most common passwords (lower case), from the zxcvbn package (MIT licence,
    Dropbox's list built from leaked password sets); loaded once, when first needed."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS  # type: ignore[import-untyped]

    return frozenset(word.lower() for word in FREQUENCY_LISTS["passwords"])


def is_common_password(password: str) -> bool:
    """True when ``password`` (compared case-insensitively) is on the common-password list."""
    return unicodedata.normalize("NFC", password).casefold() in _common_passwords()


def check_password_strength(password: str, *, min_length: int = DEFAULT_MIN_LENGTH,
                            account: str | None = None) -> None:
    """Raise WeakPassword unless ``password`` may be set: at least ``min_length`` characters
    (POSTROOM_PASSWORD_MIN_LENGTH), not one character repeated, not on the common-password
    list (case-insensitively), and not the ``account``'s address or local part.

    Every place that sets a password from plaintext calls it (the CLI's `user add` and
    `user passwd`, imports of plaintext passwords); imported hashes cannot be checked.
    """
    text = unicodedata.normalize("NFC", password)
    if len(text) < min_length:
        raise WeakPassword(f"password too short: at least {min_length} characters are needed")
    if len(text) > MAX_LENGTH:
        raise WeakPassword(f"password too long: at most {MAX_LENGTH} characters")
    folded = text.casefold()
    if len(set(folded)) == 1:
        raise WeakPassword("password is one character repeated")
    if folded in _common_passwords():
        raise WeakPassword("password is on the list of common passwords; choose another")
    if account:
        name = account.strip().casefold()
        if folded in (name, name.split("@", 1)[0]):
            raise WeakPassword("password is the account's own name")
