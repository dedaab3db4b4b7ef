"""The DNS records an operator publishes for a Postroom domain, in zone-file syntax."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# A TXT character-string holds at most 255 octets (RFC 1035 3.3.14); longer values
# (an RSA-2048 DKIM key) are split into several strings of one record.
_TXT_CHUNK = 255


def txt_value(text: str) -> str:
    chunks = [text[i:i + _TXT_CHUNK] for i in range(0, len(text), _TXT_CHUNK)] or [""]
    if len(chunks) == 1:
        return f'"{chunks[0]}"'
    return "( " + "\n    ".join(f'"{c}"' for c in chunks) + " )"


def _fqdn(name: str) -> str:
    return name.rstrip(".") + "."


def dkim_txt(key: Mapping[str, Any]) -> str:
    """The ``v=DKIM1`` value for a stored key (``algorithm``, ``public_key_b64``)."""
    kind = "ed25519" if str(key["algorithm"]).startswith("ed25519") else "rsa"
    return f"v=DKIM1; k={kind}; p={key['public_key_b64']}"


def dkim_record(key: Mapping[str, Any]) -> str:
    name = f"{key['selector']}._domainkey.{key['domain']}"
    return f"{_fqdn(name)} IN TXT {txt_value(dkim_txt(key))}"


def _state(key: Mapping[str, Any]) -> str:
    """A stored key's lifecycle state (docs/msa.md); keys without one are active or retired."""
    if "state" in key:
        return str(key["state"])
    return "active" if key.get("active", True) else "retired"


@dataclass(frozen=True)
class DnsRecord:
    """One record a domain should publish: the one description `postroom dns` prints and the
    web console's DNS page and `/api/v1/domains/{domain}/dns` show and check."""

    kind: str                  # what it is for: one of RECORD_KINDS
    name: str                  # the owner name, without the trailing dot
    type: str                  # "MX", "TXT" or "CNAME"
    value: str                 # MX/CNAME: the zone data ("10 mx.example.org."); TXT: its text
    selector: str | None = None   # DKIM: the key's selector
    state: str | None = None      # DKIM: "active" or "pending"

    @property
    def zone_line(self) -> str:
        """The record in zone-file syntax (a long TXT value split into strings)."""
        data = txt_value(self.value) if self.type == "TXT" else self.value
        return f"{_fqdn(self.name)} IN {self.type} {data}"


#: the kinds of :class:`DnsRecord`, in the order they are listed
RECORD_KINDS = ("MX", "SPF", "DKIM", "DMARC", "MTA-STS", "MTA-STS-HOST", "TLS-RPT")


def expected_records(domain: str, hostname: str, dkim_keys: Iterable[Mapping[str, Any]],
                     report_address: str | None = None) -> list[DnsRecord]:
    """Every record a domain needs: MX, SPF, DKIM (active and pending keys), DMARC,
    MTA-STS and TLS-RPT; ``report_address`` receives DMARC and TLS reports (default
    postmaster@domain)."""
    domain = domain.lower().rstrip(".")
    hostname = hostname.lower().rstrip(".")
    rua = report_address or f"postmaster@{domain}"
    found = [DnsRecord("MX", domain, "MX", f"10 {_fqdn(hostname)}"),
             DnsRecord("SPF", domain, "TXT", "v=spf1 mx -all")]
    for key in dkim_keys:
        if _state(key) in ("active", "pending"):
            found.append(DnsRecord("DKIM", f"{key['selector']}._domainkey.{key['domain']}",
                                   "TXT", dkim_txt(key), selector=str(key["selector"]),
                                   state=_state(key)))
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    found += [
        DnsRecord("DMARC", f"_dmarc.{domain}", "TXT",
                  f"v=DMARC1; p=none; rua=mailto:{rua}; adkim=r; aspf=r"),
        DnsRecord("MTA-STS", f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={stamp}"),
        DnsRecord("MTA-STS-HOST", f"mta-sts.{domain}", "CNAME", _fqdn(hostname)),
        DnsRecord("TLS-RPT", f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua=mailto:{rua}"),
    ]
    return found


def all_records(domain: str, hostname: str, dkim_keys: Iterable[Mapping[str, Any]],
                report_address: str | None = None) -> list[str]:
    """Every record a domain needs (:func:`expected_records`) in zone-file syntax, explained."""
    domain = domain.lower().rstrip(".")
    keys = list(dkim_keys)
    records = expected_records(domain, hostname, keys, report_address)
    by_kind = {r.kind: r for r in records if r.kind != "DKIM"}
    live = [r for r in records if r.kind == "DKIM"]
    retired = [k for k in keys if _state(k) == "retired"]
    lines = [
        f"; DNS records for {domain} served by {hostname}",
        "; mail exchanger: inbound mail goes to the MTA (port 25)",
        by_kind["MX"].zone_line,
        "; SPF (RFC 7208): only our MX may send for this domain; others fail",
        by_kind["SPF"].zone_line,
    ]
    if live:
        lines.append("; DKIM (RFC 6376, RFC 8463): one record per key; a pending key signs "
                     f"once `postroom dns {domain} --check` sees its record")
        for record in live:
            if record.state == "pending":
                lines.append(f"; pending: {record.selector}")
            lines.append(record.zone_line)
        if retired:
            lines.append("; retired DKIM keys (no longer sign): keep their records a week or "
                         "so after retiring, then remove them: "
                         + ", ".join(str(k["selector"]) for k in retired))
    else:
        lines.append(f"; DKIM: no keys yet, run `postroom dkim generate {domain}`")
    lines += [
        "; DMARC (RFC 7489): start with p=none and aggregate reports, then quarantine or reject",
        by_kind["DMARC"].zone_line,
        "; MTA-STS (RFC 8461): serve the policy at https://mta-sts."
        f"{domain}/.well-known/mta-sts.txt",
        by_kind["MTA-STS"].zone_line,
        by_kind["MTA-STS-HOST"].zone_line,
        f"; policy file: version: STSv1 / mode: testing / mx: {hostname} / max_age: 86400",
        "; TLS-RPT (RFC 8460): where sending MTAs report TLS failures",
        by_kind["TLS-RPT"].zone_line,
    ]
    return lines
