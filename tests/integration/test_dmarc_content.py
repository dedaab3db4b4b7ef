"""The attachment check inside the dmarc service's POST /v1/check (issue 17), over HTTP.

The sender's SPF passes, so DMARC alone would say inbox: the attachment
check decides. Its result is in the verdict's ``content`` list, counted in
``/metrics`` and logged once per verdict with the queue id.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, runtime_argv

PE = b"MZ" + b"\x90" * 0x3A + (0x40).to_bytes(4, "little") + b"PE\x00\x00" + b"\x00" * 200


@pytest.fixture(scope="module")
def service(dns_server_session, database_url, redis_url):
    port = free_port()
    env = {**dns_server_session.env, "POSTROOM_DNS_TIMEOUT": "1s",
           "POSTROOM_HOSTNAME": "mx.receiver.test",
           "POSTROOM_DMARC_LISTEN": f"tcp:{port}:interface=127.0.0.1",
           "POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
           "POSTROOM_DMARC_REPORTS": "false",
           "POSTROOM_ATTACHMENT_BLOCKED_EXTENSIONS": "exe,scr,js"}
    with ServiceProcess("dmarc", env, argv=runtime_argv("postroom_dmarc.main:SERVICE")) as proc:
        yield (f"http://127.0.0.1:{port}/v1/check",
               f"http://127.0.0.1:{proc.http_port}/metrics", proc)


@pytest.fixture
def url(service, dns_server):
    dns_server.set_records("example.com", "TXT", ["v=spf1 ip4:192.0.2.10 -all"])
    dns_server.set_records("_dmarc.example.com", "TXT", ["v=DMARC1; p=reject"])
    return service[0]


def message(filename: str | None = None, data: bytes = b"") -> bytes:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@receiver.test"
    msg["Subject"] = "files"
    msg.set_content("see attached\n")
    if filename is not None:
        msg.add_attachment(data, maintype="application", subtype="octet-stream",
                           filename=filename)
    return msg.as_bytes(policy=SMTP)


def check(url: str, raw: bytes, ip: str = "192.0.2.10", queue_id: str = "QC1") -> dict:
    body = json.dumps({"client_ip": ip, "helo": "mail.example.com",
                       "mail_from": "alice@example.com", "recipients": ["bob@receiver.test"],
                       "queue_id": queue_id,
                       "message_b64": base64.b64encode(raw).decode()}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=20) as answer:
        return json.loads(answer.read())


def test_a_clean_message_is_inbox_with_the_check_listed(url):
    verdict = check(url, message("notes.txt", b"hello\n"))
    assert verdict["disposition"] == "inbox", verdict
    assert [{k: c[k] for k in ("check", "action", "reason", "headers")}
            for c in verdict["content"]] == [{"check": "attachments", "action": "accept",
                                              "reason": "", "headers": []}]
    assert verdict["headers"] == [] and verdict["decided_by"] is None


def test_a_plain_message_twice_the_second_from_the_dns_cache(url):
    for _ in range(2):
        verdict = check(url, message())
        assert verdict["disposition"] == "inbox"
        assert verdict["content"][0]["action"] == "accept"


def test_an_attachment_after_a_cached_verdict_is_still_judged(url):
    check(url, message())  # the sender's DNS answers are now cached
    verdict = check(url, message("tool.exe", b"x"))
    assert verdict["disposition"] == "reject"


def test_a_blocked_attachment_rejects_with_its_reason(url, service):
    verdict = check(url, message("tool.exe", b"x"), queue_id="QEXE1")
    assert verdict["disposition"] == "reject"
    assert verdict["reason"] == 'attachment "tool.exe" blocked: blocked file type .exe'
    assert verdict["content"][0]["action"] == "reject"
    assert verdict["decided_by"] == "attachments"
    assert verdict["dmarc"]["result"] == "pass"  # DMARC alone would have let it in
    lines = [e for e in service[2].log_events() if e.get("event") == "content verdict"
             and e.get("queue_id") == "QEXE1"]
    assert len(lines) == 1 and lines[0]["disposition"] == "reject", lines


def test_the_setting_replaces_the_list_and_content_still_counts(url):
    assert check(url, message("setup.msi", b"x"))["disposition"] == "inbox"  # not listed
    lying = check(url, message("setup.msi", PE))
    assert lying["disposition"] == "reject" and "Windows executable" in lying["reason"]


def test_an_uninspectable_archive_goes_to_junk(url):
    verdict = check(url, message("files.rar", b"Rar!\x1a\x07\x01\x00" + b"\x00" * 64))
    assert verdict["disposition"] == "junk"
    assert verdict["content"][0]["action"] == "quarantine"


def test_a_dmarc_reject_is_not_scanned(url):
    verdict = check(url, message("tool.exe", b"x"), ip="198.51.100.7")
    assert verdict["disposition"] == "reject" and "DMARC" in verdict["reason"]
    assert "content" not in verdict


def test_results_are_counted(url, service):
    check(url, message("tool.exe", b"x"))
    with urllib.request.urlopen(service[1], timeout=10) as answer:
        text = answer.read().decode()
    assert 'postroom_content_results_total{action="reject",category="blocked_extension",' \
        'check="attachments"}' in text, [line for line in text.splitlines() if "content" in line]
    assert "postroom_content_check_seconds_bucket" in text
