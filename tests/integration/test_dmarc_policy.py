"""DMARC over the real loopback DNS server: alignment, policy choice, pct, t, overrides, errors."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace

import pytest

from postroom.config import DmarcOverride
from postroom.mailauth import dkimsign
from postroom_dmarc.verdict import CheckRequest, Options, evaluate

GOOD_IP = "192.0.2.10"
BAD_IP = "198.51.100.1"
PRIVATE, PUBLIC_TXT = dkimsign.generate_keys("ed25519-sha256")
OPTIONS = Options(authserv_id="mx.receiver.test", sampler=lambda: 0.0)


def message(from_header: str | None = "Alice <alice@example.com>", *, sign: str | None = None,
            extra: bytes = b"") -> bytes:
    head = b"" if from_header is None else f"From: {from_header}\r\n".encode()
    body = head + extra + b"To: bob@receiver.test\r\nSubject: hello\r\n" \
        b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nHi Bob.\r\n"
    if sign:
        body = dkimsign.sign(body, sign, "sel", PRIVATE, "ed25519-sha256") + body
    return body


def request(msg: bytes, mail_from: str = "bounce@example.com", ip: str = GOOD_IP) -> CheckRequest:
    return CheckRequest(client_ip=ip, helo="mail.example.com", mail_from=mail_from,
                        recipients=("bob@receiver.test",), message=msg)


@pytest.fixture
def zone(dns_server):
    for domain in ("example.com", "mail.example.com", "other.net"):
        dns_server.set_records(domain, "TXT", [f"v=spf1 ip4:{GOOD_IP} -all"])
        dns_server.set_records(f"sel._domainkey.{domain}", "TXT", [PUBLIC_TXT])
    dns_server.set_records("example.com", "A", ["192.0.2.80"])
    dns_server.set_records("sub.example.com", "A", ["192.0.2.81"])
    return dns_server


def dmarc_record(zone, value: str, domain: str = "example.com") -> None:
    zone.set_records(f"_dmarc.{domain}", "TXT", [value])


ALIGNMENT = [
    # (case, record, mail_from, ip, signing domain, dmarc result, disposition)
    ("spf aligned only", "v=DMARC1; p=reject", "b@example.com", GOOD_IP, None, "pass", "inbox"),
    ("dkim aligned only", "v=DMARC1; p=reject", "b@other.net", BAD_IP, "example.com", "pass",
     "inbox"),
    ("both aligned", "v=DMARC1; p=reject", "b@example.com", GOOD_IP, "example.com", "pass",
     "inbox"),
    ("neither aligned", "v=DMARC1; p=reject", "b@other.net", GOOD_IP, "other.net", "fail",
     "reject"),
    ("spf relaxed subdomain", "v=DMARC1; p=reject", "b@mail.example.com", GOOD_IP, None, "pass",
     "inbox"),
    ("spf strict subdomain", "v=DMARC1; p=reject; aspf=s", "b@mail.example.com", GOOD_IP, None,
     "fail", "reject"),
    ("dkim relaxed subdomain", "v=DMARC1; p=reject", "b@other.net", BAD_IP, "mail.example.com",
     "pass", "inbox"),
    ("dkim strict subdomain", "v=DMARC1; p=reject; adkim=s", "b@other.net", BAD_IP,
     "mail.example.com", "fail", "reject"),
    ("quarantine goes to junk", "v=DMARC1; p=quarantine", "b@other.net", BAD_IP, None, "fail",
     "junk"),
    ("p=none delivers", "v=DMARC1; p=none", "b@other.net", BAD_IP, None, "fail", "inbox"),
]


@pytest.mark.parametrize(("case", "record", "mail_from", "ip", "signer", "result", "disposition"),
                         ALIGNMENT, ids=[row[0] for row in ALIGNMENT])
def test_alignment_matrix(zone, case, record, mail_from, ip, signer, result, disposition):
    dmarc_record(zone, record)
    verdict = evaluate(request(message(sign=signer), mail_from, ip), zone.resolver(), OPTIONS)
    assert (verdict.dmarc.result, verdict.disposition) == (result, disposition)


def test_reject_reason_names_the_policy_domain(zone):
    dmarc_record(zone, "v=DMARC1; p=reject")
    verdict = evaluate(request(message(), "b@other.net", BAD_IP), zone.resolver(), OPTIONS)
    assert "example.com" in verdict.reason


def test_subdomain_uses_sp(zone):
    dmarc_record(zone, "v=DMARC1; p=reject; sp=quarantine")
    verdict = evaluate(request(message("x@sub.example.com"), "b@other.net", BAD_IP),
                       zone.resolver(), OPTIONS)
    assert (verdict.dmarc.policy_domain, verdict.dmarc.policy) == ("example.com", "quarantine")
    assert verdict.disposition == "junk"


def test_non_existent_subdomain_uses_np(zone):
    dmarc_record(zone, "v=DMARC1; p=none; sp=none; np=reject")
    verdict = evaluate(request(message("x@ghost.example.com"), "b@other.net", BAD_IP),
                       zone.resolver(), OPTIONS)
    assert (verdict.dmarc.policy, verdict.disposition) == ("reject", "reject")


def test_existing_subdomain_ignores_np(zone):
    dmarc_record(zone, "v=DMARC1; p=none; sp=none; np=reject")
    verdict = evaluate(request(message("x@sub.example.com"), "b@other.net", BAD_IP),
                       zone.resolver(), OPTIONS)
    assert (verdict.dmarc.policy, verdict.disposition) == ("none", "inbox")


def test_pct_sampled_out_downgrades_reject_to_quarantine(zone):
    dmarc_record(zone, "v=DMARC1; p=reject; pct=50")
    verdict = evaluate(request(message(), "b@other.net", BAD_IP), zone.resolver(),
                       replace(OPTIONS, sampler=lambda: 0.7))
    assert (verdict.dmarc.applied_policy, verdict.dmarc.override) == ("quarantine", "sampled_out")
    assert verdict.disposition == "junk"


def test_pct_sampled_in_applies_reject(zone):
    dmarc_record(zone, "v=DMARC1; p=reject; pct=50")
    verdict = evaluate(request(message(), "b@other.net", BAD_IP), zone.resolver(),
                       replace(OPTIONS, sampler=lambda: 0.2))
    assert verdict.disposition == "reject"


def test_test_mode_downgrades_quarantine_to_none(zone):
    dmarc_record(zone, "v=DMARC1; p=quarantine; t=y")
    verdict = evaluate(request(message(), "b@other.net", BAD_IP), zone.resolver(), OPTIONS)
    assert (verdict.dmarc.result, verdict.disposition) == ("fail", "inbox")


def test_no_record_is_none(zone):
    verdict = evaluate(request(message(), "b@other.net", BAD_IP), zone.resolver(), OPTIONS)
    assert (verdict.dmarc.result, verdict.disposition) == ("none", "inbox")


def test_malformed_record_is_permerror_and_delivered(zone):
    dmarc_record(zone, "v=DMARC1; p=bogus")
    verdict = evaluate(request(message(), "b@other.net", BAD_IP), zone.resolver(), OPTIONS)
    assert (verdict.dmarc.result, verdict.disposition) == ("permerror", "inbox")


def test_two_dmarc_records_are_permerror(zone):
    zone.set_records("_dmarc.example.com", "TXT", ["v=DMARC1; p=reject", "v=DMARC1; p=none"])
    verdict = evaluate(request(message(), "b@other.net", BAD_IP), zone.resolver(), OPTIONS)
    assert verdict.dmarc.result == "permerror"


def test_multiple_from_fields_are_rejected(zone):
    msg = message(extra=b"From: mallory@evil.test\r\n")
    verdict = evaluate(request(msg), zone.resolver(), OPTIONS)
    assert (verdict.dmarc.result, verdict.disposition) == ("permerror", "reject")
    assert "From" in verdict.reason


def test_missing_from_is_rejected(zone):
    verdict = evaluate(request(message(None)), zone.resolver(), OPTIONS)
    assert verdict.disposition == "reject"


def test_malformed_from_is_delivered_when_the_operator_allows_it(zone):
    verdict = evaluate(request(message(None)), zone.resolver(),
                       replace(OPTIONS, reject_malformed_from=False))
    assert (verdict.dmarc.result, verdict.disposition) == ("permerror", "inbox")


def test_several_addresses_in_one_from_apply_the_strictest(zone):
    dmarc_record(zone, "v=DMARC1; p=reject")
    dmarc_record(zone, "v=DMARC1; p=none", "other.net")
    msg = message("a@other.net, b@example.com")
    verdict = evaluate(request(msg, "b@other.net", GOOD_IP), zone.resolver(), OPTIONS)
    assert (verdict.dmarc.from_domain, verdict.disposition) == ("example.com", "reject")


def test_org_domain_fallback_finds_parent_record(zone):
    dmarc_record(zone, "v=DMARC1; p=quarantine")
    verdict = evaluate(request(message("x@a.b.example.com"), "b@other.net", BAD_IP),
                       zone.resolver(), OPTIONS)
    assert (verdict.dmarc.policy_domain, verdict.dmarc.org_domain) == ("example.com",
                                                                       "example.com")


def test_tree_walk_finds_record_between_author_and_org_domain(zone):
    dmarc_record(zone, "v=DMARC1; p=reject", "b.example.com")
    dmarc_record(zone, "v=DMARC1; p=none")
    verdict = evaluate(request(message("x@a.b.example.com"), "b@other.net", BAD_IP),
                       zone.resolver(), replace(OPTIONS, org_domain_mode="treewalk"))
    assert (verdict.dmarc.policy_domain, verdict.disposition) == ("b.example.com", "reject")


def test_tree_walk_psd_n_ends_the_organization(zone):
    dmarc_record(zone, "v=DMARC1; p=reject; psd=n", "b.example.com")
    dmarc_record(zone, "v=DMARC1; p=none")
    zone.set_records("mail.example.com", "TXT", [f"v=spf1 ip4:{GOOD_IP} -all"])
    req = request(message("x@a.b.example.com"), "b@mail.example.com", GOOD_IP)
    walk = evaluate(req, zone.resolver(), replace(OPTIONS, org_domain_mode="treewalk"))
    psl = evaluate(req, zone.resolver(), OPTIONS)
    assert walk.dmarc.org_domain == "b.example.com" and walk.dmarc.result == "fail"
    assert psl.dmarc.result == "pass"


def test_dns_timeout_is_tempfail_never_reject(zone):
    dmarc_record(zone, "v=DMARC1; p=reject")
    zone.timeout("sel._domainkey.example.com")
    started = time.monotonic()
    verdict = evaluate(request(message(sign="example.com"), "b@other.net", BAD_IP),
                       zone.resolver(timeout=0.5), OPTIONS)
    assert verdict.dkim[0].result == "temperror"
    assert (verdict.dmarc.result, verdict.disposition) == ("temperror", "tempfail")
    assert time.monotonic() - started < 3


def test_policy_lookup_timeout_is_tempfail(zone):
    zone.timeout("_dmarc.example.com")
    verdict = evaluate(request(message(), "b@other.net", BAD_IP), zone.resolver(timeout=0.3),
                       OPTIONS)
    assert (verdict.dmarc.result, verdict.disposition) == ("temperror", "tempfail")


def test_monitor_only_domain_is_never_rejected(zone):
    dmarc_record(zone, "v=DMARC1; p=reject")
    options = replace(OPTIONS, overrides={"receiver.test": DmarcOverride(monitor_only=True)})
    verdict = evaluate(request(message(), "b@other.net", BAD_IP), zone.resolver(), options)
    assert (verdict.dmarc.result, verdict.dmarc.override, verdict.disposition) == (
        "fail", "local_policy", "inbox")


def test_trusted_forwarder_is_never_rejected(zone):
    dmarc_record(zone, "v=DMARC1; p=reject")
    options = replace(OPTIONS, trusted_forwarders=(ipaddress.ip_network("198.51.100.0/24"),))
    verdict = evaluate(request(message(), "b@other.net", BAD_IP), zone.resolver(), options)
    assert (verdict.dmarc.override, verdict.disposition) == ("trusted_forwarder", "inbox")


def test_authentication_results_reports_each_method(zone):
    dmarc_record(zone, "v=DMARC1; p=reject")
    verdict = evaluate(request(message(sign="example.com")), zone.resolver(), OPTIONS)
    header = verdict.authentication_results
    assert header.startswith("mx.receiver.test;")
    assert "spf=pass smtp.mailfrom=bounce@example.com" in header
    assert "dkim=pass" in header and "header.d=example.com header.s=sel" in header
    assert "dmarc=pass (p=reject dis=none) header.from=example.com" in header


def test_verdict_is_json_serialisable(zone):
    import json

    dmarc_record(zone, "v=DMARC1; p=reject")
    verdict = evaluate(request(message(sign="example.com")), zone.resolver(), OPTIONS)
    assert json.loads(json.dumps(verdict.to_json()))["disposition"] == "inbox"
