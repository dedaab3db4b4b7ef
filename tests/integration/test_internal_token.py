"""POSTROOM_INTERNAL_TOKEN over real sockets: a dmarc process with and without it, and the mta.

With the token the dmarc API and `/metrics` answer 401 without it or with a
wrong one, `/healthz` stays open, and the inbound mta (given the same token)
still gets verdicts. Without a token everything answers as before.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.integration.test_mta_inbound_support import (
    InboundServer,
    add_accounts,
    dmarc_env,
    make_message,
    publish_sender,
    queue_id_of,
    send,
)
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess

TOKEN = "integration-token-9f2c"


class Dmarc:
    """One dmarc process: its API base URL and the process (for /healthz, /metrics, logs)."""

    def __init__(self, proc: ServiceProcess, url: str) -> None:
        self.proc = proc
        self.url = url


@pytest.fixture(scope="module")
def guarded(dns_server_session, database_url, redis_url) -> Iterator[Dmarc]:
    port = free_port()
    env = {**dmarc_env(dns_server_session.env, port, database_url, redis_url),
           "POSTROOM_INTERNAL_TOKEN": TOKEN}
    with ServiceProcess("dmarc", env) as proc:
        yield Dmarc(proc, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def open_dmarc(dns_server_session, database_url, redis_url) -> Iterator[Dmarc]:
    port = free_port()
    with ServiceProcess("dmarc", dmarc_env(dns_server_session.env, port, database_url,
                                           redis_url)) as proc:
        yield Dmarc(proc, f"http://127.0.0.1:{port}")


def request(url: str, *, token: str | None = None, body: bytes | None = None,
            ) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def metrics_url(dmarc: Dmarc) -> str:
    return f"http://127.0.0.1:{dmarc.proc.http_port}/metrics"


def check_body() -> bytes:
    return json.dumps({"client_ip": "192.0.2.99", "helo": "mail.other.net",
                       "mail_from": "b@other.net", "recipients": ["bob@receiver.test"],
                       "queue_id": "QTOKEN",
                       "message_b64": base64.b64encode(make_message(sign=False)).decode()}
                      ).encode()


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_metrics_without_the_right_token_answer_401(guarded, token):
    status, headers, body = request(metrics_url(guarded), token=token)
    assert status == 401
    assert headers["WWW-Authenticate"] == "Bearer"
    assert b"postroom_" not in body


def test_metrics_with_the_token_answer_200(guarded):
    status, _, body = request(metrics_url(guarded), token=TOKEN)
    assert status == 200
    assert b"target_info" in body


def test_healthz_needs_no_token(guarded):
    status, body = guarded.proc.healthz()
    assert status == 200 and body is not None and body["status"] == "ok"


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_check_without_the_right_token_answers_401(guarded, token):
    status, headers, body = request(guarded.url + "/v1/check", token=token, body=check_body())
    assert status == 401
    assert headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(body) == {"error": "unauthorized"}


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_raw_check_without_the_right_token_answers_401(guarded, token):
    status, _headers, body = request(guarded.url + "/v1/check-raw", token=token,
                                     body=b'{"client_ip": "192.0.2.1"}\nFrom: a@b.c\r\n\r\n')
    assert (status, json.loads(body)) == (401, {"error": "unauthorized"})


def test_check_with_the_token_answers_a_verdict(guarded, dns_server):
    status, _, body = request(guarded.url + "/v1/check", token=TOKEN, body=check_body())
    assert status == 200
    assert json.loads(body)["disposition"] in ("inbox", "junk", "reject", "tempfail")


def test_the_token_never_appears_in_the_log(guarded):
    request(metrics_url(guarded), token="wrong-token")
    assert TOKEN not in guarded.proc.output
    assert "wrong-token" not in guarded.proc.output


def test_loopback_listeners_log_no_unauthenticated_warning(open_dmarc):
    events = [e["event"] for e in open_dmarc.proc.log_events()]
    assert "service started" in events
    assert "internal endpoint unauthenticated" not in events


def test_without_a_token_metrics_and_check_answer_as_before(open_dmarc, dns_server):
    assert request(metrics_url(open_dmarc))[0] == 200
    status, _, body = request(open_dmarc.url + "/v1/check", body=check_body())
    assert status == 200 and "disposition" in json.loads(body)


@pytest.fixture
def accounts(database, clean_db):
    add_accounts(database)
    return database


def inbound(accounts, database_url, redis_url, redis_prefix, dns_server, dmarc_url: str,
            token: str | None) -> InboundServer:
    env = {"POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
           "POSTROOM_REDIS_PREFIX": redis_prefix, "POSTROOM_DMARC_URL": dmarc_url,
           "POSTROOM_MTA_DMARC_TIMEOUT": "10s", **dns_server.env}
    if token is not None:
        env["POSTROOM_INTERNAL_TOKEN"] = token
    return InboundServer(accounts, env).start()


def test_inbound_with_the_token_gets_verdicts_from_a_guarded_dmarc(
        guarded, accounts, database_url, redis_url, redis_prefix, dns_server, twisted_reactor):
    publish_sender(dns_server)
    mx = inbound(accounts, database_url, redis_url, redis_prefix, dns_server, guarded.url, TOKEN)
    try:
        _, data = send(mx.port, make_message("guarded"))
        assert data[0] == 250
        [info] = mx.spooled()
        assert (info.queue_id, info.disposition) == (queue_id_of(data), "inbox")
        assert b"dmarc=pass" in mx.blob(info.queue_id)
    finally:
        mx.stop()


def test_inbound_without_the_token_is_told_to_retry_by_a_guarded_dmarc(
        guarded, accounts, database_url, redis_url, redis_prefix, dns_server, twisted_reactor):
    publish_sender(dns_server)
    mx = inbound(accounts, database_url, redis_url, redis_prefix, dns_server, guarded.url, None)
    try:
        _, data = send(mx.port, make_message("unguarded"))
        assert data[0] == 451  # a refused policy check is a tempfail, never an acceptance
        assert mx.spooled() == []
    finally:
        mx.stop()
