"""DKIM signing through OpenSSL with cached keys gives exactly dkimpy's own signature field.

postroom.mailauth.dkimsign rebuilds dkimpy's ``DKIM.sign`` with the private-key step
done by `cryptography` and the loaded key cached (see its docstring). RSA
PKCS#1 v1.5 and ed25519 are deterministic, so for the same message, key and
second (``t=``) the field must equal dkimpy's byte for byte, and verify.
"""

from __future__ import annotations

import base64
import re
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from postroom.mailauth import dkimsign

MESSAGE = (b"Received: from client by mx\r\n"
           b"From: Ann <ann@example.org>\r\nTo: b@example.net,\r\n  c@example.net\r\n"
           b"Subject:   folded   and\r\n\tspaced  \r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n"
           b"Message-ID: <1@example.org>\r\n\r\n"
           b"line one  \r\n\r\nline\t three \r\n\r\n\r\n")


def _dkimpy_key(pem: bytes, algorithm: str) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    if algorithm == "rsa-sha256":
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
    return base64.b64encode(key.private_bytes(serialization.Encoding.Raw,
                                              serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption()))


def _include(header: bytes) -> list[bytes]:
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", header)
    value = re.search(rb"\bh=([^;]+);", unfolded).group(1)
    return [name.strip() for name in value.split(b":")]


@pytest.mark.parametrize("algorithm", dkimsign.ALGORITHMS)
def test_signature_is_byte_for_byte_dkimpys(algorithm):
    pem, txt = dkimsign.generate_keys(algorithm)
    for _ in range(5):  # the two must fall in the same second (t=)
        started = int(time.time())
        ours = dkimsign.sign(MESSAGE, "example.org", "sel", pem, algorithm)
        theirs = dkim.DKIM(MESSAGE, signature_algorithm=algorithm.encode()).sign(
            b"sel", b"example.org", _dkimpy_key(pem, algorithm),
            canonicalize=(b"relaxed", b"relaxed"), include_headers=_include(ours))
        if int(time.time()) == started:
            break
    assert ours == bytes(theirs)
    record = txt.encode()

    def dns(name, timeout=5):
        return record if name == b"sel._domainkey.example.org." else None

    assert dkim.verify(ours + MESSAGE, dnsfunc=dns)


def test_a_loaded_key_is_reused_and_a_rotated_key_is_a_new_one():
    first, _txt = dkimsign.generate_keys("rsa-sha256")
    second, _txt = dkimsign.generate_keys("rsa-sha256")
    one = dkimsign.sign(MESSAGE, "example.org", "sel", first)
    hits = dkimsign._signing_key.cache_info().hits
    dkimsign.sign(MESSAGE, "example.org", "sel", first.decode())
    assert dkimsign._signing_key.cache_info().hits == hits + 1
    other = dkimsign.sign(MESSAGE, "example.org", "sel", second)
    assert other.split(b" b=")[-1] != one.split(b" b=")[-1]


def test_a_bad_key_fails_every_time_and_is_not_cached():
    for _ in range(2):
        with pytest.raises(dkimsign.DKIMSignError):
            dkimsign.sign(MESSAGE, "example.org", "sel", b"-----BEGIN PRIVATE KEY-----\nxx\n")
