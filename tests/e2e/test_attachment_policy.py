"""The attachment policy through a whole instance's mta and dmarc services (issue 17).

three.test runs dmarc, mda, mta and imap on 127.0.0.4; a plain smtplib
client on 127.0.0.1 talks to its port 25 with the sender's SPF passing: an
.exe attachment is refused at the end of DATA with 554 5.7.1 naming it and
nothing is spooled or bounced; a clean PDF is delivered to INBOX; an archive
that cannot be looked into (rar) goes to Junk.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from tests.support.dns import DNSServer
from tests.support.instance import Instance, fresh_user, shared_free_port

pytestmark = pytest.mark.slow

THREE = "127.0.0.17"
CLIENT = "127.0.0.1"
SENDER = "alice@files.test"


@pytest.fixture(scope="module")
def three(redis_url: str, dns_server_session: DNSServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    with Instance("three.test", THREE, redis_url, tmp_path_factory.mktemp("attachments"),
                  smtp_port=shared_free_port(THREE), dns=dns_server_session) as instance:
        instance.spawn(("dmarc", "mda", "mta", "imap"))
        instance.setup_domain()
        instance.wait()
        yield instance


@pytest.fixture(autouse=True)
def zones(three: Instance, dns_server: DNSServer) -> DNSServer:
    three.publish("p=reject")
    dns_server.set_records("client.example", "A", [CLIENT])
    dns_server.load({"files.test": {"TXT": [f"v=spf1 ip4:{CLIENT} -all"]},
                     "_dmarc.files.test": {"TXT": ["v=DMARC1; p=none"]}})
    return dns_server


def message(rcpt: str, filename: str, data: bytes, subtype: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = rcpt
    msg["Subject"] = f"attachment {secrets.token_hex(3)}"
    msg["Message-ID"] = f"<{secrets.token_hex(8)}@client.example>"
    msg.set_content("see attached\n")
    msg.add_attachment(data, maintype="application", subtype=subtype, filename=filename)
    return msg.as_bytes(policy=SMTP)


def send(three: Instance, rcpt: str, raw: bytes) -> tuple[int, str]:
    client = three.smtp(source=CLIENT)
    try:
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        code, reply = client.data(raw)
        return code, reply.decode(errors="replace")
    finally:
        client.close()


PE = b"MZ" + b"\x90" * 0x3A + (0x40).to_bytes(4, "little") + b"PE\x00\x00" + b"\x00" * 200
PDF = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
       b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def test_an_exe_attachment_gets_554_and_nothing_is_stored(three: Instance) -> None:
    bob = fresh_user(three, "bob")
    code, reply = send(three, bob, message(bob, "setup.exe", PE, "octet-stream"))
    assert code == 554, (code, reply)
    assert reply.startswith("5.7.1 ") and 'attachment "setup.exe" blocked' in reply, reply
    assert three.query("SELECT count(*) FROM spool_messages WHERE mail_from = :s",
                       s=SENDER)[0][0] == 0
    assert three.query("SELECT count(*) FROM spool_messages WHERE kind = 'bounce'")[0][0] == 0
    events = [e for e in three.log_events("dmarc") if e.get("event") == "content verdict"]
    assert any(e.get("disposition") == "reject" for e in events), events


def test_a_pdf_that_is_an_executable_gets_554(three: Instance) -> None:
    bob = fresh_user(three, "bob")
    code, reply = send(three, bob, message(bob, "invoice.pdf", PE, "pdf"))
    assert code == 554 and "Windows executable" in reply, (code, reply)


def test_a_clean_pdf_is_delivered(three: Instance) -> None:
    bob = fresh_user(three, "bob")
    code, reply = send(three, bob, message(bob, "report.pdf", PDF, "pdf"))
    assert code == 250, (code, reply)
    [raw] = three.wait_for_mail(bob)
    assert b"report.pdf" in raw


def test_an_uninspectable_archive_lands_in_junk(three: Instance) -> None:
    bob = fresh_user(three, "bob")
    rar = b"Rar!\x1a\x07\x01\x00" + b"\x00" * 64
    code, reply = send(three, bob, message(bob, "files.rar", rar, "vnd.rar"))
    assert code == 250, (code, reply)
    [raw] = three.wait_for_mail(bob, mailbox="Junk")
    assert b"files.rar" in raw
    assert three.fetch_all(bob) == []
