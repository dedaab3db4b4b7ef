"""DKIM signing (RFC 6376, RSA-2048 and ed25519 per RFC 8463) and key generation: the msa's
signer, and through postroom.outgoing that of every message the suite writes.

Signatures are relaxed/relaxed, cover the header fields RFC 6376 section
5.4.1 recommends that are present, and "oversign" the fields a recipient
trusts most (From and the others in :data:`OVERSIGNED`): one extra,
absent instance is listed in ``h=``, so a field of that name added later
breaks the signature (RFC 6376 section 8.15).

Cost, measured for RSA-2048 on a loaded 2-core machine: loading a PEM key
with `cryptography` checks the key's consistency (about 60 ms of CPU), and
dkimpy's own RSA is pure Python (about 11 ms); OpenSSL signs in about 1 ms.
So the loaded key objects are kept in a small LRU cache keyed by the PEM
text and algorithm (:func:`_signing_key`; a rotated key is a new PEM and a
new entry, and the old one ages out; nothing is held that the MSA does not
read from the store for every message anyway), and :func:`_sign` is dkimpy's
``DKIM.sign`` for our parameters (relaxed/relaxed, no ``l=``) built from
dkimpy's own parsing, canonicalization, header selection and folding, with
only the private-key operation done by `cryptography`. RSA PKCS#1 v1.5 and
ed25519 signatures are deterministic, so the field is byte for byte what
dkimpy makes (tests/unit/test_dkim_sign.py compares them).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

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
    data = private_key.encode("ascii") if isinstance(private_key, str) else private_key
    key = _signing_key(data, algorithm)
    headers = _header_names(message)
    if headers.count(b"from") != 1:
        raise DKIMSignError("a message to sign must have exactly one From header field")
    include = [name for name in headers if name.decode("ascii") in SIGNED_HEADERS]
    include += [name.encode("ascii") for name in OVERSIGNED]
    try:
        return _sign(message, domain.encode("ascii"), selector.encode("ascii"), key,
                     algorithm.encode("ascii"), include, linesep)
    except dkim.DKIMException as exc:
        raise DKIMSignError(str(exc)) from exc


_SIGNATURE_FIELD = b"DKIM-Signature"
_RELAXED = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


def _sign(message: bytes, domain: bytes, selector: bytes,
          key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, algorithm: bytes,
          include_headers: list[bytes], linesep: bytes) -> bytes:
    """dkimpy's ``DKIM.sign`` + ``gen_header`` for relaxed/relaxed, signed by OpenSSL."""
    parsed = dkim.DKIM(message, signature_algorithm=algorithm, linesep=linesep)
    include = tuple(name.lower() for name in include_headers)
    for name in set(include).intersection(parsed.should_not_sign):
        raise DKIMSignError(f"the {name.decode()} header field should not be signed")
    body_hash = base64.b64encode(hashlib.sha256(_RELAXED.canonicalize_body(parsed.body)).digest())
    fields = [
        (b"v", b"1"), (b"a", algorithm), (b"c", _RELAXED.to_c_value()), (b"d", domain),
        (b"i", b"@" + domain), (b"q", b"dns/txt"), (b"s", selector),
        (b"t", str(int(time.time())).encode("ascii")), (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        # as dkimpy: a placeholder that makes b= fold onto a line of its own
        (b"b", b"0" * 60),
    ]
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_SIGNATURE_FIELD),
                      linesep=b"\r\n")
    value = dkim.RE_BTAG.sub(b"\\1", value)
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, _RELAXED, _RELAXED.canonicalize_headers(parsed.headers), include,
                      (_SIGNATURE_FIELD, b" " + value), dict(fields))
    digest = hasher.digest()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    else:
        signature = key.sign(digest)  # RFC 8463: ed25519 signs the SHA-256 of the headers
    fields[-1] = (b"b", base64.b64encode(signature))
    value = b"; ".join(b"=".join(f) for f in fields) + linesep
    return _SIGNATURE_FIELD + b": " + dkim.fold(value, namelen=len(_SIGNATURE_FIELD),
                                                 linesep=linesep)


@functools.lru_cache(maxsize=64)
def _signing_key(data: bytes, algorithm: str) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """The loaded (and checked) key, cached: loading is most of a signature's cost.

    Errors (DKIMSignError) are not cached: a bad key fails on every message.
    """
    key = _load_key(data, algorithm)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < RSA_BITS // 2:
        raise DKIMSignError("RSA signing keys must have at least 1024 bits (RFC 8301)")
    return key


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
