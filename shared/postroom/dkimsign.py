"""DKIM signing (RFC 6376, RSA-2048 and ed25519 per RFC 8463) and key generation, for the MSA.

Signatures are relaxed/relaxed, cover the header fields RFC 6376 section
5.4.1 recommends that are present, and "oversign" the fields a recipient
trusts most (From and the others in :data:`OVERSIGNED`): one extra,
absent instance is listed in ``h=``, so a field of that name added later
breaks the signature (RFC 6376 section 8.15).
"""

from __future__ import annotations

import base64
import re

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
RSA_BITS = 2048

# RFC 6376 section 5.4.1 (and its list of fields that "SHOULD be included")
SIGNED_HEADERS = (
    "from", "reply-to", "subject", "date", "to", "cc", "resent-date", "resent-from",
    "resent-to", "resent-cc", "in-reply-to", "references", "message-id", "mime-version",
    "content-type", "content-transfer-encoding", "content-id", "content-description",
    "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe",
    "list-post", "list-owner", "list-archive", "sender",
)
# fields whose addition after signing would change what the reader sees or DMARC decides
OVERSIGNED = ("from", "reply-to", "subject", "date", "to", "cc", "sender")

_HEADER_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)


class DKIMSignError(ValueError):
    """The key or the message cannot be signed (bad key, no From field...)."""


def generate_keys(algorithm: str = "rsa-sha256") -> tuple[bytes, str]:
    """A new key pair: (private key as PKCS#8 PEM, the DNS TXT value to publish at the selector)."""
    if algorithm == "rsa-sha256":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return pem, dns_txt_value(pem, algorithm)
    if algorithm == "ed25519-sha256":
        ed_key = ed25519.Ed25519PrivateKey.generate()
        pem = ed_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
        return pem, dns_txt_value(pem, algorithm)
    raise DKIMSignError(
        f"unknown DKIM algorithm {algorithm!r} (use one of {', '.join(ALGORITHMS)})")


def dns_txt_value(private_key: bytes | str, algorithm: str = "rsa-sha256") -> str:
    """The selector's TXT record value (``v=DKIM1; k=...; p=...``) for a private key."""
    key = _load_key(private_key, algorithm)
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")


def sign(message: bytes, domain: str, selector: str, private_key: bytes | str,
         algorithm: str = "rsa-sha256", *, linesep: bytes = b"\r\n") -> bytes:
    """The ``DKIM-Signature:`` header field (ending in ``linesep``) to prepend to ``message``.

    ``private_key`` is a PEM key (PKCS#8 or PKCS#1 for RSA, PKCS#8 for
    ed25519) or, for ed25519, the base64 of the 32-byte seed as dkimpy and
    RFC 8463 use.
    """
    key = _load_key(private_key, algorithm)
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < RSA_BITS // 2:
            raise DKIMSignError("RSA signing keys must have at least 1024 bits (RFC 8301)")
        dkimpy_key = key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption())
    else:
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        dkimpy_key = base64.b64encode(seed)
    headers = _header_names(message)
    if headers.count(b"from") != 1:
        raise DKIMSignError("a message to sign must have exactly one From header field")
    include = [name for name in headers if name.decode("ascii") in SIGNED_HEADERS]
    include += [name.encode("ascii") for name in OVERSIGNED]
    try:
        signer = dkim.DKIM(message, signature_algorithm=algorithm.encode("ascii"), linesep=linesep)
        return bytes(signer.sign(selector.encode("ascii"), domain.encode("ascii"), dkimpy_key,
                                 canonicalize=(b"relaxed", b"relaxed"),
                                 include_headers=include))
    except dkim.DKIMException as exc:
        raise DKIMSignError(str(exc)) from exc


def _header_names(message: bytes) -> list[bytes]:
    end = re.search(rb"\r?\n\r?\n", message)
    head = message[: end.start()] if end else message
    return [m.group(1).lower() for m in _HEADER_NAME.finditer(head)]


def _load_key(private_key: bytes | str,
              algorithm: str) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    data = private_key.encode("ascii") if isinstance(private_key, str) else private_key
    if algorithm not in ALGORITHMS:
        raise DKIMSignError(f"unknown DKIM algorithm {algorithm!r}")
    if b"-----BEGIN" not in data:
        if algorithm != "ed25519-sha256":
            raise DKIMSignError("an RSA key must be PEM")
        try:
            return ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(data.strip()))
        except ValueError as exc:
            raise DKIMSignError("not a base64 ed25519 seed") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise DKIMSignError("cannot read the private key (PEM, unencrypted)") from exc
    wanted = rsa.RSAPrivateKey if algorithm == "rsa-sha256" else ed25519.Ed25519PrivateKey
    if not isinstance(key, wanted):
        raise DKIMSignError(f"the key does not match algorithm {algorithm}")
    return key
