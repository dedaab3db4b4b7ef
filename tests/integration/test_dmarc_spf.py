"""SPF over the real loopback DNS server: identities, limits, temperror."""

from __future__ import annotations

from postroom_dmarc import spfcheck


def test_mail_from_pass(dns_server):
    dns_server.set_records("example.com", "TXT", ["v=spf1 ip4:192.0.2.0/24 -all"])
    result = spfcheck.check("192.0.2.9", "bounce@example.com", "mx.example.com",
                            dns_server.resolver())
    assert (result.result, result.identity, result.domain) == ("pass", "mailfrom", "example.com")


def test_mail_from_fail_carries_the_exp_explanation(dns_server):
    dns_server.set_records("example.com", "TXT", ["v=spf1 -all exp=why.example.com"])
    dns_server.set_records("why.example.com", "TXT", ["%{i} may not send for %{d}"])
    result = spfcheck.check("198.51.100.7", "a@example.com", "x", dns_server.resolver())
    assert (result.result, result.explanation) == ("fail",
                                                   "198.51.100.7 may not send for example.com")


def test_helo_identity(dns_server):
    dns_server.set_records("mx.example.com", "TXT", ["v=spf1 a -all"])
    dns_server.set_records("mx.example.com", "A", ["192.0.2.25"])
    result = spfcheck.check_helo("192.0.2.25", "mx.example.com", dns_server.resolver())
    assert (result.result, result.identity) == ("pass", "helo")


def test_more_than_ten_lookups_is_permerror(dns_server):
    includes = " ".join(f"include:i{n}.example.com" for n in range(11))
    dns_server.set_records("example.com", "TXT", [f"v=spf1 {includes} -all"])
    for n in range(11):
        dns_server.set_records(f"i{n}.example.com", "TXT", ["v=spf1 ?all" if n == 10 else
                                                            "v=spf1 -ip4:0.0.0.0/32"])
    result = spfcheck.check("192.0.2.1", "a@example.com", "x", dns_server.resolver())
    assert result.result == "permerror"


def test_more_than_two_void_lookups_is_permerror(dns_server):
    dns_server.set_records("example.com", "TXT", ["v=spf1 a:v1.example.com a:v2.example.com "
                                                  "a:v3.example.com -all"])
    result = spfcheck.check("192.0.2.1", "a@example.com", "x", dns_server.resolver())
    assert result.result == "permerror"


def test_timeout_is_temperror(dns_server):
    dns_server.timeout("example.com")
    result = spfcheck.check("192.0.2.1", "a@example.com", "x", dns_server.resolver(timeout=0.3))
    assert result.result == "temperror"


def test_macro_exists_over_dns(dns_server):
    dns_server.set_records("example.com", "TXT",
                           ["v=spf1 exists:%{ir}.%{l1r-}.allow.example.com -all"])
    dns_server.set_records("1.2.0.192.user.allow.example.com", "A", ["127.0.0.2"])
    result = spfcheck.check("192.0.2.1", "user@example.com", "x", dns_server.resolver())
    assert result.result == "pass"
