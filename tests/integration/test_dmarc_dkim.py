"""DKIM verification and ARC over the real loopback DNS server, with the RFC 8463 vectors."""

from __future__ import annotations

import secrets
from pathlib import Path

import dkim
import pytest

from postroom.mailauth import dkimsign
from postroom_dmarc import dkimcheck

DATA = Path(__file__).resolve().parents[1] / "data" / "dkim"
SIGNED = (DATA / "rfc6376.signed.msg").read_bytes()
UNSIGNED = (DATA / "rfc6376.msg").read_bytes()
ED25519_TXT = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
PLAIN = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n"
         b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\nbody\r\n")


@pytest.fixture
def football(dns_server):
    dns_server.set_records("brisbane._domainkey.football.example.com", "TXT", [ED25519_TXT])
    dns_server.set_records("test._domainkey.football.example.com", "TXT",
                           [(DATA / "test.txt").read_text().strip()])
    return dns_server


def test_rfc8463_vector_verifies_both_signatures(football):
    results = dkimcheck.verify_all(SIGNED, football.resolver())
    assert [(r.algorithm, r.selector, r.result) for r in results] == [
        ("ed25519-sha256", "brisbane", "pass"), ("rsa-sha256", "test", "pass")]


def test_changed_body_fails(football):
    results = dkimcheck.verify_all(SIGNED.replace(b"hungry", b"thirsty"), football.resolver())
    assert {r.result for r in results} == {"fail"}


def test_changed_header_fails(football):
    results = dkimcheck.verify_all(SIGNED.replace(b"Is dinner ready?", b"Send money"),
                                   football.resolver())
    assert {r.result for r in results} == {"fail"}


def test_signing_the_vector_with_its_ed25519_key_verifies(football):
    seed = (DATA / "rfc8032_7_1.key").read_bytes()
    header = dkimsign.sign(UNSIGNED, "football.example.com", "brisbane", seed, "ed25519-sha256")
    assert dkimcheck.verify_all(header + UNSIGNED, football.resolver())[0].result == "pass"


def test_signing_with_the_vector_rsa_key_verifies(football):
    key = (DATA / "test.private").read_bytes()
    header = dkimsign.sign(UNSIGNED, "football.example.com", "test", key, "rsa-sha256")
    assert dkimcheck.verify_all(header + UNSIGNED, football.resolver())[0].result == "pass"


@pytest.mark.parametrize("algorithm", dkimsign.ALGORITHMS)
def test_our_signature_verifies_and_breaks_on_change(dns_server, algorithm):
    private, txt = dkimsign.generate_keys(algorithm)
    dns_server.set_records("s1._domainkey.example.org", "TXT", [txt])
    signed = dkimsign.sign(PLAIN, "example.org", "s1", private, algorithm) + PLAIN
    resolver = dns_server.resolver()
    good = dkimcheck.verify_all(signed, resolver)[0]
    assert (good.result, good.domain, good.selector, good.algorithm) == (
        "pass", "example.org", "s1", algorithm)
    assert dkimcheck.verify_all(signed.replace(b"body", b"BODY"), resolver)[0].result == "fail"


def test_added_from_field_breaks_oversigned_signature(dns_server):
    private, txt = dkimsign.generate_keys("ed25519-sha256")
    dns_server.set_records("s1._domainkey.example.org", "TXT", [txt])
    signed = dkimsign.sign(PLAIN, "example.org", "s1", private, "ed25519-sha256") + PLAIN
    forged = signed.replace(b"\r\n\r\nbody", b"\r\nFrom: ceo@example.org\r\n\r\nbody")
    assert dkimcheck.verify_all(forged, dns_server.resolver())[0].result == "fail"


def test_missing_key_is_permerror(dns_server):
    private, _txt = dkimsign.generate_keys("ed25519-sha256")
    signed = dkimsign.sign(PLAIN, "example.org", "gone", private, "ed25519-sha256") + PLAIN
    result = dkimcheck.verify_all(signed, dns_server.resolver())[0]
    assert (result.result, result.reason) == ("permerror", "no key for signature")


def test_revoked_key_is_permerror(dns_server):
    private, _txt = dkimsign.generate_keys("rsa-sha256")
    dns_server.set_records("old._domainkey.example.org", "TXT", ["v=DKIM1; k=rsa; p="])
    signed = dkimsign.sign(PLAIN, "example.org", "old", private, "rsa-sha256") + PLAIN
    assert dkimcheck.verify_all(signed, dns_server.resolver())[0].result == "permerror"


def test_key_lookup_timeout_is_temperror(dns_server):
    private, _txt = dkimsign.generate_keys("ed25519-sha256")
    dns_server.timeout("slow._domainkey.example.org")
    signed = dkimsign.sign(PLAIN, "example.org", "slow", private, "ed25519-sha256") + PLAIN
    assert dkimcheck.verify_all(signed, dns_server.resolver(timeout=0.3))[0].result == "temperror"


def test_rsa_sha1_is_policy(football):
    key = (DATA / "test.private").read_bytes()
    header = dkim.sign(UNSIGNED, b"test", b"football.example.com", key,
                       signature_algorithm=b"rsa-sha1")
    result = dkimcheck.verify_all(header + UNSIGNED, football.resolver())[0]
    assert (result.result, result.algorithm) == ("policy", "rsa-sha1")


def _probable_prime(bits: int) -> int:
    """A random prime by Miller-Rabin: cryptography refuses to generate keys under 1024 bits."""
    while True:
        n = secrets.randbits(bits) | (3 << (bits - 2)) | 1  # top two bits: n*m has 2*bits
        d, s = n - 1, 0
        while d % 2 == 0:
            d, s = d // 2, s + 1
        for _ in range(20):
            x = pow(secrets.randbelow(n - 3) + 2, d, n)
            if x in (1, n - 1):
                continue
            for _ in range(s - 1):
                x = pow(x, 2, n)
                if x == n - 1:
                    break
            else:
                break
        else:
            return n


def _weak_rsa_key(bits: int) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    e = 65537
    while True:
        p, q = _probable_prime(bits // 2), _probable_prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e:
            break
    d = pow(e, -1, phi)
    key = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                rsa.RSAPublicNumbers(e, p * q)).private_key()
    return key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())


def test_rsa_key_below_1024_bits_is_policy(dns_server):
    pem = _weak_rsa_key(768)
    dns_server.set_records("weak._domainkey.example.org", "TXT",
                           [dkimsign.dns_txt_value(pem, "rsa-sha256")])
    header = dkim.sign(PLAIN, b"weak", b"example.org", pem)
    result = dkimcheck.verify_all(header + PLAIN, dns_server.resolver())[0]
    assert (result.result, result.key_bits) == ("policy", 768)


def test_malformed_signature_is_permerror(dns_server):
    msg = b"DKIM-Signature: this is not a tag list\r\n" + PLAIN
    assert dkimcheck.verify_all(msg, dns_server.resolver())[0].result == "permerror"


def test_unsigned_message_has_no_results(dns_server):
    assert dkimcheck.verify_all(PLAIN, dns_server.resolver()) == []


def test_arc_none_without_arc_headers(dns_server):
    assert dkimcheck.verify_arc(PLAIN, dns_server.resolver()).result == "none"


def _arc_sealed(dns_server):
    private, txt = dkimsign.generate_keys("rsa-sha256")
    dns_server.set_records("arc._domainkey.forwarder.test", "TXT", [txt])
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private, None)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    msg = b"Authentication-Results: forwarder.test; spf=pass smtp.mailfrom=example.org\r\n" + PLAIN
    headers = dkim.arc_sign(msg, b"arc", b"forwarder.test", pem, b"forwarder.test")
    return b"".join(headers) + msg


def test_arc_chain_passes_and_names_the_sealer(dns_server):
    result = dkimcheck.verify_arc(_arc_sealed(dns_server), dns_server.resolver())
    assert (result.result, result.sealers()) == ("pass", ["forwarder.test"])


def test_arc_chain_broken_by_a_change_fails(dns_server):
    sealed = _arc_sealed(dns_server).replace(b"body", b"tampered")
    assert dkimcheck.verify_arc(sealed, dns_server.resolver()).result == "fail"
