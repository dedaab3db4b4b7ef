"""Server TLS: contexts from PEM files, reloaded when they change, plus self-signed certificates.

:class:`ServerTLS` is an ``IOpenSSLContextFactory``: hand it to
``transport.startTLS(tls)`` (STARTTLS) or wrap a factory with
:func:`wrap_implicit` (ports 465/993/995). Twisted asks it for a context once
per connection, so swapping the context on reload affects new connections
only; established sessions keep the one they negotiated with.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import IOpenSSLContextFactory, IProtocolFactory
from twisted.internet.task import LoopingCall
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from postroom.interfaces import ReactorThreads, ReactorTime, twisted_clock
from postroom.logs import get_logger

log = get_logger("tls")

# Mozilla "intermediate" TLS 1.2 suites (forward secret AEAD only); TLS 1.3 suites are
# not governed by this string and OpenSSL's defaults for them are all good.
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)

SELF_SIGNED_DAYS = 825  # the longest validity clients (Apple, browsers) still accept


class TLSConfigError(ValueError):
    """A certificate or key file is missing, unreadable, malformed or mismatched."""


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {path}: {exc.strerror}") from None


def build_context_factory(cert_file: str, key_file: str) -> tssl.CertificateOptions:
    """Parse the PEM files with `cryptography` and make hardened CertificateOptions."""
    try:
        chain = x509.load_pem_x509_certificates(_read(cert_file))
    except ValueError as exc:
        raise TLSConfigError(f"{cert_file}: not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(_read(key_file), password=None)
    except (ValueError, TypeError) as exc:
        raise TLSConfigError(f"{key_file}: not an unencrypted PEM private key ({exc})") from None
    leaf = chain[0]
    if leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise TLSConfigError(f"{key_file} does not match the certificate in {cert_file}")
    try:
        options = tssl.CertificateOptions(
            # pyOpenSSL takes `cryptography` objects directly (its own wrappers are deprecated)
            privateKey=key,  # type: ignore[arg-type]
            certificate=leaf,  # type: ignore[arg-type]
            extraCertChain=chain[1:],  # type: ignore[arg-type]
            raiseMinimumTo=tssl.TLSVersion.TLSv1_2,
            acceptableCiphers=tssl.AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
            enableSessionTickets=False,  # tickets defeat forward secrecy without key rotation
            fixBrokenPeers=False,
        )
        # CertificateOptions already sets OP_NO_COMPRESSION and OP_CIPHER_SERVER_PREFERENCE;
        # building the context once now surfaces key/chain errors at load time, not per peer.
        options.getContext()
    except (SSL.Error, crypto.Error, TypeError, ValueError) as exc:
        raise TLSConfigError(f"{cert_file}: unusable certificate or key ({exc})") from None
    return options


def _stamp(*paths: str) -> tuple[tuple[int, int], ...]:
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((0, -1))
    return tuple(stamps)


@implementer(IOpenSSLContextFactory)
class ServerTLS:
    """The process's server TLS configuration, reloaded without a restart when files change."""

    def __init__(self, cert_file: str, key_file: str, *, watch_interval: float = 3.0) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.watch_interval = watch_interval
        self._stamp = _stamp(cert_file, key_file)
        self._options = build_context_factory(cert_file, key_file)
        self._watch: LoopingCall | None = None
        self.reloads = 0
        #: TLS-ALPN-01 (RFC 8737): name -> the challenge certificate and key to present to a
        #: client that offers only "acme-tls/1" for that name (set by the ACME answerer)
        self.alpn_challenges: dict[str, tuple[x509.Certificate, Any]] | None = None

    def answer_tls_alpn(self, challenges: dict[str, tuple[x509.Certificate, Any]]) -> None:
        """Present these challenge certificates on "acme-tls/1" connections from now on."""
        self.alpn_challenges = challenges
        _select_alpn(self._options.getContext(), self)

    def getContext(self) -> SSL.Context:
        return self._options.getContext()

    def reload(self) -> bool:
        """Load the files again; keep the current context (and log why) if they are bad."""
        self._stamp = _stamp(self.cert_file, self.key_file)
        try:
            options = build_context_factory(self.cert_file, self.key_file)
        except TLSConfigError as exc:
            log.error("tls reload failed, keeping previous certificate", error=str(exc))
            return False
        if self.alpn_challenges is not None:
            _select_alpn(options.getContext(), self)
        self._options = options
        self.reloads += 1
        log.info("tls certificate reloaded", cert_file=self.cert_file)
        return True

    def check(self) -> bool:
        """Reload if either file's mtime or size changed since the last attempt."""
        if _stamp(self.cert_file, self.key_file) != self._stamp:
            return self.reload()
        return False

    def start_watching(self, reactor: ReactorTime | None = None) -> None:
        """Poll the files every ``watch_interval`` seconds on the reactor."""
        if self._watch is not None:
            return
        self._watch = LoopingCall(self.check)
        if reactor is not None:
            self._watch.clock = twisted_clock(reactor)
        self._watch.start(self.watch_interval, now=False)

    def stop_watching(self) -> None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        self._watch = None

    def install_sighup(self, reactor: ReactorThreads) -> None:
        """Reload on SIGHUP (the signal arrives on the main thread; reload on the reactor)."""
        signal.signal(signal.SIGHUP, lambda _sig, _frame: reactor.callFromThread(self.reload))


ACME_TLS_ALPN = b"acme-tls/1"
# id-pe-acmeIdentifier (RFC 8737 section 6.1)
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def _select_alpn(context: SSL.Context, tls: ServerTLS) -> None:
    """Answer "acme-tls/1" with the name's challenge certificate; ignore every other ALPN."""
    def select(conn: SSL.Connection, offered: list[bytes]) -> Any:
        if ACME_TLS_ALPN in offered and tls.alpn_challenges:
            raw = conn.get_servername()
            name = raw.decode("ascii", "replace").lower() if raw else ""
            found = tls.alpn_challenges.get(name)
            if found is not None:
                # OpenSSL picks the certificate after ALPN, so switching here is in time
                conn.use_certificate(found[0])
                conn.use_privatekey(found[1])
                return ACME_TLS_ALPN
        return SSL.NO_OVERLAPPING_PROTOCOLS  # as before: no ALPN for anyone else
    context.set_alpn_select_callback(select)


def tls_alpn_certificate(name: str, key_authorization: str) -> tuple[x509.Certificate, Any]:
    """The self-signed TLS-ALPN-01 certificate for ``name`` (RFC 8737 section 3)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # the extension's value is the DER OCTET STRING of the digest
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID,
                                                  b"\x04\x20" + digest), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def wrap_implicit(factory: IProtocolFactory, tls: ServerTLS) -> TLSMemoryBIOFactory:
    """A factory whose connections speak TLS from the first byte (RFC 8314 ports)."""
    return TLSMemoryBIOFactory(tls, False, factory)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TLSInfo:
    """What a connection negotiated, for Received: clauses and logs."""

    version: str
    cipher: str
    bits: int | None

    def received_clause(self) -> str:
        """The Postfix-style comment: ``(using TLSv1.3 with cipher X (256/256 bits))``."""
        bits = f" ({self.bits}/{self.bits} bits)" if self.bits else ""
        return f"(using {self.version} with cipher {self.cipher}{bits})"


def negotiated(transport: Any) -> TLSInfo | None:
    """The TLS version and cipher of ``transport``, or None before/without TLS."""
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    handle = get_handle()
    if not isinstance(handle, SSL.Connection):
        return None
    cipher = handle.get_cipher_name()
    version = handle.get_protocol_version_name()
    if not cipher or not version or version == "Unknown":
        return None
    return TLSInfo(version=version, cipher=cipher, bits=handle.get_cipher_bits())


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    # rename() is atomic, so a watcher never sees half a file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_self_signed(cert_path: str | Path, key_path: str | Path, hostname: str, *,
                     key_type: str = "ec", days: int = SELF_SIGNED_DAYS) -> None:
    """Write a self-signed certificate for ``hostname``, localhost and 127.0.0.1 (key 0600)."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError("key_type must be 'ec' or 'rsa'")
    names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        names.append(x509.DNSName("localhost"))
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
              x509.IPAddress(ipaddress.ip_address("::1"))]
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Postroom self-signed")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=key_type == "rsa", content_commitment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # key first: a watcher that sees the new certificate must find its key already there
    _atomic_write(key_path, key_pem, 0o600)
    _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("self-signed certificate written", cert_file=str(cert_path), hostname=hostname,
             days=days)
