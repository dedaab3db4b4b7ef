"""TOTP codes (RFC 6238 test vectors), the ±1 step window, replay refusal, recovery codes, the
QR code, and the shape of app passwords: pure functions, no store."""

from __future__ import annotations

import base64
import re
from urllib.parse import parse_qs, urlparse

import pytest

from postroom.auth import totp
from postroom.store import apppasswords

# RFC 6238 Appendix B: the keys are ASCII digits, 20/32/64 bytes for SHA-1/256/512
KEYS = {"sha1": b"12345678901234567890",
        "sha256": b"12345678901234567890123456789012",
        "sha512": b"1234567890123456789012345678901234567890123456789012345678901234"}
VECTORS = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


def b32(key: bytes) -> str:
    return base64.b32encode(key).decode("ascii")


@pytest.mark.parametrize(("when", "sha1", "sha256", "sha512"), VECTORS)
def test_rfc6238_test_vectors(when, sha1, sha256, sha512):
    step = totp.step_at(when)
    for digest, expected in (("sha1", sha1), ("sha256", sha256), ("sha512", sha512)):
        assert totp.code_at_step(b32(KEYS[digest]), step, digits=8, digest=digest) == expected


def test_the_step_is_thirty_seconds_of_unix_time():
    assert totp.step_at(59) == 1 and totp.step_at(60) == 2 and totp.step_at(0) == 0


SECRET = b32(KEYS["sha1"])
NOW = 1_700_000_000.0


def code(offset: int) -> str:
    return totp.code_at_step(SECRET, totp.step_at(NOW) + offset)


def test_a_code_matches_its_step_and_one_step_either_side():
    current = totp.step_at(NOW)
    for offset in (-1, 0, 1):
        assert totp.matching_step(SECRET, code(offset), now=NOW) == current + offset


def test_a_code_two_steps_away_does_not_match():
    assert totp.matching_step(SECRET, code(2), now=NOW) is None
    assert totp.matching_step(SECRET, code(-2), now=NOW) is None


def test_a_step_not_after_the_last_accepted_is_refused_as_a_replay():
    current = totp.step_at(NOW)
    assert totp.matching_step(SECRET, code(0), now=NOW, last_step=current) is None
    assert totp.matching_step(SECRET, code(-1), now=NOW, last_step=current - 1) is None
    assert totp.matching_step(SECRET, code(1), now=NOW, last_step=current) == current + 1


def test_codes_may_be_typed_with_spaces_but_must_be_six_digits():
    typed = code(0)
    assert totp.matching_step(SECRET, f"{typed[:3]} {typed[3:]}", now=NOW) is not None
    for bad in ("", "12345", "1234567", "12a456", "\uff11\uff12\uff13\uff14\uff15\uff16"):
        assert totp.normalise_code(bad) is None


def test_provisioning_uri_names_issuer_account_and_secret():
    secret = totp.new_secret()
    assert len(secret) == 32 and re.fullmatch(r"[A-Z2-7]{32}", secret)
    uri = urlparse(totp.provisioning_uri(secret, "alice@example.test", "Example Mail"))
    assert uri.scheme == "otpauth" and uri.netloc == "totp"
    query = parse_qs(uri.query)
    assert query["secret"] == [secret] and query["issuer"] == ["Example Mail"]
    assert "alice%40example.test" in uri.path or "alice@example.test" in uri.path


def test_recovery_codes_are_ten_distinct_and_typed_in_any_case_or_spacing():
    codes = totp.new_recovery_codes()
    assert len(codes) == 10 and len(set(codes)) == 10
    assert all(re.fullmatch(r"[a-z2-9]{5}-[a-z2-9]{5}", c) for c in codes)
    first = codes[0]
    digest = totp.recovery_code_hash(first)
    assert digest is not None and len(digest) == 64
    assert totp.recovery_code_hash(first.upper().replace("-", " ")) == digest
    assert totp.recovery_code_hash("123456") is None
    assert totp.recovery_code_hash("x" * 1000) is None


def test_the_qr_code_is_an_inline_svg():
    svg = totp.totp_qr_svg(totp.provisioning_uri(totp.new_secret(), "a@example.test"))
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "<script" not in svg and "href" not in svg


def test_app_password_secrets_and_what_may_be_typed_for_them():
    secret = apppasswords.new_secret()
    assert re.fullmatch(r"[a-z]{4}(-[a-z]{4}){3}", secret)
    letters = secret.replace("-", "")
    assert apppasswords.normalise_secret(secret) == letters
    assert apppasswords.normalise_secret(secret.upper().replace("-", " ")) == letters
    for other in ("correct horse battery", "abcd-efgh-ijkl", "abcd-efgh-ijkl-mno1", "a" * 100):
        assert apppasswords.normalise_secret(other) is None


def test_protocol_lists_are_checked_and_sorted():
    assert apppasswords.check_protocols(None) is None
    assert apppasswords.check_protocols([]) is None
    assert apppasswords.check_protocols(["POP3", "imap", "imap"]) == ("imap", "pop3")
    with pytest.raises(ValueError):
        apppasswords.check_protocols(["smtp"])
