"""The records a domain should publish (structured) and each one's status against what a
resolver answers: published, missing, wrong or unknown, with what was found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from postroom.config import parse_quota
from postroom.mailauth.dnsrecords import all_records, expected_records
from postroom.net.dns import DNSTempError, NXDomain
from postroom.ops.dnscheck import check_records, domain_records

HOST = "mail.example.net"


@dataclass(frozen=True)
class Key:
    domain: str
    selector: str
    algorithm: str
    public_key_b64: str
    state: str
    active: bool = False
    pending: bool = True


class FakeResolver:
    """Answers from a dict {(name, type): [values]}; a value "NX" is NXDOMAIN, "TEMP" a
    temporary failure; anything else absent is no data."""

    def __init__(self, zone: dict[tuple[str, str], Any]) -> None:
        self.zone = zone

    def _get(self, name: str, rtype: str) -> Any:
        value = self.zone.get((name, rtype), [])
        if value == "NX":
            raise NXDomain(name)
        if value == "TEMP":
            raise DNSTempError(name)
        return value

    def mx(self, name: str) -> list[tuple[int, str]]:
        return [(10, h) for h in self._get(name, "MX")]

    def txt(self, name: str) -> list[str]:
        return list(self._get(name, "TXT"))

    def cname(self, name: str) -> list[str]:
        return list(self._get(name, "CNAME"))

    def a(self, name: str) -> list[str]:
        return list(self._get(name, "A"))

    def aaaa(self, name: str) -> list[str]:
        return list(self._get(name, "AAAA"))


def test_the_structured_records_are_those_postroom_dns_prints() -> None:
    keys = [{"domain": "example.org", "selector": "s1", "algorithm": "ed25519-sha256",
             "public_key_b64": "KEY", "state": "pending"},
            {"domain": "example.org", "selector": "old", "algorithm": "rsa-sha256",
             "public_key_b64": "OLD", "state": "retired"}]
    # MTA-STS records belong to a domain whose mode is not none (postroom.store.mtasts)
    assert [r.kind for r in expected_records("example.org", HOST, keys)] == [
        "MX", "SPF", "DKIM", "DMARC", "TLS-RPT"]
    records = expected_records("Example.ORG", HOST, keys, mta_sts_mode="testing",
                               mta_sts_stamp="20261207")
    assert [r.kind for r in records] == ["MX", "SPF", "DKIM", "DMARC", "MTA-STS",
                                         "MTA-STS-HOST", "TLS-RPT"]
    printed = all_records("example.org", HOST, keys, mta_sts_mode="testing",
                          mta_sts_stamp="20261207")
    assert all(r.zone_line in printed for r in records)
    dkim = records[2]
    assert (dkim.name, dkim.value, dkim.state) == (
        "s1._domainkey.example.org", "v=DKIM1; k=ed25519; p=KEY", "pending")


@dataclass
class Setting:
    """A domain's MTA-STS setting as postroom.store.mtasts gives it."""

    mode: str
    stamp: str


def test_each_record_gets_its_status_and_what_was_found() -> None:
    key = Key("example.org", "s1", "ed25519-sha256", "KEY", "pending")
    resolver = FakeResolver({
        ("example.org", "MX"): ["other.example.net"],
        ("example.org", "TXT"): ["v=spf1 mx -all", "google-site-verification=x"],
        ("_dmarc.example.org", "TXT"): "TEMP",
        ("s1._domainkey.example.org", "TXT"): ["v=DKIM1; k=ed25519; p=KEY"],
        ("_mta-sts.example.org", "TXT"): ["v=STSv1; id=1", "v=STSv1; id=2"],
        ("mta-sts.example.org", "CNAME"): "NX",
    })
    checked = {c.record.kind: c for c in
               check_records(resolver, "example.org", HOST, [key],  # type: ignore[arg-type]
                             mta_sts=Setting("testing", "20261207"))}
    assert {k: c.status for k, c in checked.items()} == {
        "MX": "wrong", "SPF": "published", "DKIM": "published", "DMARC": "unknown",
        "MTA-STS": "wrong", "MTA-STS-HOST": "missing", "TLS-RPT": "missing"}
    assert checked["MX"].found == ("other.example.net",)
    assert checked["SPF"].found == ("v=spf1 mx -all",)
    assert "still pending" in checked["DKIM"].detail
    assert "try again" in checked["DMARC"].detail


def test_unchecked_records_have_no_status() -> None:
    assert all(c.status is None for c in domain_records("example.org", HOST, []))


def test_a_quota_is_a_size_or_none() -> None:
    assert parse_quota("2G") == 2 << 30
    assert parse_quota(" None ") is None and parse_quota("unlimited") is None
