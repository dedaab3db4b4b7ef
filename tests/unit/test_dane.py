"""DANE (RFC 7672) matching: TLSA usages 2 and 3, selectors, matching types, and the AD gate."""

from __future__ import annotations

import datetime
import hashlib

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from postroom_mta.dane import TLSA, TLSALookupError, selected, tlsa_from_response, verify_chain

DER = serialization.Encoding.DER
MX = "mx.two.test"


def _cert(name: str, key: ec.EllipticCurvePrivateKey, issuer_name: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, sans: tuple[str, ...] = ()
          ) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(DER)


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    ca_key, other_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("Test CA", ca_key, "Test CA", ca_key, ca=True)
    other_ca = _cert("Other CA", other_key, "Other CA", other_key, ca=True)
    leaf = _cert(MX, leaf_key, "Test CA", ca_key, ca=False, sans=(MX,))
    return {"ca": ca, "other_ca": other_ca, "leaf": leaf}


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_dane_ee_spki_sha256_matches_leaf(pki: dict[str, bytes]) -> None:
    record = TLSA(3, 1, 1, sha256(selected(pki["leaf"], 1)))
    assert verify_chain([record], [pki["leaf"]], ["elsewhere.test"])  # EE ignores names


def test_dane_ee_full_certificate_exact_match(pki: dict[str, bytes]) -> None:
    assert verify_chain([TLSA(3, 0, 0, pki["leaf"])], [pki["leaf"]], [MX])


def test_dane_ee_sha512_matches(pki: dict[str, bytes]) -> None:
    record = TLSA(3, 0, 2, hashlib.sha512(pki["leaf"]).digest())
    assert verify_chain([record], [pki["leaf"]], [MX])


def test_dane_ee_mismatch_fails(pki: dict[str, bytes]) -> None:
    assert not verify_chain([TLSA(3, 1, 1, sha256(b"not it"))], [pki["leaf"]], [MX])


def test_dane_ta_matches_issuer_in_chain(pki: dict[str, bytes]) -> None:
    record = TLSA(2, 0, 1, sha256(pki["ca"]))
    assert verify_chain([record], [pki["leaf"], pki["ca"]], [MX])


def test_dane_ta_requires_the_mx_name(pki: dict[str, bytes]) -> None:
    record = TLSA(2, 0, 1, sha256(pki["ca"]))
    assert not verify_chain([record], [pki["leaf"], pki["ca"]], ["mx.other.test"])


def test_dane_ta_requires_a_signature_chain(pki: dict[str, bytes]) -> None:
    # the anchor is presented but did not sign the leaf
    record = TLSA(2, 0, 1, sha256(pki["other_ca"]))
    assert not verify_chain([record], [pki["leaf"], pki["other_ca"]], [MX])


def test_pkix_usages_are_unusable_for_smtp(pki: dict[str, bytes]) -> None:
    records = [TLSA(1, 0, 0, pki["leaf"]), TLSA(0, 0, 1, sha256(pki["ca"]))]
    assert not verify_chain(records, [pki["leaf"], pki["ca"]], [MX])


def _tlsa_response(ad: bool, rcode: dns.rcode.Rcode = dns.rcode.NOERROR
                   ) -> dns.message.Message:
    query = dns.message.make_query("_25._tcp.mx.two.test", dns.rdatatype.TLSA)
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(
        "_25._tcp.mx.two.test.", 300, dns.rdataclass.IN, dns.rdatatype.TLSA,
        "3 1 1 " + "ab" * 32))
    if ad:
        response.flags |= dns.flags.AD
    response.set_rcode(rcode)
    if rcode != dns.rcode.NOERROR:
        response.answer.clear()
    return response


def test_tlsa_answer_with_ad_is_used() -> None:
    assert tlsa_from_response(_tlsa_response(ad=True)) == [TLSA(3, 1, 1, b"\xab" * 32)]


def test_tlsa_answer_without_ad_is_ignored() -> None:
    assert tlsa_from_response(_tlsa_response(ad=False)) is None


def test_secure_nxdomain_is_a_validated_absence_of_tlsa() -> None:
    assert tlsa_from_response(_tlsa_response(ad=True, rcode=dns.rcode.NXDOMAIN)) == []


def test_servfail_is_a_lookup_failure_not_an_absence() -> None:
    with pytest.raises(TLSALookupError):
        tlsa_from_response(_tlsa_response(ad=False, rcode=dns.rcode.SERVFAIL))


def test_dane_policies_for_equal_records_are_equal() -> None:
    # the relay's session cache keys idle sessions by TLSPolicy: equal RRsets may share one
    from postroom_mta.dane import DANEPolicy
    from postroom_mta.smtpclient import TLSPolicy

    record = TLSA(3, 1, 1, b"\xab" * 32)
    same = TLSPolicy(required=True, creator=DANEPolicy((record,)))
    assert same == TLSPolicy(required=True, creator=DANEPolicy((TLSA(3, 1, 1, b"\xab" * 32),)))
    assert same != TLSPolicy(required=True, creator=DANEPolicy((TLSA(3, 1, 1, b"\xcd" * 32),)))
