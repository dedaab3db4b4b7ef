"""The MTA-STS policy we publish (RFC 8461): its text, its id, and the DNS lines for each mode."""

from __future__ import annotations

import pytest

from postroom.mailauth.dnsrecords import all_records, mta_sts_records
from postroom.mailauth.mtasts import policy_id, policy_text
from postroom.ops.acme import wanted_names


def test_the_policy_lists_version_mode_mx_and_max_age_in_crlf_lines():
    assert policy_text("enforce", ["Mail.Example.org."]) == (
        "version: STSv1\r\nmode: enforce\r\nmx: mail.example.org\r\nmax_age: 604800\r\n")


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="none, testing, enforce"):
        policy_text("strict", ["mx.example.org"])


def test_the_id_is_short_alphanumeric_and_follows_stamp_mode_and_mx():
    base = policy_id("20261207094500ab", "testing", ["mx.example.org"])
    assert base.isalnum() and 1 <= len(base) <= 32
    assert policy_id("20261207094500ab", "testing", ["mx.example.org"]) == base
    assert policy_id("20261207094501cd", "testing", ["mx.example.org"]) != base
    assert policy_id("20261207094500ab", "enforce", ["mx.example.org"]) != base
    assert policy_id("20261207094500ab", "testing", ["mx2.example.org"]) != base


def test_a_stamp_with_other_characters_still_makes_a_valid_id():
    made = policy_id("2026-12-07 09:45:00; x" * 3, "testing", ["mx.example.org"])
    assert made.isalnum() and len(made) <= 32


def test_mode_none_prints_the_records_commented_out_with_how_to_turn_it_on():
    lines = mta_sts_records("example.org", "mx.example.org", "none", None)
    assert all(line.startswith(";") for line in lines)
    assert any("postroom domain mta-sts example.org testing" in line for line in lines)


def test_a_mode_prints_the_txt_record_with_the_current_id():
    lines = all_records("example.org", "mx.example.org", [], mta_sts_mode="enforce",
                        mta_sts_stamp="20261207094500ab")
    wanted = policy_id("20261207094500ab", "enforce", ["mx.example.org"])
    assert f'_mta-sts.example.org. IN TXT "v=STSv1; id={wanted}"' in lines
    assert "mta-sts.example.org. IN CNAME mx.example.org." in lines


def test_the_certificate_covers_the_host_then_each_domains_web_names_once():
    assert wanted_names("MX.example.org.", ["b.test", "a.test", "A.test"]) == [
        "mx.example.org", "mta-sts.a.test", "autoconfig.a.test", "mta-sts.b.test",
        "autoconfig.b.test"]


def test_the_tls_alpn_01_certificate_names_the_host_and_carries_the_critical_digest():
    import hashlib

    from cryptography import x509

    from postroom.net.tls import ACME_IDENTIFIER_OID, tls_alpn_certificate

    cert, _key = tls_alpn_certificate("mx.example.org", "token.thumbprint")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["mx.example.org"]
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert ext.critical
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumbprint").digest()
