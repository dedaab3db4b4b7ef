"""The DNS records an operator publishes for a Postroom domain, in zone-file syntax."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
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


def dmarc_starter(domain: str, report_address: str | None = None) -> str:
    """The first DMARC record's value: p=none, aggregate reports to ``report_address``."""
    domain = domain.lower().rstrip(".")
    rua = report_address or f"postmaster@{domain}"
    return f"v=DMARC1; p=none; rua=mailto:{rua}; adkim=r; aspf=r"


def dmarc_record(domain: str, value: str) -> str:
    """The zone line publishing DMARC record ``value`` for ``domain``."""
    return f"{_fqdn('_dmarc.' + domain.lower().rstrip('.'))} IN TXT {txt_value(value)}"


def all_records(domain: str, hostname: str, dkim_keys: Iterable[Mapping[str, Any]],
                report_address: str | None = None) -> list[str]:
    """Every record a domain needs: MX, SPF, DKIM, DMARC, MTA-STS and TLS-RPT."""
    domain = domain.lower().rstrip(".")
    rua = report_address or f"postmaster@{domain}"
    lines = [
        f"; DNS records for {domain} served by {hostname}",
        "; mail exchanger: inbound mail goes to the MTA (port 25)",
        f"{_fqdn(domain)} IN MX 10 {_fqdn(hostname)}",
        "; SPF (RFC 7208): only our MX may send for this domain; others fail",
        f"{_fqdn(domain)} IN TXT {txt_value('v=spf1 mx -all')}",
    ]
    keys = list(dkim_keys)
    live = [k for k in keys if _state(k) in ("active", "pending")]
    retired = [k for k in keys if _state(k) == "retired"]
    if live:
        lines.append("; DKIM (RFC 6376, RFC 8463): one record per key; a pending key signs "
                     f"once `postroom dns {domain} --check` sees its record")
        for key in live:
            if _state(key) == "pending":
                lines.append(f"; pending: {key['selector']}")
            lines.append(dkim_record(key))
        if retired:
            lines.append("; retired DKIM keys (no longer sign): keep their records a week or "
                         "so after retiring, then remove them: "
                         + ", ".join(str(k["selector"]) for k in retired))
    else:
        lines.append(f"; DKIM: no keys yet, run `postroom dkim generate {domain}`")
    lines += [
        "; DMARC (RFC 7489): start with p=none and aggregate reports, then quarantine or reject",
        dmarc_record(domain, dmarc_starter(domain, rua)),
        "; MTA-STS (RFC 8461): serve the policy at https://mta-sts."
        f"{domain}/.well-known/mta-sts.txt",
        f"{_fqdn('_mta-sts.' + domain)} IN TXT "
        f"{txt_value('v=STSv1; id=' + time.strftime('%Y%m%d%H%M%S', time.gmtime()))}",
        f"{_fqdn('mta-sts.' + domain)} IN CNAME {_fqdn(hostname)}",
        f"; policy file: version: STSv1 / mode: testing / mx: {hostname} / max_age: 86400",
        "; TLS-RPT (RFC 8460): where sending MTAs report TLS failures",
        f"{_fqdn('_smtp._tls.' + domain)} IN TXT {txt_value(f'v=TLSRPTv1; rua=mailto:{rua}')}",
    ]
    return lines
