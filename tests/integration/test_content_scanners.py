"""The rspamd and clamd clients against the real daemons (tests/support/scanners.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from twisted.internet import defer

from postroom.metrics import Metrics
from postroom_dmarc.content import ContentResult
from postroom_dmarc.content.clamd import ClamdCheck
from postroom_dmarc.content.rspamd import RspamdClient, ScanRequest
from tests.support.ports import free_port
from tests.support.redisdb import in_reactor
from tests.support.scanners import (
    EICAR,
    GTUBE,
    JUNK_SUBJECT,
    RSPAMD_PASSWORD,
    ClamdServer,
    RspamdServer,
    message_with_attachment,
    zip_with_pattern,
)

CLEAN = (b"From: Carol <carol@client.example>\r\nTo: Bob <bob@example.test>\r\n"
         b"Subject: lunch\r\nMessage-ID: <clean-1@client.example>\r\n"
         b"Date: Mon, 07 Dec 2026 06:00:00 +0000\r\n\r\nLunch tomorrow at noon?\r\n")


def _scan(client: RspamdClient, message: bytes, **kw: Any) -> ContentResult:
    request = ScanRequest(message=message, queue_id="TESTQ1", client_ip="192.0.2.10",
                          helo="client.example", mail_from="carol@client.example",
                          recipients=["bob@example.test"], spf="pass",
                          dkim=[("pass", "client.example")], dmarc="pass", **kw)
    result: ContentResult = in_reactor(
        lambda: defer.Deferred.fromCoroutine(client.check(request)), timeout=30)
    return result


@pytest.fixture
def rspamd(rspamd_server: RspamdServer, twisted_reactor: Any) -> Any:
    client = RspamdClient(rspamd_server.url, reactor=twisted_reactor, timeout=10,
                          password=RSPAMD_PASSWORD, controller_url=rspamd_server.controller_url,
                          metrics=Metrics("test", process_metrics=False))
    yield client
    in_reactor(client.close)


def test_gtube_gets_reject_from_rspamd(rspamd: RspamdClient) -> None:
    result = _scan(rspamd, CLEAN.replace(b"Lunch tomorrow at noon?", GTUBE))
    assert result.action == "reject", result
    assert result.details["rspamd_action"] == "reject"
    assert "GTUBE" in dict(result.headers)["X-Spamd-Result"]


def test_add_header_action_means_junk(rspamd: RspamdClient) -> None:
    result = _scan(rspamd, CLEAN.replace(b"Subject: lunch", f"Subject: {JUNK_SUBJECT}".encode()))
    assert result.action == "quarantine", result
    headers = dict(result.headers)
    assert headers["X-Spam-Status"].startswith("Yes, score=")
    assert "POSTROOM_TEST_JUNK" in headers["X-Spamd-Result"]


def test_clean_mail_is_accepted_with_rspamds_headers(rspamd: RspamdClient) -> None:
    result = _scan(rspamd, CLEAN)
    assert result.action == "accept", result
    headers = dict(result.headers)
    assert headers["X-Spamd-Result"].startswith("default: False [")
    assert headers["X-Spam-Status"].startswith("No, score=")
    float(headers["X-Spam-Score"])


def test_our_spf_dkim_dmarc_results_reach_rspamd_as_its_symbols(rspamd: RspamdClient) -> None:
    result = _scan(rspamd, CLEAN)
    symbols = result.details["symbols"] + [
        line.split("(")[0].strip() for line in dict(result.headers)["X-Spamd-Result"].split("\n")]
    assert "R_SPF_ALLOW" in symbols and "R_DKIM_ALLOW" in symbols, symbols
    assert "DMARC_POLICY_ALLOW" in symbols, symbols


def test_unreachable_rspamd_gives_tempfail(twisted_reactor: Any) -> None:
    client = RspamdClient(f"http://127.0.0.1:{free_port()}", reactor=twisted_reactor, timeout=3)
    try:
        result = _scan(client, CLEAN)
    finally:
        in_reactor(client.close)
    assert result.action == "tempfail" and result.reason == "spam scanner unavailable", result


def test_fail_open_accepts_unscored_mail_marked_unknown(twisted_reactor: Any) -> None:
    client = RspamdClient(f"http://127.0.0.1:{free_port()}", reactor=twisted_reactor, timeout=3,
                          fail_open=True)
    try:
        result = _scan(client, CLEAN)
    finally:
        in_reactor(client.close)
    assert result.action == "accept" and result.headers == [("X-Spam-Status", "Unknown")]


def test_learning_spam_counts_in_rspamd_and_a_repeat_is_harmless(
        rspamd: RspamdClient, rspamd_server: RspamdServer) -> None:
    before = rspamd_server.stat()["learned"]
    words = " ".join(f"offer{i} cheap pills winner prize money" for i in range(40))
    message = (b"From: <spammer@spam.example>\r\nTo: <bob@example.test>\r\nSubject: win\r\n"
               b"Message-ID: <learn-int-1@spam.example>\r\n\r\n" + words.encode() + b"\r\n")
    first = in_reactor(lambda: defer.Deferred.fromCoroutine(rspamd.learn(message, "spam")),
                       timeout=30)
    time.sleep(1)  # rspamd records the learnt digest in Redis after answering
    # rspamd answers a repeat with 208 "already learned" (or learns it again: same class,
    # same tokens); either is success for the learning worker, never an error
    again = in_reactor(lambda: defer.Deferred.fromCoroutine(rspamd.learn(message, "spam")),
                       timeout=30)
    assert first == "learned" and again in ("learned", "already")
    assert rspamd_server.stat()["learned"] >= before + 1


# --- clamd


def _clamd(server: ClamdServer, reactor: Any, **kw: Any) -> ClamdCheck:
    return ClamdCheck(server.address, reactor=reactor, timeout=10,
                      metrics=Metrics("test", process_metrics=False), **kw)


def _check(check: ClamdCheck, message: bytes) -> ContentResult:
    result: ContentResult = in_reactor(
        lambda: defer.Deferred.fromCoroutine(check.check(message, queue_id="TESTQ2")),
        timeout=30)
    return result


def test_clean_message_passes_clamd(clamd_server: ClamdServer, twisted_reactor: Any) -> None:
    assert _check(_clamd(clamd_server, twisted_reactor), CLEAN).action == "accept"


def test_eicar_is_rejected_naming_the_signature(clamd_server: ClamdServer,
                                                twisted_reactor: Any) -> None:
    message = message_with_attachment(EICAR, "eicar.com", "application/octet-stream")
    result = _check(_clamd(clamd_server, twisted_reactor), message)
    assert result.action == "reject", result
    assert result.reason == "virus found: Postroom.Test.EICAR.UNOFFICIAL"


def test_a_pattern_inside_a_zip_is_found(clamd_server: ClamdServer,
                                         twisted_reactor: Any) -> None:
    archive = zip_with_pattern()
    assert b"POSTROOM-ZIP-TEST-PATTERN" not in archive  # only unpacking shows it
    message = message_with_attachment(archive, "docs.zip", "application/zip")
    result = _check(_clamd(clamd_server, twisted_reactor), message)
    assert result.action == "reject", result
    assert result.details["signature"] == "Postroom.Test.ZipPattern.UNOFFICIAL"


def test_a_large_message_is_scanned_in_chunks(clamd_server: ClamdServer,
                                              twisted_reactor: Any) -> None:
    padding = b"x" * 76 + b"\r\n"
    message = CLEAN + padding * 40_000 + EICAR + b"\r\n"  # ~3 MB, EICAR at the end
    result = _check(_clamd(clamd_server, twisted_reactor), message)
    assert result.action == "reject", result


def test_clamd_stopped_gives_tempfail(twisted_reactor: Any) -> None:
    server = ClamdServer()
    server.start()
    check = _clamd(server, twisted_reactor)
    assert _check(check, CLEAN).action == "accept"
    server.stop()
    try:
        result = _check(check, CLEAN)
    finally:
        server.close()
    assert result.action == "tempfail" and result.reason == "virus scanner unavailable", result
