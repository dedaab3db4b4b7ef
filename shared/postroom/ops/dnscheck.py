"""`postroom dns DOMAIN --check`: are the records `postroom dns` prints published?

Looks up the domain's MX, SPF and DMARC records and each DKIM key's TXT record
through the configured resolver (POSTROOM_DNS_SERVERS, else the system's), and
says per record whether it is there. A pending DKIM key whose record is
published with the same public key is reported as ready to activate; the
caller (the CLI) activates it in the store (docs/msa.md, "DKIM key lifecycle").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from postroom.net.dns import DNSError, NXDomain, Resolver

# a DKIM key record is one TXT record of at most a few kilobytes; refuse to parse more
_MAX_RECORD = 16384


@dataclass(frozen=True)
class Finding:
    """One record checked: what, where, whether it is right, and a line for the operator."""

    record: str  # "MX", "SPF", "DMARC" or "DKIM"
    name: str  # the DNS name looked up
    ok: bool
    detail: str
    selector: str | None = None  # DKIM: the key's selector
    activate: bool = False  # DKIM: a pending key whose record is published


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
        published = [p for p in (dkim_public_key(r) for r in records) if p is not None]
        matches = key.public_key_b64 in published
        if key.state == "retired":
            detail = ("retired; record still published: remove it once mail it signed has "
                      "been delivered and read (a week or so)" if published else
                      "retired; record removed")
            found.append(Finding("DKIM", name, True, detail, key.selector))
        elif matches:
            detail = ("record published: the key becomes active" if key.state == "pending"
                      else "active; record published")
            found.append(Finding("DKIM", name, True, detail, key.selector,
                                 activate=key.state == "pending"))
        else:
            what = ("a different key is published there" if published else
                    "no DKIM record")
            effect = ("the key stays pending (it does not sign)" if key.state == "pending"
                      else "mail it signs fails DKIM at receivers")
            found.append(Finding("DKIM", name, False, f"{what}: {effect}", key.selector))
    return found


def check_domain(resolver: Resolver, domain: str, hostname: str,
                 keys: Sequence[Any]) -> list[Finding]:
    """MX (naming ``hostname``), SPF, DMARC and every DKIM key of ``domain``."""
    domain = domain.lower().rstrip(".")
    hostname = hostname.lower().rstrip(".")
    found = []
    try:
        mx = [host.lower() for _pref, host in resolver.mx(domain)]
        found.append(Finding("MX", domain, hostname in mx,
                             f"points at {', '.join(mx)}" if hostname in mx else
                             f"expected {hostname}, found {', '.join(mx) or 'no MX'}"))
    except NXDomain:
        found.append(Finding("MX", domain, False, "the domain does not exist in DNS"))
    except DNSError as exc:
        found.append(Finding("MX", domain, False, f"lookup failed ({exc}); try again"))
    for record, name, prefix in (("SPF", domain, "v=spf1"),
                                 ("DMARC", f"_dmarc.{domain}", "v=dmarc1")):
        records, failed = _txt(resolver, name)
        if records is None:
            found.append(Finding(record, name, False, failed))
            continue
        hits = [r for r in records if r.lower().startswith(prefix)]
        ok = len(hits) == 1
        detail = (hits[0] if ok else "missing" if not hits else
                  f"{len(hits)} records: receivers treat that as an error (one only)")
        found.append(Finding(record, name, ok, detail))
    found.extend(check_dkim(resolver, keys))
    return found
