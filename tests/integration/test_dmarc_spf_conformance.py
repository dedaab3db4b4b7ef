"""The OpenSPF RFC 7208 test suite against our SPF evaluation, over the real loopback DNS server.

Each scenario's zonedata is served by the test DNS server (tests/support/dns.py)
and every case is evaluated by postroom_dmarc.spfcheck with a postroom Resolver
pointed at it, so the suite exercises the same path as production: pyspf's
logic, our DNS hook, dnspython on the wire, UDP then TCP for long answers.

Zone data conventions of the suite (as its reference driver reads them): a
type SPF record also counts as TXT unless the name lists TXT explicitly;
``TXT: NONE`` means "no TXT"; ``TIMEOUT`` means queries for the name's other
types get no answer at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from postroom_dmarc import spfcheck

SUITE = Path(__file__).resolve().parents[1] / "data" / "spf" / "rfc7208-tests.yml"

# Cases where our result deliberately or knowingly differs from the suite, and why.
KNOWN_DEVIATIONS: dict[str, str] = {
    "null-text": (
        "The zone has a TXT record with no character-strings, which RFC 1035 3.3.14 does "
        "not allow. dnspython rejects the whole response as malformed (FormError), so the "
        "resolver never gets an answer and the result is temperror, where the suite, whose "
        "reference driver bypasses DNS, expects pass. A resolver that cannot parse a reply "
        "must not guess its content; see test_null_text_is_a_temperror."
    ),
}

_TYPES = ("A", "AAAA", "MX", "TXT", "PTR", "CNAME")


def _scenarios() -> list[dict[str, Any]]:
    with SUITE.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


SCENARIOS = _scenarios()


def zone_of(scenario: dict[str, Any]) -> tuple[dict[str, dict[str, list[Any]]], set[str]]:
    """The scenario's records by name and type, and the names marked TIMEOUT."""
    zone: dict[str, dict[str, list[Any]]] = {}
    timeouts: set[str] = set()
    for raw_name, entries in (scenario.get("zonedata") or {}).items():
        name = str(raw_name).lower()
        by_type: dict[str, list[Any]] = {}
        spf_as_txt: list[Any] = []
        explicit_txt = False
        for entry in entries:
            if entry == "TIMEOUT":
                timeouts.add(name)
                continue
            for rtype, value in entry.items():
                if rtype == "TXT":
                    explicit_txt = True
                if rtype == "SPF":
                    spf_as_txt.append(value)
                    continue  # type SPF itself is never queried (RFC 7208 3.1)
                if value == "NONE":
                    continue
                if rtype == "MX":
                    value = [int(value[0]), str(value[1])]
                by_type.setdefault(rtype, []).append(value)
        if not explicit_txt:
            for value in spf_as_txt:
                if value != "NONE":
                    by_type.setdefault("TXT", []).append(value)
        zone[name] = by_type
    return zone, timeouts


def _cases() -> list[Any]:
    params = []
    for index, scenario in enumerate(SCENARIOS):
        for case_name, case in scenario["tests"].items():
            if case_name in KNOWN_DEVIATIONS:
                continue  # listed above with the reason; checked by its own test below
            params.append(pytest.param(index, case_name, case, id=case_name))
    return params


@pytest.fixture(scope="module")
def loaded() -> dict[str, int]:
    return {"scenario": -1}


def _load(dns_server: Any, scenario: dict[str, Any]) -> None:
    zone, timeouts = zone_of(scenario)
    dns_server.clear()
    for name, by_type in zone.items():
        for rtype, values in by_type.items():
            dns_server.set_records(name, rtype, values)
        if name in timeouts:
            for rtype in _TYPES:
                if rtype not in by_type:
                    dns_server.timeout(name, rtype)


@pytest.mark.parametrize(("index", "case_name", "case"), _cases())
def test_openspf_case(dns_server_session: Any, loaded: dict[str, int], index: int,
                      case_name: str, case: dict[str, Any]) -> None:
    if loaded["scenario"] != index:
        _load(dns_server_session, SCENARIOS[index])
        loaded["scenario"] = index
    resolver = dns_server_session.resolver(timeout=0.3)
    got = spfcheck.check(str(case["host"]), str(case.get("mailfrom", "")),
                         str(case.get("helo", "")), resolver, receiver="receiver.test")
    expected = case["result"]
    expected = expected if isinstance(expected, list) else [expected]
    assert got.result in expected, (case.get("description"), got)
    if case.get("explanation", "DEFAULT") != "DEFAULT" and got.result == "fail":
        assert got.explanation == case["explanation"]


def test_null_text_is_a_temperror(dns_server: Any) -> None:
    dns_server.set_records("null.example.com", "TXT", [["v=spf1 ip4:", "192.0.2.5 -all"], []])
    got = spfcheck.check("192.0.2.5", "silly@null.example.com", "hosed",
                         dns_server.resolver(timeout=0.3))
    assert got.result == "temperror"


def test_known_deviations_are_justified() -> None:
    names = {name for scenario in SCENARIOS for name in scenario["tests"]}
    for name, reason in KNOWN_DEVIATIONS.items():
        assert name in names and len(reason) > 20
