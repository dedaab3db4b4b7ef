"""DKIM signing helpers: key generation, the signed header list, errors."""

from __future__ import annotations

import re

import pytest

from postroom.mailauth import dkimsign

MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


def _h_tag(header: bytes) -> list[str]:
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", header).decode()
    value = re.search(r"\bh=([^;]+);", unfolded).group(1)
    return [name.strip() for name in value.split(":")]


def test_rsa_keys_are_2048_bits_with_a_dkim1_record():
    private, txt = dkimsign.generate_keys("rsa-sha256")
    assert private.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert txt.startswith("v=DKIM1; k=rsa; p=MIIBIjAN")  # 2048-bit SubjectPublicKeyInfo


def test_ed25519_record_carries_the_raw_public_key():
    _private, txt = dkimsign.generate_keys("ed25519-sha256")
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", txt)


def test_signature_is_relaxed_and_oversigns_from():
    private, _txt = dkimsign.generate_keys("ed25519-sha256")
    header = dkimsign.sign(MESSAGE, "example.org", "s1", private, "ed25519-sha256")
    assert b"c=relaxed/relaxed" in header
    assert _h_tag(header).count("from") == 2


def test_signature_covers_present_recommended_fields_only_once_plus_oversigned():
    private, _txt = dkimsign.generate_keys("ed25519-sha256")
    header = dkimsign.sign(MESSAGE, "example.org", "s1", private, "ed25519-sha256")
    names = _h_tag(header)
    assert names.count("to") == 2 and names.count("subject") == 2 and "received" not in names


def test_message_without_from_cannot_be_signed():
    private, _txt = dkimsign.generate_keys("ed25519-sha256")
    with pytest.raises(dkimsign.DKIMSignError):
        dkimsign.sign(b"To: b@example.net\r\n\r\nbody\r\n", "example.org", "s1", private,
                      "ed25519-sha256")


def test_key_of_the_wrong_algorithm_is_refused():
    private, _txt = dkimsign.generate_keys("ed25519-sha256")
    with pytest.raises(dkimsign.DKIMSignError):
        dkimsign.sign(MESSAGE, "example.org", "s1", private, "rsa-sha256")


def test_unknown_algorithm_is_refused():
    with pytest.raises(dkimsign.DKIMSignError):
        dkimsign.generate_keys("rsa-sha1")
