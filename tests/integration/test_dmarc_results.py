"""Verdicts stored for aggregate reports: through the running service, and off the request path."""

from __future__ import annotations

import base64
import json
import time
import urllib.request

import pytest
from sqlalchemy import create_engine, text

from postroom.store import dmarc as dmarc_store
from postroom.store.db import Database
from postroom_dmarc.dkimcheck import ARCResult
from postroom_dmarc.results import ResultRecorder
from postroom_dmarc.spfcheck import SPFResult
from postroom_dmarc.verdict import CheckRequest, DMARCResult, Verdict
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, runtime_argv
from tests.support.redisdb import in_reactor, wait_until

MESSAGE = (b"From: alice@example.com\r\nTo: bob@receiver.test\r\nSubject: hi\r\n"
           b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\nHello.\r\n")


@pytest.fixture
def service(database_url, clean_db, redis_url, redis_prefix, dns_server):
    dns_server.set_records("example.com", "TXT", ["v=spf1 ip4:192.0.2.10 -all"])
    dns_server.set_records("_dmarc.example.com", "TXT",
                           ["v=DMARC1; p=quarantine; rua=mailto:d@example.com"])
    port = free_port()
    env = {**dns_server.env, "POSTROOM_DNS_TIMEOUT": "1s", "POSTROOM_HOSTNAME": "mx.receiver.test",
           "POSTROOM_DMARC_LISTEN": f"tcp:{port}:interface=127.0.0.1",
           "POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
           "POSTROOM_REDIS_PREFIX": redis_prefix}
    with ServiceProcess("dmarc", env, argv=runtime_argv("postroom_dmarc.main:SERVICE")) as proc:
        yield f"http://127.0.0.1:{port}/v1/check", proc


def post_check(url: str, ip: str, queue_id: str) -> dict:
    body = json.dumps({"client_ip": ip, "helo": "mail.other.test", "mail_from": "b@other.test",
                       "recipients": ["bob@receiver.test"], "queue_id": queue_id,
                       "message_b64": base64.b64encode(MESSAGE).decode()}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def stored(database_url: str) -> list[tuple]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT queue_id, host(source_ip), header_from, reporting_domain, dmarc_result, "
                "disposition, spf_result FROM dmarc_results ORDER BY id"))]
    finally:
        engine.dispose()


def test_check_through_the_api_stores_a_row(service, database_url):
    url, _ = service
    verdict = post_check(url, "198.51.100.1", "QROW1")
    assert verdict["disposition"] == "junk"
    rows = wait_until(lambda: stored(database_url))
    assert rows == [("QROW1", "198.51.100.1", "example.com", "example.com", "fail",
                     "quarantine", "none")]


def test_answer_does_not_wait_for_a_locked_table(service, database_url):
    url, _ = service
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("LOCK TABLE dmarc_results IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            assert post_check(url, "192.0.2.10", "QLOCK")["disposition"] == "junk"
            assert time.monotonic() - started < 3
            conn.rollback()  # releases the lock: the row is written now
    finally:
        engine.dispose()
    assert [r[0] for r in wait_until(lambda: stored(database_url))] == ["QLOCK"]


def _verdict() -> Verdict:
    return Verdict(spf=SPFResult("pass", "mailfrom", "example.com", "a@example.com", ""),
                   spf_helo=None, dkim=[], arc=ARCResult("none", ""),
                   dmarc=DMARCResult("pass", "example.com", "example.com", spf_aligned=True),
                   disposition="inbox", reason="", authentication_results="x")


def test_storage_failure_is_logged_and_never_raised(database_url, twisted_reactor):
    broken = Database(database_url.rsplit("/", 1)[0] + "/postroom_no_such_db", pool_size=1)
    broken.start()
    try:
        recorder = ResultRecorder(broken)
        request = CheckRequest("192.0.2.1", "h", "a@example.com", (), b"", "QBAD")
        in_reactor(recorder.record, request, _verdict())
        in_reactor(recorder.drain)
        assert recorder.pending == 0
    finally:
        broken.stop()


def test_writes_past_the_cap_are_dropped(database, clean_db, twisted_reactor):
    recorder = ResultRecorder(database, max_pending=1)
    request = CheckRequest("192.0.2.1", "h", "a@example.com", (), b"", "QCAP")

    def burst() -> None:
        for _ in range(5):
            recorder.record(request, _verdict())

    in_reactor(burst)
    in_reactor(recorder.drain)
    assert len(database.run_sync(dmarc_store.reporting_domains,
                                 *_all_time())) == 1
    assert len(database.run_sync(dmarc_store.results_for_report, "example.com",
                                 *_all_time())) == 1


def _all_time():
    from datetime import UTC, datetime
    return datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
