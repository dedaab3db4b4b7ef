"""What mail clients read to configure themselves: Thunderbird autoconfig, Outlook
autodiscover (POX) and Apple configuration profiles, as pure functions of the host name.

Every client is told the same thing: IMAP on 993 (TLS) and 143 (STARTTLS), POP3 on 995
and 110, SMTP submission on 465 (TLS, RFC 8314) and 587 (STARTTLS), the whole address as
the user name, a password (the main one, or an app password when two-factor login is on).
The web service serves them (docs/web.md, "Clients that configure themselves").
"""

from __future__ import annotations

import plistlib
import uuid
from dataclasses import dataclass
from xml.etree.ElementTree import Element, SubElement, tostring

from defusedxml import ElementTree as SafeTree
from defusedxml.common import DefusedXmlException

# an autodiscover request is a few hundred bytes; anything much larger is not one
MAX_AUTODISCOVER_BYTES = 8192
MAX_ADDRESS_CHARS = 254


@dataclass(frozen=True)
class Server:
    kind: str          # imap, pop3, smtp
    port: int
    socket: str        # "SSL" (TLS from the first byte) or "STARTTLS"


SERVERS: tuple[Server, ...] = (
    Server("imap", 993, "SSL"), Server("imap", 143, "STARTTLS"),
    Server("pop3", 995, "SSL"), Server("pop3", 110, "STARTTLS"),
    Server("smtp", 465, "SSL"), Server("smtp", 587, "STARTTLS"),
)

RESPONSE_SCHEMA = ("http://schemas.microsoft.com/exchange/autodiscover/"
                   "outlook/responseschema/2006a")
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
MOBILECONFIG_TYPE = "application/x-apple-aspen-config"


def plausible_address(text: str | None) -> str | None:
    """``text`` when it looks like one mail address (used only as a label), else None."""
    if not text:
        return None
    text = text.strip()
    if len(text) > MAX_ADDRESS_CHARS or text.count("@") != 1 or any(
            c.isspace() or c in "<>\"'&\\" or ord(c) < 32 for c in text):
        return None
    local, domain = text.split("@")
    return text if local and "." in domain else None


def _domain(address: str | None, hostname: str) -> str:
    if address and "@" in address:
        return address.rsplit("@", 1)[1].lower()
    return hostname.lower()


def thunderbird_config(hostname: str, address: str | None = None) -> bytes:
    """Thunderbird's ``config-v1.1.xml`` (the clientConfig format) for ``hostname``."""
    domain = _domain(address, hostname)
    root = Element("clientConfig", version="1.1")
    provider = SubElement(root, "emailProvider", id=domain)
    SubElement(provider, "domain").text = domain
    SubElement(provider, "displayName").text = f"Mail at {domain}"
    SubElement(provider, "displayShortName").text = domain
    for server in SERVERS:
        tag = "outgoingServer" if server.kind == "smtp" else "incomingServer"
        node = SubElement(provider, tag, type=server.kind)
        SubElement(node, "hostname").text = hostname
        SubElement(node, "port").text = str(server.port)
        SubElement(node, "socketType").text = server.socket
        SubElement(node, "username").text = "%EMAILADDRESS%"
        SubElement(node, "authentication").text = "password-cleartext"
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + tostring(root, encoding="utf-8",
                                                                  xml_declaration=False)


class BadAutodiscover(ValueError):
    """The body is not an Outlook autodiscover request we answer."""


def autodiscover_address(body: bytes) -> str:
    """The EMailAddress of an Outlook POX autodiscover request (bounded, no entities, no
    DTDs: defusedxml refuses them)."""
    if len(body) > MAX_AUTODISCOVER_BYTES:
        raise BadAutodiscover("request too large")
    try:
        root = SafeTree.fromstring(body, forbid_dtd=True)
    except (SafeTree.ParseError, DefusedXmlException, ValueError) as exc:
        raise BadAutodiscover("not a well-formed request") from exc
    for node in root.iter():
        if node.tag.rsplit("}", 1)[-1] == "EMailAddress":
            found = plausible_address(node.text)
            if found is not None:
                return found
    raise BadAutodiscover("no EMailAddress in the request")


def autodiscover_response(hostname: str, address: str) -> bytes:
    """The POX response (Outlook's 2006a schema): IMAP on 993 and SMTP on 465, both TLS."""
    root = Element("Autodiscover", xmlns=RESPONSE_NS)
    response = SubElement(root, "Response", xmlns=RESPONSE_SCHEMA)
    account = SubElement(response, "Account")
    SubElement(account, "AccountType").text = "email"
    SubElement(account, "Action").text = "settings"
    for kind, port in (("IMAP", 993), ("SMTP", 465)):
        protocol = SubElement(account, "Protocol")
        SubElement(protocol, "Type").text = kind
        SubElement(protocol, "Server").text = hostname
        SubElement(protocol, "Port").text = str(port)
        SubElement(protocol, "LoginName").text = address
        SubElement(protocol, "DomainRequired").text = "off"
        SubElement(protocol, "SPA").text = "off"
        SubElement(protocol, "SSL").text = "on"
        SubElement(protocol, "AuthRequired").text = "on"
        if kind == "SMTP":
            SubElement(protocol, "UsePOPAuth").text = "off"
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + tostring(root, encoding="utf-8",
                                                                  xml_declaration=False)


def mobileconfig(hostname: str, address: str) -> bytes:
    """An unsigned Apple configuration profile with one com.apple.mail.managed payload
    (IMAP on 993 and SMTP on 465, both TLS, password asked on the device)."""
    domain = _domain(address, hostname)
    reverse = ".".join(reversed(domain.split(".")))
    seed = uuid.uuid5(uuid.NAMESPACE_DNS, f"{address}.{hostname}")
    mail = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{reverse}.postroom.mail.{seed.hex[:12]}",
        "PayloadUUID": str(uuid.uuid5(seed, "mail")).upper(),
        "PayloadDisplayName": f"Mail ({address})",
        "EmailAccountDescription": address,
        "EmailAccountName": address,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": hostname,
        "IncomingMailServerPortNumber": 993,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": hostname,
        "OutgoingMailServerPortNumber": 465,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    profile = {
        "PayloadContent": [mail],
        "PayloadDisplayName": f"Mail at {domain}",
        "PayloadIdentifier": f"{reverse}.postroom.{seed.hex[:12]}",
        "PayloadRemovalDisallowed": False,
        "PayloadType": "Configuration",
        "PayloadUUID": str(seed).upper(),
        "PayloadVersion": 1,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)
