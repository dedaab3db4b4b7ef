"""The dmarc service process: POST /v1/check over HTTP, with DNS from the loopback server."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import pytest

from postroom.mailauth import dkimsign
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, runtime_argv

PRIVATE, PUBLIC_TXT = dkimsign.generate_keys("ed25519-sha256")
MESSAGE = (b"From: alice@example.com\r\nTo: bob@receiver.test\r\nSubject: hi\r\n"
           b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\nHello.\r\n")


@pytest.fixture(scope="module")
def dmarc_url(dns_server_session, database_url, redis_url):
    port = free_port()
    env = {**dns_server_session.env, "POSTROOM_DNS_TIMEOUT": "1s",
           "POSTROOM_HOSTNAME": "mx.receiver.test",
           "POSTROOM_DMARC_LISTEN": f"tcp:{port}:interface=127.0.0.1",
           # verdicts are stored for aggregate reports; no reports are sent from these tests
           "POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
           "POSTROOM_DMARC_REPORTS": "false"}
    # through the runtime by module path: the entry point is registered by the lead
    with ServiceProcess("dmarc", env, argv=runtime_argv("postroom_dmarc.main:SERVICE")):
        yield f"http://127.0.0.1:{port}/v1/check"


@pytest.fixture
def dmarc(dmarc_url, dns_server):
    dns_server.set_records("example.com", "TXT", ["v=spf1 ip4:192.0.2.10 -all"])
    dns_server.set_records("_dmarc.example.com", "TXT", ["v=DMARC1; p=reject"])
    dns_server.set_records("sel._domainkey.example.com", "TXT", [PUBLIC_TXT])
    return dmarc_url


def post(url: str, body: bytes, timeout: float = 10) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def check_body(message: bytes, ip: str, mail_from: str = "b@other.net") -> bytes:
    return json.dumps({"client_ip": ip, "helo": "mail.other.net", "mail_from": mail_from,
                       "recipients": ["bob@receiver.test"], "queue_id": "Q1",
                       "message_b64": base64.b64encode(message).decode()}).encode()


def test_signed_message_passes(dmarc):
    signed = dkimsign.sign(MESSAGE, "example.com", "sel", PRIVATE, "ed25519-sha256") + MESSAGE
    status, verdict = post(dmarc, check_body(signed, "198.51.100.1"))
    assert status == 200
    assert (verdict["dmarc"]["result"], verdict["disposition"]) == ("pass", "inbox")
    assert verdict["authentication_results"].startswith("mx.receiver.test;")


def test_spoofed_message_is_rejected_with_a_reason(dmarc):
    status, verdict = post(dmarc, check_body(MESSAGE, "198.51.100.1"))
    assert (status, verdict["disposition"]) == (200, "reject")
    assert "example.com" in verdict["reason"]


def test_dns_timeout_answers_tempfail_within_deadline(dmarc, dns_server):
    dns_server.timeout("_dmarc.example.com")
    started = time.monotonic()
    status, verdict = post(dmarc, check_body(MESSAGE, "198.51.100.1"))
    assert (status, verdict["disposition"]) == (200, "tempfail")
    assert time.monotonic() - started < 8


def test_malformed_json_is_400(dmarc):
    status, body = post(dmarc, b"{not json")
    assert (status, body) == (400, {"error": "body is not JSON"})


def test_missing_message_is_400(dmarc):
    status, body = post(dmarc, json.dumps({"client_ip": "192.0.2.1"}).encode())
    assert status == 400 and "message_b64" in body["error"]


def raw_body(message: bytes, ip: str, mail_from: str = "b@other.net") -> bytes:
    return json.dumps({"client_ip": ip, "helo": "mail.other.net", "mail_from": mail_from,
                       "recipients": ["bob@receiver.test"], "queue_id": "Q1"}).encode() \
        + b"\n" + message


def test_raw_check_gives_the_json_checks_verdict(dmarc):
    signed = dkimsign.sign(MESSAGE, "example.com", "sel", PRIVATE, "ed25519-sha256") + MESSAGE
    status, verdict = post(dmarc + "-raw", raw_body(signed, "198.51.100.1"))
    assert (status, verdict) == post(dmarc, check_body(signed, "198.51.100.1"))
    assert (verdict["dmarc"]["result"], verdict["disposition"]) == ("pass", "inbox")


def test_raw_check_without_an_envelope_line_is_400(dmarc):
    status, body = post(dmarc + "-raw", b'{"client_ip": "192.0.2.1"}')
    assert (status, body) == (400, {"error": "no line break after the envelope"})
