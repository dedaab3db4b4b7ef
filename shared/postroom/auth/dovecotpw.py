"""Password hashes as Dovecot writes them (``{SCHEME}hash``), verified without re-hashing.

Accounts moved in by `postroom import dovecot` keep the hash their old server
had, scheme prefix and all, until their next successful login replaces it with
ours (:func:`postroom.store.users.authenticate`). The schemes are those
``doveadm pw`` writes:

- crypt(3) families: ``SHA512-CRYPT`` (``$6$``), ``SHA256-CRYPT`` (``$5$``),
  ``MD5-CRYPT`` (``$1$``), ``BLF-CRYPT`` (``$2y$``), and ``CRYPT`` (any of
  those, or traditional DES) -- through libpass, the maintained fork of passlib,
  and the bcrypt package;
- ``ARGON2I`` and ``ARGON2ID`` (``$argon2id$v=19$...``) -- argon2-cffi;
- salted and plain digests (``SSHA512``, ``SSHA256``, ``SSHA``, ``SMD5``,
  ``SHA512``, ``SHA256``, ``SHA``/``SHA1``, ``PLAIN-MD5``, ``LDAP-MD5``) --
  hashlib, base64 by default or hex, as Dovecot accepts (a ``.HEX`` or
  ``.B64`` suffix on the scheme says which);
- ``PLAIN``/``CLEAR`` are plaintext: the importer hashes them with ours at
  once and never stores them (:func:`is_plaintext`).

Which library and why: docs/decisions/0011-imported-password-hashes.md.
Nothing here raises for a malformed or unknown value: that is simply no match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable

# {SCHEME} or {SCHEME.ENC}: short, ASCII, checked before anything is parsed
_PREFIX = re.compile(r"\{([A-Z0-9-]{1,24})(?:\.(B64|BASE64|HEX))?\}")
PLAINTEXT_SCHEMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT"})
# bounds a stored value may have before it is even looked at (a corrupt row must stay cheap)
MAX_STORED = 1024
# argon2 parameters beyond these are refused rather than computed (memory in KiB)
MAX_ARGON2_MEMORY_KIB = 1 << 20
MAX_ARGON2_TIME = 64


def split_scheme(stored: str) -> tuple[str, str, str] | None:
    """(scheme, encoding or "", hash) of ``{SCHEME[.ENC]}hash``; None when it has no prefix."""
    match = _PREFIX.match(stored)
    if match is None:
        return None
    return match.group(1), (match.group(2) or ""), stored[match.end():]


def is_dovecot_hash(stored: str) -> bool:
    return split_scheme(stored) is not None


def is_plaintext(stored: str) -> bool:
    found = split_scheme(stored)
    return found is not None and found[0] in PLAINTEXT_SCHEMES


def _secret(password: str) -> bytes:
    # Dovecot compares the bytes the client sent; clients send UTF-8, most of them NFC
    return unicodedata.normalize("NFC", password).encode("utf-8")


def _decode(text: str, encoding: str, digest_size: int | None) -> bytes | None:
    """Hex or base64 bytes; with no explicit encoding, hex when it has the digest's hex length."""
    text = text.strip()
    try:
        if encoding == "HEX" or (not encoding and digest_size is not None
                                 and len(text) == 2 * digest_size
                                 and re.fullmatch(r"[0-9a-fA-F]+", text)):
            return bytes.fromhex(text)
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (ValueError, binascii.Error):
        return None


def _digest(name: str, salted: bool) -> Callable[[str, str, str], bool]:
    size = hashlib.new(name).digest_size

    def verify(password: str, encoding: str, value: str) -> bool:
        raw = _decode(value, encoding, None if salted else size)
        if raw is None or len(raw) < size or (not salted and len(raw) != size):
            return False
        digest, salt = raw[:size], raw[size:]
        return hmac.compare_digest(hashlib.new(name, _secret(password) + salt).digest(), digest)

    return verify


def _crypt(password: str, _encoding: str, value: str) -> bool:
    """A crypt(3) string: ``$6$``, ``$5$``, ``$1$``, ``$2a/b/y$`` or 13-character DES."""
    secret = _secret(password)
    try:
        if value.startswith(("$2a$", "$2b$", "$2y$")):
            import bcrypt
            return bool(bcrypt.checkpw(secret, value.encode("ascii")))
        from passlib.hash import des_crypt, md5_crypt, sha256_crypt, sha512_crypt
        for handler in (sha512_crypt, sha256_crypt, md5_crypt, des_crypt):
            if handler.identify(value):
                return bool(handler.verify(secret, value))
    except (ValueError, TypeError, UnicodeEncodeError):
        # malformed, or a password bcrypt refuses (over 72 bytes)
        return False
    return False


def _argon2(password: str, _encoding: str, value: str) -> bool:
    from argon2 import PasswordHasher, exceptions, extract_parameters
    from argon2.low_level import Type

    try:
        found = extract_parameters(value)
    except (exceptions.InvalidHashError, ValueError):
        return False
    # the cost comes from the stored value: refuse what would exhaust memory or time
    if found.type not in (Type.I, Type.ID) or found.memory_cost > MAX_ARGON2_MEMORY_KIB \
            or found.time_cost > MAX_ARGON2_TIME or found.parallelism > 16:
        return False
    try:
        return bool(PasswordHasher().verify(value, _secret(password)))
    except (exceptions.VerificationError, exceptions.InvalidHashError, ValueError):
        return False


def _scheme_crypt(prefixes: tuple[str, ...]) -> Callable[[str, str, str], bool]:
    def verify(password: str, encoding: str, value: str) -> bool:
        return value.startswith(prefixes) and _crypt(password, encoding, value)
    return verify


def _scheme_argon2(marker: str) -> Callable[[str, str, str], bool]:
    def verify(password: str, encoding: str, value: str) -> bool:
        return value.startswith(marker) and _argon2(password, encoding, value)
    return verify


VERIFIERS: dict[str, Callable[[str, str, str], bool]] = {
    "CRYPT": _crypt,
    "DES-CRYPT": _crypt,
    "MD5-CRYPT": _scheme_crypt(("$1$",)),
    "SHA256-CRYPT": _scheme_crypt(("$5$",)),
    "SHA512-CRYPT": _scheme_crypt(("$6$",)),
    "BLF-CRYPT": _scheme_crypt(("$2a$", "$2b$", "$2y$")),
    "ARGON2I": _scheme_argon2("$argon2i$"),
    "ARGON2ID": _scheme_argon2("$argon2id$"),
    "SSHA512": _digest("sha512", True),
    "SSHA256": _digest("sha256", True),
    "SSHA": _digest("sha1", True),
    "SMD5": _digest("md5", True),
    "SHA512": _digest("sha512", False),
    "SHA256": _digest("sha256", False),
    "SHA": _digest("sha1", False),
    "SHA1": _digest("sha1", False),
    "PLAIN-MD5": _digest("md5", False),
    "LDAP-MD5": _digest("md5", False),
}

SUPPORTED_SCHEMES = frozenset(VERIFIERS) | PLAINTEXT_SCHEMES


def verify(password: str, stored: str) -> bool:
    """True when ``password`` matches the Dovecot-style ``stored`` value."""
    if len(stored) > MAX_STORED:
        return False
    found = split_scheme(stored)
    if found is None:
        return False
    scheme, encoding, value = found
    if scheme in PLAINTEXT_SCHEMES:
        return hmac.compare_digest(_secret(password), _secret(value))
    verifier = VERIFIERS.get(scheme)
    return verifier is not None and verifier(password, encoding, value)
