"""Authenticated encryption of secrets kept in the database (DKIM private keys, TOTP secrets),
and its key files.

A sealed value is one line of ASCII, so it fits the Text column that used to
hold the plaintext::

    enc:v1:<key id>:<base64url(nonce || AES-256-GCM ciphertext and tag)>

* ``v1`` is AES-256-GCM with a random 96-bit nonce. The associated data is
  ``enc:v1:<key id>:<purpose>``, so a value cannot be moved to another use
  (another column) or relabelled with another key id without failing.
* The key id is the first 8 hex digits of SHA-256 over a label and the key:
  it says which key sealed a row (rotation) and reveals nothing of the key.
* Anything that does not start with ``enc:`` is legacy plaintext and is
  returned as it is, so rows written before encryption keep working until
  ``postroom dkim encrypt-keys`` seals them.

Key files hold 32 random bytes, either raw (exactly 32 bytes) or as base64
text (standard or URL-safe alphabet; whitespace around it is ignored);
``postroom secret-key generate`` writes the base64 form with mode 0600.
POSTROOM_SECRET_KEY_FILE names the key new values are sealed with,
POSTROOM_SECRET_OLD_KEY_FILES older ones that are only tried for opening.

Every error is a :class:`SecretError` whose message is one line naming the
setting to look at; nothing here ever logs or shows a key or a plaintext.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import secrets
from collections.abc import Callable, Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_SIZE = 32
NONCE_SIZE = 12
PREFIX = "enc:"
V1 = "enc:v1:"
# the purpose of DKIM private keys (dkim_keys.private_key_pem); bound into every seal
DKIM_PRIVATE_KEY = "dkim_keys.private_key_pem"
# the purpose of two-factor login secrets (users.totp_secret; postroom.store.totp)
TOTP_SECRET = "users.totp_secret"  # noqa: S105 - a purpose label, not a secret

KEY_SETTING = "POSTROOM_SECRET_KEY_FILE"
OLD_KEYS_SETTING = "POSTROOM_SECRET_OLD_KEY_FILES"
# an opened value is cached by its sealed text (the msa opens the same few keys per message)
OPEN_CACHE_SIZE = 64


class SecretError(ValueError):
    """A secret cannot be sealed or opened; the message is one line for the operator."""


class SecretKeyMissing(SecretError):
    """A sealed value was read, or one must be written, and no key is configured."""


class SecretKeyUnknown(SecretError):
    """The value was sealed with a key that is not among the configured ones."""


class SecretTampered(SecretError):
    """The value is damaged, was changed, or was sealed for another purpose."""


def key_id(key: bytes) -> str:
    """The 8-hex-digit name of a key, as written into every value it seals."""
    return hashlib.sha256(b"postroom secretbox key id\0" + key).hexdigest()[:8]


def parse_key(data: bytes, source: str) -> bytes:
    """The 32-byte key in a key file's contents: raw, or base64 of 32 bytes."""
    if len(data) == KEY_SIZE:
        return data
    text = data.strip()
    try:
        key = base64.b64decode(text.replace(b"-", b"+").replace(b"_", b"/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_SIZE:
        raise SecretError(f"{source}: not a secret key (32 bytes, raw or base64; make one "
                          "with `postroom secret-key generate PATH`)")
    return key


def read_key_file(path: str, setting: str = KEY_SETTING) -> bytes:
    """The key in ``path``; SecretError naming ``setting`` when it is unreadable or malformed."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(4096)
    except OSError as exc:
        raise SecretError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    return parse_key(data, f"{setting}={path}")


def new_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)


def encode_key(key: bytes) -> bytes:
    """The key file form of a key: standard base64 and a newline."""
    return base64.b64encode(key) + b"\n"


def write_key_file(path: str, key: bytes | None = None) -> bytes:
    """Create ``path`` (mode 0600, never over an existing file) holding a new key; the key."""
    key = new_key() if key is None else key
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, encode_key(key))
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def is_sealed(stored: str) -> bool:
    """Whether a stored value is an envelope (else it is legacy plaintext)."""
    return stored.startswith(PREFIX)


def sealed_with(stored: str) -> str | None:
    """The key id of a ``v1`` envelope; None for plaintext (or an unknown version)."""
    if not stored.startswith(V1):
        return None
    return stored[len(V1):].partition(":")[0] or None


def _aad(kid: str, purpose: str) -> bytes:
    return f"{V1}{kid}:{purpose}".encode("ascii")


class Keyring:
    """The current key (seals and opens) and older ones (open only), by key id."""

    def __init__(self, current: bytes | None = None, old: Iterable[bytes] = ()) -> None:
        keys = ([current] if current is not None else []) + list(old)
        for key in keys:
            if len(key) != KEY_SIZE:
                raise SecretError(f"{KEY_SETTING}: a secret key is {KEY_SIZE} bytes")
        self.current_id = key_id(current) if current is not None else None
        self._ciphers: dict[str, AESGCM] = {}
        for key in keys:
            self._ciphers.setdefault(key_id(key), AESGCM(key))
        self.open_cached: Callable[[str, str], str] = functools.lru_cache(
            maxsize=OPEN_CACHE_SIZE)(self.open)

    @classmethod
    def from_files(cls, current: str | None, old: Sequence[str] = ()) -> Keyring:
        """Read the key files of POSTROOM_SECRET_KEY_FILE and POSTROOM_SECRET_OLD_KEY_FILES."""
        key = read_key_file(current) if current else None
        return cls(key, [read_key_file(p, OLD_KEYS_SETTING) for p in old])

    @property
    def can_seal(self) -> bool:
        """Whether a current key is configured (new secrets are then stored sealed)."""
        return self.current_id is not None

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._ciphers)

    def seal(self, plaintext: str, purpose: str) -> str:
        """The envelope of ``plaintext`` under the current key, bound to ``purpose``."""
        if self.current_id is None:
            raise SecretKeyMissing(f"{KEY_SETTING} is not set: cannot encrypt a secret")
        nonce = secrets.token_bytes(NONCE_SIZE)
        sealed = self._ciphers[self.current_id].encrypt(
            nonce, plaintext.encode("utf-8"), _aad(self.current_id, purpose))
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii")
        return f"{V1}{self.current_id}:{body}"

    def seal_if_possible(self, plaintext: str, purpose: str) -> str:
        """Sealed when a current key is configured, else the plaintext (the documented
        no-key mode: docs/decisions/0008-secrets-at-rest.md)."""
        return self.seal(plaintext, purpose) if self.can_seal else plaintext

    def open(self, stored: str, purpose: str) -> str:
        """The plaintext of an envelope (or a legacy plaintext value as it is)."""
        if not is_sealed(stored):
            return stored
        if not stored.startswith(V1):
            raise SecretTampered(f"a stored secret has an unknown format "
                                 f"{stored[:12]!r}... (written by a newer Postroom?)")
        kid, colon, body = stored[len(V1):].partition(":")
        if not colon:
            raise SecretTampered("a stored secret is damaged (no key id)")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            if not self._ciphers:
                raise SecretKeyMissing(
                    f"a stored secret is encrypted (key id {kid}) but {KEY_SETTING} is not set")
            raise SecretKeyUnknown(
                f"a stored secret is encrypted with key id {kid}, which is neither "
                f"{KEY_SETTING} nor one of {OLD_KEYS_SETTING} "
                f"(configured: {', '.join(self._ciphers)})")
        try:
            raw = base64.urlsafe_b64decode(body.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise SecretTampered(f"a stored secret (key id {kid}) is damaged") from None
        if len(raw) < NONCE_SIZE + 16:
            raise SecretTampered(f"a stored secret (key id {kid}) is damaged (too short)")
        try:
            plain = cipher.decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], _aad(kid, purpose))
        except InvalidTag:
            raise SecretTampered(f"a stored secret (key id {kid}) does not authenticate: it "
                                 "was changed, damaged, or sealed for another use") from None
        return plain.decode("utf-8")

    def needs_reseal(self, stored: str) -> bool:
        """Whether ``postroom dkim encrypt-keys`` would rewrite the value: plaintext, or
        sealed with a key other than the current one."""
        return self.current_id is not None and sealed_with(stored) != self.current_id
