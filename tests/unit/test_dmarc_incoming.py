"""Incoming aggregate reports: unpacking (gzip, zip, XML) and refusing bombs and unsafe XML."""

from __future__ import annotations

import gzip
import io
import resource
import zipfile
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from postroom.mailauth import dmarcreport
from postroom.mailauth.dmarcreport import IncomingLimits, ReportError, parse_report_message

XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<feedback>
  <version>1.0</version>
  <report_metadata><org_name>google.com</org_name><email>noreply@google.com</email>
    <report_id>1234</report_id><date_range><begin>1764115200</begin><end>1764201599</end>
    </date_range></report_metadata>
  <policy_published><domain>example.org</domain><adkim>r</adkim><aspf>r</aspf><p>none</p>
    <sp>none</sp><pct>100</pct></policy_published>
  <record><row><source_ip>192.0.2.10</source_ip><count>7</count><policy_evaluated>
    <disposition>none</disposition><dkim>pass</dkim><spf>fail</spf></policy_evaluated></row>
    <identifiers><header_from>example.org</header_from></identifiers>
    <auth_results><dkim><domain>example.org</domain><selector>s1</selector><result>pass</result>
    </dkim><spf><domain>bounce.example.org</domain><result>pass</result></spf></auth_results>
  </record>
  <record><row><source_ip>203.0.113.5</source_ip><count>3</count><policy_evaluated>
    <disposition>none</disposition><dkim>fail</dkim><spf>fail</spf></policy_evaluated></row>
    <identifiers><header_from>example.org</header_from></identifiers>
    <auth_results><spf><domain>spammer.test</domain><result>fail</result></spf></auth_results>
  </record>
</feedback>
"""


def mail(payload: bytes, subtype: str, filename: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "noreply-dmarc-support@google.com"
    msg["To"] = "dmarc-reports@example.org"
    msg["Subject"] = "Report domain: example.org Submitter: google.com Report-ID: 1234"
    msg.set_content("report attached\n")
    msg.add_attachment(payload, maintype="application", subtype=subtype, filename=filename)
    return msg.as_bytes()


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_gzip_report_is_parsed():
    report = parse_report_message(mail(gzip.compress(XML), "gzip", "r.xml.gz"))
    assert (report.org_name, report.report_id, report.domain) == ("google.com", "1234",
                                                                  "example.org")
    assert report.begin == datetime(2025, 11, 26, tzinfo=UTC)
    assert [(r.source_ip, r.count, r.passes) for r in report.rows] == [
        ("192.0.2.10", 7, True), ("203.0.113.5", 3, False)]


def test_zip_report_is_parsed():
    report = parse_report_message(mail(zipped({"r.xml": XML}), "zip", "r.zip"))
    assert report.rows[0].dkim_results == (("example.org", "s1", "pass"),)


def test_plain_xml_report_is_parsed():
    report = parse_report_message(mail(XML, "xml", "r.xml"))
    assert sum(r.count for r in report.rows) == 10


def test_namespaced_dmarcbis_report_is_parsed():
    xml = XML.replace(b"<feedback>", b'<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">')
    assert len(parse_report_message(mail(xml, "xml", "r.xml")).rows) == 2


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_gzip_bomb_is_refused_without_inflating_it():
    bomb = gzip.compress(b"\0" * (60 * 1024 * 1024), compresslevel=9)  # ~60 KiB compressed
    before = _peak_rss_kib()
    with pytest.raises(ReportError, match=r"ratio|expands"):
        parse_report_message(mail(bomb, "gzip", "r.xml.gz"))
    assert _peak_rss_kib() - before < 64 * 1024


def test_zip_bomb_is_refused_without_inflating_it():
    bomb = zipped({"r.xml": b"<" + b" " * (60 * 1024 * 1024)})
    before = _peak_rss_kib()
    with pytest.raises(ReportError, match=r"ratio|expands"):
        parse_report_message(mail(bomb, "zip", "r.zip"))
    assert _peak_rss_kib() - before < 64 * 1024


def test_zip_with_many_members_is_refused():
    archive = zipped({f"r{i}.xml": XML for i in range(20)})
    with pytest.raises(ReportError, match="members"):
        parse_report_message(mail(archive, "zip", "r.zip"))


def test_uncompressed_size_cap_applies():
    with pytest.raises(ReportError, match="expands"):
        parse_report_message(mail(gzip.compress(XML), "gzip", "r.xml.gz"),
                             IncomingLimits(max_xml=100))


def test_attachment_size_cap_applies():
    with pytest.raises(ReportError, match="larger than"):
        parse_report_message(mail(XML, "xml", "r.xml"), IncomingLimits(max_compressed=100))


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<feedback><report_metadata><org_name>&lol9;</org_name></report_metadata></feedback>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE feedback [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<feedback><report_metadata><org_name>&xxe;</org_name></report_metadata></feedback>
"""


def test_billion_laughs_is_refused():
    before = _peak_rss_kib()
    with pytest.raises(ReportError, match="unsafe XML"):
        parse_report_message(mail(BILLION_LAUGHS, "xml", "r.xml"))
    assert _peak_rss_kib() - before < 64 * 1024


def test_external_entity_is_refused():
    with pytest.raises(ReportError, match="unsafe XML"):
        parse_report_message(mail(EXTERNAL_ENTITY, "xml", "r.xml"))


def test_mail_without_report_is_refused():
    msg = EmailMessage()
    msg.set_content("hello")
    with pytest.raises(ReportError, match="no aggregate report"):
        parse_report_message(msg.as_bytes())


def test_bad_source_ip_is_refused():
    with pytest.raises(ReportError, match="source_ip"):
        parse_report_message(mail(XML.replace(b"203.0.113.5", b"nope"), "xml", "r.xml"))


def test_sources_from_reports_say_which_pass():
    report = parse_report_message(mail(XML, "xml", "r.xml"))
    rows = dmarcreport.incoming_sources(("google.com", r) for r in report.rows)
    assert [(r["source_ip"], r["messages"], r["status"]) for r in rows] == [
        ("192.0.2.10", 7, "passes"), ("203.0.113.5", 3, "fails")]
