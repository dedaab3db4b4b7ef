"""`postroom dns DOMAIN --check`: are the records `postroom dns` prints published?

Looks up the domain's MX, SPF and DMARC records and each DKIM key's TXT record
through the configured resolver (POSTROOM_DNS_SERVERS, else the system's), and
says per record whether it is there. A pending DKIM key whose record is
published with the same public key is reported as ready to activate; the
caller (the CLI) activates it in the store (docs/msa.md, "DKIM key lifecycle").
:func:`check_records` adds the MTA-STS and TLS-RPT records and pairs each finding
with the record to publish (postroom.mailauth.dnsrecords): the web console's DNS
page and ``/api/v1/domains/{domain}/dns/check``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from postroom.mailauth.dnsrecords import DnsRecord, expected_records
from postroom.net.dns import DNSError, NXDomain, Resolver

# a DKIM key record is one TXT record of at most a few kilobytes; refuse to parse more
_MAX_RECORD = 16384
# found values shown per record (a zone with more is wrong anyway), each at most this long
_MAX_FOUND = 10
_MAX_FOUND_CHARS = 2048

#: a record's status: published and right, missing, something else there, or no answer
PUBLISHED, MISSING, WRONG, UNKNOWN = "published", "missing", "wrong", "unknown"


@dataclass(frozen=True)
class Finding:
    """One record checked: what, where, whether it is right, and a line for the operator."""

    record: str  # "MX", "SPF", "DMARC" or "DKIM"
    name: str  # the DNS name looked up
    ok: bool
    detail: str
    selector: str | None = None  # DKIM: the key's selector
    activate: bool = False  # DKIM: a pending key whose record is published
    status: str = UNKNOWN  # PUBLISHED, MISSING, WRONG or UNKNOWN (the lookup failed)
    found: tuple[str, ...] = ()  # what DNS serves there (the relevant records)


def _found(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(v[:_MAX_FOUND_CHARS] for v in list(values)[:_MAX_FOUND])


def dkim_public_key(record: str) -> str | None:
    """The p= value of a ``v=DKIM1`` TXT record (whitespace removed), None if it is not one.

    Tags are split on ';' and '=' only (RFC 6376 3.2), no regular expression.
    """
    if len(record) > _MAX_RECORD:
        return None
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), "".join(value.split()))
    if tags.get("v", "DKIM1") != "DKIM1" or "p" not in tags:
        return None
    return tags["p"]


def _txt(resolver: Resolver, name: str) -> tuple[list[str] | None, str]:
    """(TXT records, "") or (None, why the lookup failed); NXDOMAIN is no records."""
    try:
        return resolver.txt(name), ""
    except NXDomain:
        return [], ""
    except DNSError as exc:
        return None, f"lookup failed ({exc or type(exc).__name__}); try again"


def check_dkim(resolver: Resolver, keys: Iterable[Any]) -> list[Finding]:
    """One finding per key (``domain``, ``selector``, ``public_key_b64``, ``state``)."""
    found = []
    for key in keys:
        name = f"{key.selector}._domainkey.{key.domain}"
        records, failed = _txt(resolver, name)
        if records is None:
            found.append(Finding("DKIM", name, False, failed, key.selector))
            continue
        dkim_records = [r for r in records if dkim_public_key(r) is not None]
        published = [p for p in (dkim_public_key(r) for r in records) if p is not None]
        matches = key.public_key_b64 in published
        seen = _found(dkim_records)
        if key.state == "retired":
            detail = ("retired; record still published: remove it once mail it signed has "
                      "been delivered and read (a week or so)" if published else
                      "retired; record removed")
            found.append(Finding("DKIM", name, True, detail, key.selector,
                                 status=PUBLISHED if published else MISSING, found=seen))
        elif matches:
            detail = ("record published: the key becomes active" if key.state == "pending"
                      else "active; record published")
            found.append(Finding("DKIM", name, True, detail, key.selector,
                                 activate=key.state == "pending", status=PUBLISHED,
                                 found=seen))
        else:
            what = ("a different key is published there" if published else
                    "no DKIM record")
            effect = ("the key stays pending (it does not sign)" if key.state == "pending"
                      else "mail it signs fails DKIM at receivers")
            found.append(Finding("DKIM", name, False, f"{what}: {effect}", key.selector,
                                 status=WRONG if published else MISSING, found=seen))
    return found


def check_key_published(resolver: Resolver, key: Any) -> Finding:
    """Whether DNS serves ``key``'s record, as it is checked before the key is activated
    (`postroom dkim activate` and the console's activate button, unless forced)."""
    [finding] = check_dkim(resolver, [dataclasses.replace(key, active=False, pending=True)])
    return finding


def _txt_record(resolver: Resolver, record: str, name: str, prefix: str) -> Finding:
    """A TXT record of which exactly one starting with ``prefix`` must be published."""
    records, failed = _txt(resolver, name)
    if records is None:
        return Finding(record, name, False, failed)
    hits = [r for r in records if r.lower().startswith(prefix)]
    ok = len(hits) == 1
    detail = (hits[0] if ok else "missing" if not hits else
              f"{len(hits)} records: receivers treat that as an error (one only)")
    return Finding(record, name, ok, detail, status=PUBLISHED if ok else
                   MISSING if not hits else WRONG, found=_found(hits))


def _mta_sts_host(resolver: Resolver, domain: str, hostname: str) -> Finding:
    name = f"mta-sts.{domain}"
    try:
        targets = [t.lower().rstrip(".") for t in resolver.cname(name)]
    except NXDomain:
        targets = []
    except DNSError as exc:
        return Finding("MTA-STS-HOST", name, False, f"lookup failed ({exc}); try again")
    if hostname in targets:
        return Finding("MTA-STS-HOST", name, True, f"points at {hostname}", status=PUBLISHED,
                       found=_found(targets))
    if not targets:
        # no CNAME: the policy may be served by a web server of the operator's own
        try:
            addresses = resolver.a(name) + resolver.aaaa(name)
        except DNSError:
            addresses = []
        if addresses:
            return Finding("MTA-STS-HOST", name, True, "an address of its own (a web server "
                           "of yours serves the policy)", status=PUBLISHED,
                           found=_found(addresses))
    return Finding("MTA-STS-HOST", name, False,
                   f"expected a CNAME to {hostname}, found {', '.join(targets) or 'none'}",
                   status=WRONG if targets else MISSING, found=_found(targets))


def check_domain(resolver: Resolver, domain: str, hostname: str,
                 keys: Sequence[Any], *, reporting: bool = False) -> list[Finding]:
    """MX (naming ``hostname``), SPF, DMARC and every DKIM key of ``domain``; with
    ``reporting`` also the MTA-STS and TLS-RPT records (the console's full check)."""
    domain = domain.lower().rstrip(".")
    hostname = hostname.lower().rstrip(".")
    found = []
    try:
        mx = [host.lower() for _pref, host in resolver.mx(domain)]
        ok = hostname in mx
        found.append(Finding("MX", domain, ok,
                             f"points at {', '.join(mx)}" if ok else
                             f"expected {hostname}, found {', '.join(mx) or 'no MX'}",
                             status=PUBLISHED if ok else WRONG if mx else MISSING,
                             found=_found(mx)))
    except NXDomain:
        found.append(Finding("MX", domain, False, "the domain does not exist in DNS",
                             status=MISSING))
    except DNSError as exc:
        found.append(Finding("MX", domain, False, f"lookup failed ({exc}); try again"))
    found.append(_txt_record(resolver, "SPF", domain, "v=spf1"))
    found.append(_txt_record(resolver, "DMARC", f"_dmarc.{domain}", "v=dmarc1"))
    found.extend(check_dkim(resolver, keys))
    if reporting:
        found.append(_txt_record(resolver, "MTA-STS", f"_mta-sts.{domain}", "v=stsv1"))
        found.append(_mta_sts_host(resolver, domain, hostname))
        found.append(_txt_record(resolver, "TLS-RPT", f"_smtp._tls.{domain}", "v=tlsrptv1"))
    return found


@dataclass(frozen=True)
class RecordCheck:
    """A record to publish and what DNS serves in its place (``status`` None: not looked up)."""

    record: DnsRecord
    status: str | None
    detail: str
    found: tuple[str, ...]


def _key_map(key: Any) -> Mapping[str, Any]:
    return {"domain": key.domain, "selector": key.selector, "algorithm": key.algorithm,
            "public_key_b64": key.public_key_b64, "state": key.state}


def domain_records(domain: str, hostname: str, keys: Sequence[Any],
                   report_address: str | None = None, *, mta_sts: Any = None
                   ) -> list[RecordCheck]:
    """The records `postroom dns` prints for ``domain`` (stored DKIM keys ``keys``; its
    MTA-STS setting ``mta_sts``, postroom.store.mtasts, None: off), unchecked."""
    return [RecordCheck(r, None, "", ()) for r in
            expected_records(domain, hostname, [_key_map(k) for k in keys], report_address,
                             mta_sts_mode=mta_sts.mode if mta_sts else "none",
                             mta_sts_stamp=mta_sts.stamp if mta_sts else None)]


def check_records(resolver: Resolver, domain: str, hostname: str, keys: Sequence[Any],
                  report_address: str | None = None, *, mta_sts: Any = None
                  ) -> list[RecordCheck]:
    """:func:`domain_records`, each with its status in DNS now (:func:`check_domain` with
    ``reporting``). Bound the time with ``resolver.until(deadline)``: a lookup past it is
    UNKNOWN. Read-only: activating pending keys is the caller's choice."""
    findings = check_domain(resolver, domain, hostname,
                            [k for k in keys if k.state != "retired"], reporting=True)
    by_kind = {(f.record, f.selector): f for f in findings}
    checked = []
    for item in domain_records(domain, hostname, keys, report_address, mta_sts=mta_sts):
        finding = by_kind.get((item.record.kind, item.record.selector))
        if finding is None:
            checked.append(dataclasses.replace(item, status=UNKNOWN, detail="not checked"))
        else:
            detail = ("record published: the key is still pending until it is activated"
                      if finding.activate else finding.detail)
            checked.append(dataclasses.replace(item, status=finding.status, detail=detail,
                                               found=finding.found))
    return checked
