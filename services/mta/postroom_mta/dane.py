"""DANE for SMTP (RFC 7672): TLSA lookup when DNSSEC-validated, and matching a peer's chain.

We do not validate DNSSEC ourselves: like Postfix's
``smtp_dns_support_level = dnssec`` we trust the AD bit of the configured
resolver (POSTROOM_DNS_SERVERS), which must therefore be a validating
resolver we trust and reach over a trusted path (a local unbound). A lookup
has three outcomes (:func:`lookup_tlsa`, RFC 7672 section 2.2):

* secure (AD set, NOERROR or NXDOMAIN): the usable TLSA records, maybe none;
* insecure (no AD): None, DANE does not apply (RFC 6698 section 4.1:
  records that are not secure are unusable), opportunistic TLS;
* failed (SERVFAIL, REFUSED, timeout: possibly a bogus answer, or an
  attacker suppressing it): :class:`TLSALookupError`. The MX is then unusable
  for this attempt (section 2.2.2): the router tries the next one and never
  falls back to cleartext. As Postfix does, a failed TLSA lookup only counts
  when the MX host's own address records are secure
  (:func:`addresses_secure`): a host in an unsigned zone cannot have secure
  TLSA records, and deferring its mail because its servers choke on TLSA
  queries would block mail DANE could not have protected.

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

from postroom.logs import get_logger
from postroom.net.dns import Resolver

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


class TLSALookupError(Exception):
    """A DNSSEC lookup for DANE failed (SERVFAIL, REFUSED, timeout): try again later."""


def _checked(response: dns.message.Message, qname: str) -> bool:
    """Whether ``response`` is secure (AD); raises TLSALookupError unless NOERROR/NXDOMAIN."""
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise TLSALookupError(f"{qname}: {dns.rcode.to_text(rcode)}")
    return bool(response.flags & dns.flags.AD)


def tlsa_from_response(response: dns.message.Message) -> list[TLSA] | None:
    """TLSA records of a DNS answer; None unless validated (AD); raises TLSALookupError."""
    if not _checked(response, str(response.question[0].name) if response.question else "?"):
        return None
    found = []
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.TLSA:
            for rd in rrset:
                found.append(TLSA(rd.usage, rd.selector, rd.mtype, bytes(rd.cert)))
    return found


def _secure_query(resolver: Resolver, qname: str,
                  rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
    """Ask the configured servers with DO and AD set; raises TLSALookupError. Blocking."""
    query = dns.message.make_query(qname, rdtype, want_dnssec=True)
    query.flags |= dns.flags.AD  # RFC 6840 5.7: ask for the AD bit
    servers = resolver.servers or tuple(
        (str(ns), 53) for ns in dns.resolver.get_default_resolver().nameservers)
    errors = []
    for address, server_port in servers:
        try:
            response = dns.query.udp(query, address, port=server_port, timeout=resolver.timeout)
            if response.flags & dns.flags.TC:
                response = dns.query.tcp(query, address, port=server_port,
                                         timeout=resolver.timeout)
        except (OSError, dns.exception.DNSException) as exc:
            log.info("dnssec lookup failed", name=qname, server=address, error=str(exc)[:200])
            errors.append(f"{address}: {type(exc).__name__}")
            continue
        return response
    raise TLSALookupError(f"{qname}: {'; '.join(errors) or 'no DNS server'}")


def lookup_tlsa(resolver: Resolver, host: str, port: int = 25) -> list[TLSA] | None:
    """``_port._tcp.host`` TLSA records when DNSSEC-validated, else None. Blocking.

    An empty list is a validated "no TLSA" (secure NXDOMAIN or NODATA): the MX
    then gets MTA-STS or opportunistic TLS, as with None (not validated).
    Raises TLSALookupError when the answer could not be had.
    """
    qname = f"_{port}._tcp.{host.rstrip('.')}"
    return tlsa_from_response(_secure_query(resolver, qname, dns.rdatatype.TLSA))


def addresses_secure(resolver: Resolver, host: str) -> bool:
    """Whether ``host``'s A records (or their denial) are validated; raises TLSALookupError."""
    name = host.rstrip(".")
    return _checked(_secure_query(resolver, name, dns.rdatatype.A), name)


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


@dataclass(frozen=True)
class DANEPolicy:
    """A :attr:`TLSPolicy.creator` for one TLSA RRset: makes a DANECreator per MX name.

    A value, not a closure: two equal RRsets give equal creators, so an idle
    session the relay's session cache keys by TLSPolicy (already verified
    against these very records) may be reused, and one verified against other
    records never is.
    """

    records: tuple[TLSA, ...]

    def __call__(self, hostname: str) -> DANECreator:
        return DANECreator(hostname, self.records)
