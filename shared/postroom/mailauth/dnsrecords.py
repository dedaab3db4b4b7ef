"""The DNS records an operator publishes for a Postroom domain, in zone-file syntax."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from postroom.mailauth.mtasts import MAX_AGE, policy_id

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


def dmarc_starter(domain: str, report_address: str | None = None) -> str:
    """The first DMARC record's value: p=none, aggregate reports to ``report_address``."""
    domain = domain.lower().rstrip(".")
    rua = report_address or f"postmaster@{domain}"
    return f"v=DMARC1; p=none; rua=mailto:{rua}; adkim=r; aspf=r"


def dmarc_record(domain: str, value: str) -> str:
    """The zone line publishing DMARC record ``value`` for ``domain``."""
    return f"{_fqdn('_dmarc.' + domain.lower().rstrip('.'))} IN TXT {txt_value(value)}"


# RFC 6186 (and RFC 8314 for _submissions): service, port; priority 0 and weight 1 for
# the ones we prefer (implicit TLS), 10 for the STARTTLS ones
CLIENT_SERVICES: tuple[tuple[str, int, int], ...] = (
    ("_submissions._tcp", 465, 0), ("_submission._tcp", 587, 10),
    ("_imaps._tcp", 993, 0), ("_imap._tcp", 143, 10),
    ("_pop3s._tcp", 995, 0), ("_pop3._tcp", 110, 10),
)


def client_records(domain: str, hostname: str) -> list[str]:
    """The records mail clients use to find the servers: RFC 6186 SRV records and the
    names Thunderbird (autoconfig.DOMAIN) and Outlook (autodiscover.DOMAIN) look up."""
    domain = domain.lower().rstrip(".")
    lines = ["; mail clients (RFC 6186, RFC 8314): where to submit and read mail"]
    for service, port, priority in CLIENT_SERVICES:
        lines.append(f"{_fqdn(service + '.' + domain)} IN SRV {priority} 1 {port} "
                     f"{_fqdn(hostname)}")
    lines += [
        "; autoconfig (Thunderbird) and autodiscover (Outlook): names for the web service, "
        "which answers /mail/config-v1.1.xml and /autodiscover/autodiscover.xml",
        f"{_fqdn('autoconfig.' + domain)} IN CNAME {_fqdn(hostname)}",
        f"{_fqdn('autodiscover.' + domain)} IN CNAME {_fqdn(hostname)}",
        f"{_fqdn('_autodiscover._tcp.' + domain)} IN SRV 0 1 443 {_fqdn(hostname)}",
    ]
    return lines


def mta_sts_expected(domain: str, hostname: str, mode: str,
                     stamp: str | None) -> list[DnsRecord]:
    """The MTA-STS TXT record, whose id follows every change of the mode or the MX
    (postroom.mailauth.mtasts.policy_id), and the name the policy is served under."""
    domain = domain.lower().rstrip(".")
    hostname = hostname.lower().rstrip(".")
    return [DnsRecord("MTA-STS", f"_mta-sts.{domain}", "TXT",
                      "v=STSv1; id=" + policy_id(stamp, mode, [hostname])),
            DnsRecord("MTA-STS-HOST", f"mta-sts.{domain}", "CNAME", _fqdn(hostname))]


def mta_sts_records(domain: str, hostname: str, mode: str, stamp: str | None) -> list[str]:
    """The MTA-STS lines of `postroom dns`: the records (:func:`mta_sts_expected`), or, with
    mode none, how to turn it on and what to publish then (commented out)."""
    txt, cname = (r.zone_line for r in mta_sts_expected(domain, hostname, mode, stamp))
    if mode == "none":
        return [f"; MTA-STS (RFC 8461): off; `postroom domain mta-sts {domain} testing` serves a "
                f"policy at https://mta-sts.{domain}/.well-known/mta-sts.txt, then publish:",
                "; " + txt, "; " + cname]
    return [
        f"; MTA-STS (RFC 8461): mode {mode}, policy served at https://mta-sts.{domain}"
        "/.well-known/mta-sts.txt (the id changes whenever the mode or the MX does)",
        txt, cname,
        f"; policy file: version: STSv1 / mode: {mode} / mx: {hostname} / "
        f"max_age: {MAX_AGE[mode]}",
    ]


def expected_records(domain: str, hostname: str, dkim_keys: Iterable[Mapping[str, Any]],
                     report_address: str | None = None, *, mta_sts_mode: str = "none",
                     mta_sts_stamp: str | None = None) -> list[DnsRecord]:
    """Every record a domain needs: MX, SPF, DKIM (active and pending keys), DMARC,
    MTA-STS (once its mode is not none) and TLS-RPT; ``report_address`` receives DMARC and
    TLS reports (default postmaster@domain)."""
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
    found.append(DnsRecord("DMARC", f"_dmarc.{domain}", "TXT", dmarc_starter(domain, rua)))
    if mta_sts_mode != "none":
        found += mta_sts_expected(domain, hostname, mta_sts_mode, mta_sts_stamp)
    found.append(DnsRecord("TLS-RPT", f"_smtp._tls.{domain}", "TXT",
                           f"v=TLSRPTv1; rua=mailto:{rua}"))
    return found


def all_records(domain: str, hostname: str, dkim_keys: Iterable[Mapping[str, Any]],
                report_address: str | None = None, *, mta_sts_mode: str = "none",
                mta_sts_stamp: str | None = None) -> list[str]:
    """Every record a domain needs (:func:`expected_records`) in zone-file syntax, explained,
    and the clients' SRV, autoconfig and autodiscover names."""
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
    ]
    lines += mta_sts_records(domain, hostname, mta_sts_mode, mta_sts_stamp)
    lines += [
        "; TLS-RPT (RFC 8460): where sending MTAs report TLS failures",
        by_kind["TLS-RPT"].zone_line,
        *client_records(domain, hostname),
    ]
    return lines
