"""What mail clients are told: Thunderbird's autoconfig XML, Outlook's autodiscover answer,
the Apple profile, each parsed back with hosts, ports and socket types checked."""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET

import pytest

from postroom.mailauth.dnsrecords import all_records, client_records
from postroom.ops import autoconfig

HOST = "mail.example.org"


def test_thunderbird_config_lists_imap_pop3_and_submission_with_tls_and_starttls():
    root = ET.fromstring(autoconfig.thunderbird_config(HOST, "ann@example.org"))
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == "example.org"
    found = {(n.get("type"), n.findtext("hostname"), n.findtext("port"),
              n.findtext("socketType"), n.findtext("username"))
             for n in [*provider.findall("incomingServer"), *provider.findall("outgoingServer")]}
    assert found == {
        ("imap", HOST, "993", "SSL", "%EMAILADDRESS%"),
        ("imap", HOST, "143", "STARTTLS", "%EMAILADDRESS%"),
        ("pop3", HOST, "995", "SSL", "%EMAILADDRESS%"),
        ("pop3", HOST, "110", "STARTTLS", "%EMAILADDRESS%"),
        ("smtp", HOST, "465", "SSL", "%EMAILADDRESS%"),
        ("smtp", HOST, "587", "STARTTLS", "%EMAILADDRESS%"),
    }
    assert {n.get("type") for n in provider.findall("outgoingServer")} == {"smtp"}


def test_a_strange_emailaddress_is_not_echoed():
    assert autoconfig.plausible_address("<script>@x.org") is None
    assert autoconfig.plausible_address("a" * 300 + "@x.org") is None
    root = ET.fromstring(autoconfig.thunderbird_config(HOST, None))
    assert root.find("emailProvider").get("id") == HOST  # type: ignore[union-attr]


REQUEST = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request><EMailAddress>ann@example.org</EMailAddress>
  <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request></Autodiscover>"""


def test_autodiscover_answers_imap_and_smtp_over_tls_for_the_address_asked():
    address = autoconfig.autodiscover_address(REQUEST)
    assert address == "ann@example.org"
    root = ET.fromstring(autoconfig.autodiscover_response(HOST, address))
    ns = {"r": autoconfig.RESPONSE_SCHEMA}
    protocols = {p.findtext("r:Type", namespaces=ns): (
        p.findtext("r:Server", namespaces=ns), p.findtext("r:Port", namespaces=ns),
        p.findtext("r:SSL", namespaces=ns), p.findtext("r:LoginName", namespaces=ns))
        for p in root.iter(f"{{{autoconfig.RESPONSE_SCHEMA}}}Protocol")}
    assert protocols == {"IMAP": (HOST, "993", "on", "ann@example.org"),
                         "SMTP": (HOST, "465", "on", "ann@example.org")}


@pytest.mark.parametrize("body", [
    b"",
    b"<not xml",
    b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]><a><EMailAddress>&e;</EMailAddress></a>',
    b"<a>" + b"x" * 10_000 + b"</a>",
    b"<Autodiscover><Request><EMailAddress>no at sign</EMailAddress></Request></Autodiscover>",
])
def test_a_hostile_or_broken_autodiscover_request_is_refused(body: bytes):
    with pytest.raises(autoconfig.BadAutodiscover):
        autoconfig.autodiscover_address(body)


def test_the_apple_profile_has_one_mail_payload_with_imap_and_smtp_over_tls():
    profile = plistlib.loads(autoconfig.mobileconfig(HOST, "ann@example.org"))
    assert profile["PayloadType"] == "Configuration"
    [mail] = profile["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"],
            mail["IncomingMailServerUseSSL"]) == (HOST, 993, True)
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"],
            mail["OutgoingMailServerUseSSL"]) == (HOST, 465, True)
    assert mail["EmailAddress"] == mail["IncomingMailServerUsername"] == "ann@example.org"
    # stable: the same profile twice replaces itself on the device instead of duplicating
    assert autoconfig.mobileconfig(HOST, "ann@example.org") == \
        autoconfig.mobileconfig(HOST, "ann@example.org")


def test_postroom_dns_prints_the_rfc_6186_srv_records_and_the_client_names():
    lines = client_records("Example.ORG", HOST)
    assert "_submissions._tcp.example.org. IN SRV 0 1 465 mail.example.org." in lines
    assert "_submission._tcp.example.org. IN SRV 10 1 587 mail.example.org." in lines
    assert "_imaps._tcp.example.org. IN SRV 0 1 993 mail.example.org." in lines
    assert "_imap._tcp.example.org. IN SRV 10 1 143 mail.example.org." in lines
    assert "_pop3s._tcp.example.org. IN SRV 0 1 995 mail.example.org." in lines
    assert "_pop3._tcp.example.org. IN SRV 10 1 110 mail.example.org." in lines
    assert "autoconfig.example.org. IN CNAME mail.example.org." in lines
    assert "autodiscover.example.org. IN CNAME mail.example.org." in lines
    assert set(lines) <= set(all_records("example.org", HOST, []))
