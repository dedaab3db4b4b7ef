"""DANE for SMTP (RFC 7672): TLSA lookup when DNSSEC-validated, and matching a peer's chain.

Only a validating resolver can vouch for TLSA records, so :func:`lookup_tlsa`
asks with the DO and AD bits and returns None unless the answer has AD set
(RFC 6698 section 4.1: records that are not secure are unusable). Our own
test DNS server never sets AD, so DANE is inert there; the matching logic is
pure and tested alone.

Usable records (section 3.1.3): usage 3 DANE-EE (the leaf's certificate or
key matches; no name or expiry check, section 3.1.1) and usage 2 DANE-TA
(a certificate in the chain matches and signs its way down to a leaf whose
name is the MX host, section 3.1.2). PKIX usages 0 and 1 are not used for
SMTP. Selector 0 is the whole certificate, 1 its SubjectPublicKeyInfo;
matching type 0 is exact, 1 SHA-256, 2 SHA-512.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from postroom.dns import Resolver
from postroom.logs import get_logger

log = get_logger("dane")

DANE_TA, DANE_EE = 2, 3
_HASHES = {1: hashlib.sha256, 2: hashlib.sha512}


@dataclass(frozen=True)
class TLSA:
    """One TLSA record."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        return (self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1)
                and self.mtype in (0, 1, 2))


def selected(cert_der: bytes, selector: int) -> bytes:
    """The bytes a TLSA selector names: the certificate (0) or its SubjectPublicKeyInfo (1)."""
    if selector == 0:
        return cert_der
    cert = x509.load_der_x509_certificate(cert_der)
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def record_matches(record: TLSA, cert_der: bytes) -> bool:
    """Whether ``cert_der`` matches ``record``'s selector and matching type."""
    data = selected(cert_der, record.selector)
    if record.mtype == 0:
        return data == record.data
    return _HASHES[record.mtype](data).digest() == record.data


def name_matches(cert: x509.Certificate, names: Sequence[str]) -> bool:
    """The leaf's DNS SANs (CN only without SANs) against ``names``; ``*.`` covers one label."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns_names = ext.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = [str(a.value) for a in
                     cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    wanted = {n.lower().rstrip(".") for n in names}
    for san in dns_names:
        san = san.lower().rstrip(".")
        if san in wanted:
            return True
        if san.startswith("*."):
            if any(w.partition(".")[2] == san[2:] and w.partition(".")[0] for w in wanted):
                return True
    return False


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_chain(records: Sequence[TLSA], chain: Sequence[bytes], names: Sequence[str]) -> bool:
    """Whether the peer's ``chain`` (DER, leaf first) satisfies one usable record.

    ``names`` are the reference identifiers for DANE-TA: the MX host name
    (and the TLSA base domain when it differs).
    """
    usable = [r for r in records if r.usable]
    if not chain or not usable:
        return False
    leaf_der = chain[0]
    if any(r.usage == DANE_EE and record_matches(r, leaf_der) for r in usable):
        return True
    ta_records = [r for r in usable if r.usage == DANE_TA]
    if not ta_records:
        return False
    certs = [x509.load_der_x509_certificate(der) for der in chain]
    if not name_matches(certs[0], names):
        return False
    # walk up the presented chain: each link must be signed by the next, until an anchor
    for depth in range(1, len(certs)):
        if not _signed_by(certs[depth - 1], certs[depth]):
            return False
        if any(record_matches(r, chain[depth]) for r in ta_records):
            return True
    return False


def tlsa_from_response(response: dns.message.Message) -> list[TLSA] | None:
    """TLSA records of a DNS answer; None unless the resolver validated it (AD set)."""
    if not response.flags & dns.flags.AD or response.rcode() not in (dns.rcode.NOERROR,
                                                                       dns.rcode.NXDOMAIN):
        return None
    found = []
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.TLSA:
            for rd in rrset:
                found.append(TLSA(rd.usage, rd.selector, rd.mtype, bytes(rd.cert)))
    return found


def lookup_tlsa(resolver: Resolver, host: str, port: int = 25) -> list[TLSA] | None:
    """``_port._tcp.host`` TLSA records when DNSSEC-validated, else None. Blocking.

    An empty list is a validated "no TLSA": the MX then gets opportunistic
    (or MTA-STS) TLS. A DNS failure is None too: we do not defer on it yet.
    """
    qname = f"_{port}._tcp.{host.rstrip('.')}"
    query = dns.message.make_query(qname, dns.rdatatype.TLSA, want_dnssec=True)
    query.flags |= dns.flags.AD  # RFC 6840 5.7: ask for the AD bit
    servers = resolver.servers or tuple(
        (str(ns), 53) for ns in dns.resolver.get_default_resolver().nameservers)
    for address, server_port in servers:
        try:
            response = dns.query.udp(query, address, port=server_port, timeout=resolver.timeout)
            if response.flags & dns.flags.TC:
                response = dns.query.tcp(query, address, port=server_port,
                                         timeout=resolver.timeout)
        except (OSError, dns.exception.DNSException) as exc:
            log.info("tlsa lookup failed", name=qname, server=address, error=str(exc)[:200])
            continue
        return tlsa_from_response(response)
    return None


@implementer(IOpenSSLClientConnectionCreator)
class DANECreator:
    """Client TLS whose handshake succeeds only if the chain matches the TLSA records."""

    def __init__(self, hostname: str, records: Sequence[TLSA]) -> None:
        self._hostname = hostname
        self._records = tuple(records)
        options = tssl.CertificateOptions(verify=False, raiseMinimumTo=tssl.TLSVersion.TLSv1_2)
        self._context = options.getContext()
        self._context.set_verify(SSL.VERIFY_PEER, self._verify)

    def _verify(self, conn: SSL.Connection, _cert: Any, _errno: int, depth: int,
                _ok: int) -> bool:
        if depth != 0:
            return True  # the decision is taken once, on the whole chain, at the leaf
        chain = conn.get_peer_cert_chain() or []
        ders = [c.to_cryptography().public_bytes(serialization.Encoding.DER) for c in chain]
        ok = verify_chain(self._records, ders, [self._hostname])
        if not ok:
            log.warning("dane verification failed", mx=self._hostname)
        return ok

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_tlsext_host_name(self._hostname.encode("idna"))
        connection.set_connect_state()
        return connection
