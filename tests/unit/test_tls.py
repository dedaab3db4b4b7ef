"""Certificates and contexts: self-signed generation, validation of PEM files, reload decisions."""

from __future__ import annotations

import ipaddress
import os
import stat
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet.testing import StringTransport

from postroom.net.tls import (
    SELF_SIGNED_DAYS,
    ServerTLS,
    TLSConfigError,
    TLSInfo,
    build_context_factory,
    make_self_signed,
    negotiated,
)


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_self_signed_certificate_names_hostname_localhost_and_loopback(tmp_path):
    make_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", "mail.example.test")
    san = _cert(tmp_path / "c.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.test", "localhost"]
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)


def test_self_signed_certificate_is_valid_for_825_days(tmp_path):
    make_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", "mail.example.test")
    cert = _cert(tmp_path / "c.pem")
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(lifetime.days - SELF_SIGNED_DAYS) <= 1


def test_self_signed_key_is_p256_by_default_and_private(tmp_path):
    make_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", "h.test")
    key = load_pem_private_key((tmp_path / "k.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert stat.S_IMODE(os.stat(tmp_path / "k.pem").st_mode) == 0o600


def test_self_signed_rsa_key_is_2048_bits(tmp_path):
    make_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", "h.test", key_type="rsa")
    key = load_pem_private_key((tmp_path / "k.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048


def test_context_refuses_a_key_that_does_not_match_the_certificate(tmp_path):
    make_self_signed(tmp_path / "a.pem", tmp_path / "a.key", "a.test")
    make_self_signed(tmp_path / "b.pem", tmp_path / "b.key", "b.test")
    with pytest.raises(TLSConfigError, match="does not match"):
        build_context_factory(str(tmp_path / "a.pem"), str(tmp_path / "b.key"))


def test_context_refuses_a_file_that_is_not_pem(tmp_path):
    make_self_signed(tmp_path / "a.pem", tmp_path / "a.key", "a.test")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match="not a PEM certificate"):
        build_context_factory(str(tmp_path / "junk.pem"), str(tmp_path / "a.key"))


def test_context_reports_a_missing_file_by_name(tmp_path):
    with pytest.raises(TLSConfigError, match=r"cannot read .*missing\.pem"):
        build_context_factory(str(tmp_path / "missing.pem"), str(tmp_path / "missing.key"))


def test_reload_keeps_the_old_context_when_the_new_file_is_bad(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    make_self_signed(cert, key, "h.test")
    tls = ServerTLS(str(cert), str(key))
    before = tls._options
    cert.write_text("garbage\n")
    assert tls.reload() is False
    assert tls._options is before
    assert tls.getContext() is not None


def test_check_reloads_only_when_a_file_changed(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    make_self_signed(cert, key, "h.test")
    tls = ServerTLS(str(cert), str(key))
    assert tls.check() is False
    time.sleep(0.01)  # distinct mtime_ns even on coarse filesystems
    make_self_signed(cert, key, "h.test")
    assert tls.check() is True
    assert tls.reloads == 1


def test_negotiated_is_none_without_tls():
    assert negotiated(StringTransport()) is None


def test_received_clause_reads_like_postfix():
    info = TLSInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", bits=256)
    assert info.received_clause() == (
        "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))")
