"""`postroom doctor DOMAIN`: everything that decides deliverability, checked from the outside.

Each check looks at what a receiving (or sending) server sees: DNS through
the configured resolver, our certificate, and our listeners over TCP. The
checks are pure over a :class:`~postroom.net.dns.Resolver` and a
:class:`Probes` (the HTTPS fetch of an MTA-STS policy and a TCP connect), so
tests drive them against the loopback DNS server with each check passing
and failing. The records a fix asks for come from
:mod:`postroom.mailauth.dnsrecords` (what `postroom dns` prints), never
written a second time here.

Statuses: ``pass``; ``warn`` (works, but a receiver may judge it weaker or it
will break soon); ``fail`` (mail is refused, lands in spam, or is unprotected).
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import ssl
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from postroom.mailauth import dmarcrecord, dnsrecords, mtasts, tlsrpt
from postroom.net.dns import DNSError, NXDomain, Resolver
from postroom.ops.dnscheck import check_dkim

PASS, WARN, FAIL = "pass", "warn", "fail"
SPF_LOOKUP_LIMIT = 10  # RFC 7208 section 4.6.4
CERT_WARN_DAYS = 14
LISTENERS = (("smtp", 25), ("submissions", 465), ("submission", 587), ("imaps", 993))
MAX_POLICY = 64 * 1024


@dataclass(frozen=True)
class Check:
    """One check's outcome and, unless it passed, what to do about it."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


class Probes(Protocol):
    """What the checks ask beyond DNS: both blocking, both bounded by ``timeout``."""

    def fetch_sts_policy(self, domain: str) -> str:
        """The body of https://mta-sts.DOMAIN/.well-known/mta-sts.txt; raises OSError."""
        ...

    def connect(self, host: str, port: int) -> str | None:
        """None when ``host:port`` accepts a TCP connection, else why not."""
        ...


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """RFC 8461 3.3: a policy is never fetched through a redirect."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        raise OSError(f"HTTP {code} redirect (not followed, RFC 8461 3.3)")


@dataclass(frozen=True)
class NetProbes:
    """The real probes: HTTPS with certificate checks, TCP connects, short timeouts.

    The policy host must resolve to a public address (the console runs these for
    domain managers, who control their domain's DNS: no fetches into our network).
    """

    timeout: float = 5.0
    https_port: int = 443
    context: ssl.SSLContext | None = None
    allow_internal: bool = False

    def _public(self, host: str) -> None:
        infos = socket.getaddrinfo(host, self.https_port, type=socket.SOCK_STREAM)
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]))
            if not address.is_global and not self.allow_internal:
                raise OSError(f"{host} resolves to an internal address ({address}); refused")

    def fetch_sts_policy(self, domain: str) -> str:
        host = f"mta-sts.{domain}"
        self._public(host)
        port = "" if self.https_port == 443 else f":{self.https_port}"
        url = f"https://{host}{port}/.well-known/mta-sts.txt"
        handler = urllib.request.HTTPSHandler(context=self.context or ssl.create_default_context())
        opener = urllib.request.build_opener(handler, _NoRedirects())
        with opener.open(url, timeout=self.timeout) as answer:
            return bytes(answer.read(MAX_POLICY)).decode("utf-8", "replace")

    def connect(self, host: str, port: int) -> str | None:
        try:
            with socket.create_connection((host, port), timeout=self.timeout):
                return None
        except OSError as exc:
            return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class Facts:
    """What we know of ourselves: the names, addresses, keys and certificate to check against."""

    domain: str
    hostname: str  # our HELO name and MX host
    sending_ips: tuple[str, ...] = ()  # the relay's public addresses (empty: the hostname's)
    dkim_keys: tuple[Any, ...] = ()  # store rows: domain, selector, public_key_b64, state
    certificate: bytes | None = None  # PEM of our certificate chain (leaf first)
    report_address: str | None = None
    listeners: tuple[tuple[str, int], ...] = LISTENERS
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


# --- DNS helpers


def _lookup(fn: Callable[[str], list[Any]], name: str) -> tuple[list[Any] | None, str]:
    """(answers, "") or (None, why); a name that does not exist has no answers."""
    try:
        return list(fn(name)), ""
    except NXDomain:
        return [], ""
    except DNSError as exc:
        return None, f"lookup of {name} failed ({exc or type(exc).__name__})"


def _record(domain: str, hostname: str, report_address: str | None, marker: str,
            keys: Iterable[Any] = ()) -> str:
    """The line of `postroom dns DOMAIN` that contains ``marker`` (the fix to publish)."""
    lines = dnsrecords.all_records(domain, hostname, keys, report_address=report_address)
    found = next((line for line in lines if marker in line and not line.startswith(";")), "")
    # a record `postroom dns` prints commented out until it is switched on (MTA-STS in mode
    # none) is still the one to publish
    return found or next((line[2:] for line in lines
                          if line.startswith("; ") and line[2:].lstrip().startswith(marker)), "")


# --- the checks


def check_mx(resolver: Resolver, facts: Facts) -> list[Check]:
    """MX records name our host, and every MX host has an address."""
    fix = f"publish {_record(facts.domain, facts.hostname, None, ' IN MX ')}"
    answers, failed = _lookup(resolver.mx, facts.domain)
    if answers is None:
        return [Check("mx", FAIL, failed, "check the domain's DNS servers answer")]
    hosts = [host.lower().rstrip(".") for _pref, host in answers]
    if not hosts or hosts == [""]:
        return [Check("mx", FAIL, "no MX record: mail goes to the domain's address, if any",
                      fix)]
    out = [Check("mx", PASS, f"MX {', '.join(hosts)}") if facts.hostname in hosts else
           Check("mx", FAIL, f"MX {', '.join(hosts)} does not name {facts.hostname}", fix)]
    for host in hosts:
        v4, failed4 = _lookup(resolver.a, host)
        v6, failed6 = _lookup(resolver.aaaa, host)
        if v4 is None or v6 is None:
            out.append(Check(f"mx-address:{host}", FAIL, failed4 or failed6,
                             "check the DNS servers of the MX host's zone"))
        elif not v4 and not v6:
            out.append(Check(f"mx-address:{host}", FAIL, f"{host} has no A or AAAA record",
                             f"publish an A (and AAAA) record for {host}"))
        else:
            out.append(Check(f"mx-address:{host}", PASS, f"{host} is {', '.join(v4 + v6)}"))
    return out


def sending_addresses(resolver: Resolver, facts: Facts) -> list[str]:
    """The addresses our mail leaves from: configured, else the host name's."""
    if facts.sending_ips:
        return list(facts.sending_ips)
    v4, _ = _lookup(resolver.a, facts.hostname)
    v6, _ = _lookup(resolver.aaaa, facts.hostname)
    return (v4 or []) + (v6 or [])


def check_fcrdns(resolver: Resolver, facts: Facts, ips: Sequence[str]) -> list[Check]:
    """Each sending address's PTR is our HELO name, which resolves back to it (FCrDNS)."""
    if not ips:
        return [Check("fcrdns", FAIL, f"{facts.hostname} has no address to send from",
                      f"publish an A record for {facts.hostname}")]
    out = []
    for ip in ips:
        names, failed = _lookup(resolver.ptr, ip)
        fix = f"ask whoever runs {ip}'s network to set its PTR record to {facts.hostname}"
        if names is None:
            out.append(Check(f"fcrdns:{ip}", FAIL, failed, fix))
            continue
        names = [n.lower().rstrip(".") for n in names]
        if facts.hostname not in names:
            out.append(Check(f"fcrdns:{ip}", FAIL,
                             f"PTR of {ip} is {', '.join(names) or 'missing'}, not "
                             f"{facts.hostname} (the HELO name)", fix))
            continue
        fwd, failed = _lookup(resolver.aaaa if ":" in ip else resolver.a, facts.hostname)
        if not fwd or ip not in fwd:
            out.append(Check(f"fcrdns:{ip}", FAIL,
                             f"{facts.hostname} does not resolve back to {ip}",
                             f"publish {facts.hostname} IN {'AAAA' if ':' in ip else 'A'} {ip}"))
            continue
        out.append(Check(f"fcrdns:{ip}", PASS, f"{ip} <-> {facts.hostname}"))
    return out


# --- SPF: syntax, DNS lookups counted (RFC 7208 4.6.4), our addresses covered


@dataclass
class _SPFWalk:
    resolver: Resolver
    lookups: int = 0
    errors: list[str] = field(default_factory=list)


def _spf_record(resolver: Resolver, domain: str) -> tuple[str | None, str]:
    texts, failed = _lookup(resolver.txt, domain)
    if texts is None:
        return None, failed
    found = [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
    if len(found) != 1:
        return None, ("no SPF record" if not found else
                      f"{len(found)} SPF records (receivers treat that as permerror)")
    return found[0], ""


def _in_net(ip: str, net: str, default_len: int) -> bool:
    try:
        address = ipaddress.ip_address(ip)
        prefix = net if "/" in net else f"{net}/{default_len}"
        return address in ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        return False


def _spf_covers(walk: _SPFWalk, domain: str, ips: Sequence[str],
                depth: int = 0) -> set[str]:
    """The addresses of ``ips`` that ``domain``'s SPF record passes; counts lookups."""
    if depth > SPF_LOOKUP_LIMIT:
        walk.errors.append("include loop")
        return set()
    record, failed = _spf_record(walk.resolver, domain)
    if record is None:
        walk.errors.append(f"{domain}: {failed}")
        return set()
    covered: set[str] = set()
    redirect = None
    for term in record.split()[1:]:
        qualifier = term[0] if term[0] in "+-~?" else "+"
        body = term[1:] if term[0] in "+-~?" else term
        name, _, arg = body.partition(":")
        name = name.lower()
        if "=" in body and ":" not in body.split("=", 1)[0]:
            key, _, value = body.partition("=")
            if key.lower() == "redirect":
                redirect = value
            elif key.lower() != "exp":
                walk.errors.append(f"unknown modifier {key}")
            continue
        hit: set[str] = set()
        if name.startswith("ip4") or name.startswith("ip6"):
            net = body.split(":", 1)[1] if ":" in body else ""
            hit = {ip for ip in ips if _in_net(ip, net, 128 if name == "ip6" else 32)}
        elif name in ("a", "mx") or name.startswith(("a/", "mx/")):
            walk.lookups += 1
            target = (arg.split("/")[0] if arg else domain)
            hosts = [target]
            if name.startswith("mx"):
                mx, _ = _lookup(walk.resolver.mx, target)
                hosts = [h for _p, h in mx or []]
            for host in hosts:
                v4, _ = _lookup(walk.resolver.a, host)
                v6, _ = _lookup(walk.resolver.aaaa, host)
                hit |= {ip for ip in ips if ip in (v4 or []) + (v6 or [])}
        elif name == "include":
            walk.lookups += 1
            hit = _spf_covers(walk, arg, ips, depth + 1)
        elif name in ("exists", "ptr"):
            walk.lookups += 1
        elif name == "all":
            if qualifier == "+":
                walk.errors.append("+all lets anyone send as the domain")
            if qualifier == "+":
                hit = set(ips)
            break
        else:
            walk.errors.append(f"unknown mechanism {term[:40]}")
            continue
        if qualifier == "+":
            covered |= hit
    else:
        if redirect:
            walk.lookups += 1
            covered |= _spf_covers(walk, redirect, ips, depth + 1)
    return covered


def check_spf(resolver: Resolver, facts: Facts, ips: Sequence[str]) -> list[Check]:
    """One SPF record, valid, within 10 DNS lookups, passing our sending addresses."""
    fix = f"publish {_record(facts.domain, facts.hostname, None, 'v=spf1')}"
    record, failed = _spf_record(resolver, facts.domain)
    if record is None:
        return [Check("spf", FAIL, failed, fix)]
    walk = _SPFWalk(resolver)
    covered = _spf_covers(walk, facts.domain, ips)
    if walk.errors:
        return [Check("spf", FAIL, f"{record}: {'; '.join(walk.errors[:3])}", fix)]
    if walk.lookups > SPF_LOOKUP_LIMIT:
        return [Check("spf", FAIL, f"{walk.lookups} DNS lookups (limit {SPF_LOOKUP_LIMIT}): "
                      "receivers answer permerror", "flatten includes into ip4:/ip6: terms")]
    missing = [ip for ip in ips if ip not in covered]
    if missing:
        return [Check("spf", FAIL, f"{record} does not pass {', '.join(missing)}",
                      f"add ip4:/ip6: terms for {', '.join(missing)} (or use {fix})")]
    return [Check("spf", PASS, f"{record} ({walk.lookups} lookups)")]


def check_dkim_keys(resolver: Resolver, facts: Facts) -> list[Check]:
    """Every active key's record published with its public key (postroom.ops.dnscheck)."""
    keys = [k for k in facts.dkim_keys if k.state in ("active", "pending")]
    if not keys:
        return [Check("dkim", FAIL, "no DKIM key: mail is unsigned",
                      f"postroom dkim generate {facts.domain}")]
    out = []
    for finding in check_dkim(resolver, keys):
        key = next(k for k in keys if k.selector == finding.selector)
        fix = "" if finding.ok else "publish " + dnsrecords.dkim_record(
            {"domain": key.domain, "selector": key.selector, "algorithm": key.algorithm,
             "public_key_b64": key.public_key_b64})
        status = PASS if finding.ok else FAIL if key.state == "active" else WARN
        out.append(Check(f"dkim:{finding.selector}", status, finding.detail, fix))
    return out


def check_dmarc(resolver: Resolver, facts: Facts) -> list[Check]:
    """A DMARC record that parses, with a ``rua`` to collect aggregate reports."""
    fix = "publish " + _record(facts.domain, facts.hostname, facts.report_address, "_dmarc.")
    texts, failed = _lookup(resolver.txt, f"_dmarc.{facts.domain}")
    if texts is None:
        return [Check("dmarc", FAIL, failed, fix)]
    found = [t for t in texts if dmarcrecord.is_dmarc(t)]
    if len(found) != 1:
        return [Check("dmarc", FAIL, "no DMARC record" if not found else
                      f"{len(found)} DMARC records", fix)]
    try:
        record = dmarcrecord.parse(found[0])
    except ValueError as exc:
        return [Check("dmarc", FAIL, f"malformed: {exc}", fix)]
    out = [Check("dmarc", PASS if record.p != "none" else WARN, f"p={record.p}",
                 "" if record.p != "none" else
                 "raise p= to quarantine, then reject, once reports show your mail passes")]
    if record.rua:
        out.append(Check("dmarc-rua", PASS, ", ".join(record.rua)))
    else:
        out.append(Check("dmarc-rua", WARN, "no rua=: nobody tells you who sends as you", fix))
    return out


def check_mta_sts(resolver: Resolver, probes: Probes, facts: Facts) -> list[Check]:
    """The ``_mta-sts`` record, the policy served over HTTPS, and its ``mx`` naming our MX."""
    fix = (f"`postroom domain mta-sts {facts.domain} testing` (then enforce), publish "
           + _record(facts.domain, facts.hostname, None, "_mta-sts.")
           + " and serve the policy (docs/relay.md, MTA-STS)")
    texts, failed = _lookup(resolver.txt, f"_mta-sts.{facts.domain}")
    if texts is None:
        return [Check("mta-sts", FAIL, failed, fix)]
    found = [t for t in texts if t.startswith("v=STSv1")]
    if len(found) != 1 or mtasts.parse_txt(found) is None:
        return [Check("mta-sts", WARN, "no MTA-STS record: senders may deliver without TLS"
                      if not found else f"{len(found)} MTA-STS records" if len(found) > 1
                      else "MTA-STS record malformed (v=STSv1; id=...)", fix)]
    try:
        text = probes.fetch_sts_policy(facts.domain)
    except (OSError, ValueError) as exc:
        return [Check("mta-sts", FAIL, f"policy not reachable: {exc}"[:300],
                      f"serve https://mta-sts.{facts.domain}/.well-known/mta-sts.txt "
                      "with a valid certificate")]
    try:
        policy = mtasts.parse_policy(text)
    except mtasts.PolicyError as exc:
        return [Check("mta-sts", FAIL, f"policy malformed: {exc}"[:300], fix)]
    mx, _ = _lookup(resolver.mx, facts.domain)
    hosts = [h.lower().rstrip(".") for _p, h in mx or []]
    unmatched = [h for h in hosts if not policy.allows(h)]
    if unmatched:
        return [Check("mta-sts", FAIL, f"policy mx {list(policy.mx)} does not match "
                      f"{', '.join(unmatched)}", f"add 'mx: {unmatched[0]}' to the policy")]
    if not policy.enforced:
        return [Check("mta-sts", WARN, f"mode {policy.mode}",
                      "switch to mode: enforce once TLS reports show no failures")]
    return [Check("mta-sts", PASS, f"mode enforce, mx {', '.join(policy.mx)}")]


def check_tlsrpt(resolver: Resolver, facts: Facts) -> list[Check]:
    """A ``_smtp._tls`` record with a mailto: rua (RFC 8460)."""
    fix = "publish " + _record(facts.domain, facts.hostname, facts.report_address, "_smtp._tls.")
    texts, failed = _lookup(resolver.txt, f"_smtp._tls.{facts.domain}")
    if texts is None:
        return [Check("tls-rpt", FAIL, failed, fix)]
    record = tlsrpt.find_record(texts)
    if record is None:
        return [Check("tls-rpt", WARN, "no TLS-RPT record: nobody tells you of TLS failures",
                      fix)]
    return [Check("tls-rpt", PASS, ", ".join(record.rua))]


# --- our certificate: names, expiry, DANE


def load_chain(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def _names(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return [n.lower() for n in ext.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        return []


def check_certificate(facts: Facts) -> list[Check]:
    """Our certificate names our host and is not (nearly) expired."""
    if not facts.certificate:
        return [Check("certificate", FAIL, "no certificate configured (POSTROOM_TLS_CERT_FILE)",
                      "postroom tls (docs/operations.md, TLS)")]
    leaf = load_chain(facts.certificate)[0]
    names = _names(leaf)
    out = []
    if facts.hostname in names or any(mtasts.mx_matches(n, facts.hostname) for n in names
                                      if n.startswith("*.")):
        out.append(Check("certificate-name", PASS, f"names {', '.join(names[:5])}"))
    else:
        out.append(Check("certificate-name", FAIL,
                         f"names {', '.join(names[:5]) or 'nothing'}, not {facts.hostname}",
                         f"get a certificate for {facts.hostname}"))
    expires = leaf.not_valid_after_utc
    left = expires - facts.now
    if left <= timedelta(0):
        out.append(Check("certificate-expiry", FAIL, f"expired {expires:%Y-%m-%d}",
                         "renew the certificate"))
    elif left < timedelta(days=CERT_WARN_DAYS):
        out.append(Check("certificate-expiry", WARN, f"expires {expires:%Y-%m-%d}",
                         "renew the certificate now"))
    else:
        out.append(Check("certificate-expiry", PASS, f"expires {expires:%Y-%m-%d}"))
    return out


def tlsa_data(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    """The TLSA association data of ``cert`` (RFC 6698 2.1)."""
    data = (cert.public_bytes(serialization.Encoding.DER) if selector == 0 else
            cert.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def check_dane(resolver: Resolver, facts: Facts) -> list[Check]:
    """TLSA records at ``_25._tcp.HOST`` match our certificate (3 1 1 is what to publish)."""
    name = f"_25._tcp.{facts.hostname}"
    chain = load_chain(facts.certificate) if facts.certificate else []
    suggestion = (f"publish {name}. IN TLSA 3 1 1 {tlsa_data(chain[0], 1, 1).hex()}"
                  if chain else "configure a certificate first")
    answers, failed = _lookup(lambda n: resolver.query(n, "TLSA"), name)
    if answers is None:
        return [Check("dane", FAIL, failed, suggestion)]
    if not answers:
        return [Check("dane", WARN, "no TLSA record: DANE senders cannot authenticate us",
                      suggestion + " (in a DNSSEC-signed zone)")]
    for rdata in answers:
        usage, selector, mtype = int(rdata.usage), int(rdata.selector), int(rdata.mtype)
        candidates = chain[:1] if usage in (1, 3) else chain[1:] if usage in (0, 2) else []
        if any(tlsa_data(c, selector, mtype) == bytes(rdata.cert) for c in candidates
               if selector in (0, 1) and mtype in (0, 1, 2)):
            return [Check("dane", PASS, f"{name} {usage} {selector} {mtype} matches")]
    return [Check("dane", FAIL, f"no TLSA record at {name} matches our certificate: DANE "
                  "senders will not deliver", suggestion)]


def check_listeners(resolver: Resolver, probes: Probes, facts: Facts) -> list[Check]:
    """Our public host answers on the mail ports (a TCP connect, short timeout)."""
    out = []
    for service, port in facts.listeners:
        why = probes.connect(facts.hostname, port)
        out.append(Check(f"listener:{port}", PASS, f"{service} answers") if why is None else
                   Check(f"listener:{port}", FAIL, f"{service} on {facts.hostname}:{port}: "
                         f"{why}"[:300], f"open port {port} in the firewall and check the "
                         "service runs (postroom up)"))
    return out


def run_checks(resolver: Resolver, probes: Probes, facts: Facts) -> list[Check]:
    """Every check, in the order a receiver meets them."""
    facts = replace(facts, domain=facts.domain.lower().rstrip("."),
                    hostname=facts.hostname.lower().rstrip("."))
    ips = sending_addresses(resolver, facts)
    return [*check_mx(resolver, facts), *check_fcrdns(resolver, facts, ips),
            *check_spf(resolver, facts, ips), *check_dkim_keys(resolver, facts),
            *check_dmarc(resolver, facts), *check_mta_sts(resolver, probes, facts),
            *check_tlsrpt(resolver, facts), *check_dane(resolver, facts),
            *check_certificate(facts), *check_listeners(resolver, probes, facts)]


def summary(checks: Iterable[Check]) -> Mapping[str, int]:
    counts = {PASS: 0, WARN: 0, FAIL: 0}
    for check in checks:
        counts[check.status] += 1
    return counts


def render(checks: Sequence[Check]) -> list[str]:
    """One line per check (and its fix, indented) for the terminal."""
    lines = []
    for check in checks:
        lines.append(f"{check.status.upper():<5} {check.name:<22} {check.detail}")
        if check.fix and check.status != PASS:
            lines.append(f"{'':<28}fix: {check.fix}")
    return lines


def facts_from_settings(settings: Any, domain: str, keys: Sequence[Any],
                        now: datetime | None = None) -> Facts:
    """Our side of the checks from the settings: host name, bind address, certificate file."""
    certificate = None
    if settings.tls_cert_file:
        try:
            with open(settings.tls_cert_file, "rb") as handle:
                certificate = handle.read()
        except OSError:
            certificate = None
    return Facts(domain=domain, hostname=settings.hostname,
                 sending_ips=(settings.smtp_bind_address,) if settings.smtp_bind_address else (),
                 dkim_keys=tuple(keys), certificate=certificate,
                 report_address=settings.dmarc_report_mailbox or None,
                 now=now or datetime.now(UTC))


def as_json(domain: str, checks: Sequence[Check]) -> dict[str, Any]:
    """The form `--json` prints and the API answers."""
    return {"domain": domain, "summary": dict(summary(checks)),
            "checks": [c.to_json() for c in checks]}
