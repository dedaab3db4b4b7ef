"""ServerTLS answers TLS-ALPN-01 (RFC 8737) for acme-tls/1 only, and keeps doing so after a reload.

Handshakes in memory: pyOpenSSL's server Connection on ServerTLS's context, the stdlib's
SSLObject as the client (as the CA's validation would connect), bytes pumped between them.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL

from postroom.net.tls import (
    ACME_IDENTIFIER_OID,
    ServerTLS,
    make_self_signed,
    tls_alpn_certificate,
)


def _handshake(tls: ServerTLS, name: str, alpn: list[str]) -> tuple[x509.Certificate, str | None]:
    server = SSL.Connection(tls.getContext(), None)
    server.set_accept_state()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=name)
    for _ in range(20):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        if outgoing.pending:
            server.bio_write(outgoing.read())
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        while True:
            try:
                incoming.write(server.bio_read(65536))
            except SSL.WantReadError:
                break
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der), client.selected_alpn_protocol()


def _tls(tmp_path: Path) -> ServerTLS:
    make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "mx.example.org")
    tls = ServerTLS(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    tls.answer_tls_alpn({"mx.example.org": tls_alpn_certificate("mx.example.org", "tok.thumb")})
    return tls


def test_acme_tls_1_for_a_pending_name_gets_the_challenge_certificate(tmp_path):
    cert, chosen = _handshake(_tls(tmp_path), "mx.example.org", ["acme-tls/1"])
    assert chosen == "acme-tls/1"
    assert cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID).critical


def test_other_clients_and_other_names_get_the_certificate_and_no_alpn(tmp_path):
    tls = _tls(tmp_path)
    for name, alpn in (("mx.example.org", ["h2", "http/1.1"]), ("other.example", ["acme-tls/1"])):
        cert, chosen = _handshake(tls, name, alpn)
        assert chosen is None
        assert cert.subject.rfc4514_string().startswith("O=Postroom self-signed")


def test_a_reload_keeps_answering(tmp_path):
    tls = _tls(tmp_path)
    make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "renewed.example")
    assert tls.reload()
    _cert, chosen = _handshake(tls, "mx.example.org", ["acme-tls/1"])
    assert chosen == "acme-tls/1"
