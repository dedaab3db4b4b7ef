"""Inbound port 25 end to end: real sockets, PostgreSQL, Redis, loopback DNS, the dmarc process."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from postroom import logs
from tests.integration.test_mta_inbound_support import (
    HOSTNAME,
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


@pytest.fixture(scope="module")
def dmarc_url(dns_server_session, database_url, redis_url):
    port = free_port()
    with ServiceProcess("dmarc", dmarc_env(dns_server_session.env, port, database_url,
                                           redis_url)):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def env(database_url, redis_url, redis_prefix, dns_server, dmarc_url):
    return {"POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
            "POSTROOM_REDIS_PREFIX": redis_prefix, "POSTROOM_DMARC_URL": dmarc_url,
            **dns_server.env}


@pytest.fixture
def accounts(database, clean_db):
    add_accounts(database)
    return database


@pytest.fixture
def mx(accounts, env, twisted_reactor):
    server = InboundServer(accounts, env).start()
    yield server
    server.stop()


def deliver_entries(queue_client):
    return queue_client.redis.xrange(queue_client.stream_key("deliver"))


def test_aligned_signed_mail_is_spooled_for_inbox_with_our_headers(mx, dns_server, queue_client):
    publish_sender(dns_server)
    rcpts, data = send(mx.port, make_message())
    assert [code for code, _ in rcpts] == [250]
    assert data[0] == 250 and data[1].startswith(b"2.0.0 Ok: queued as ")
    queue_id = queue_id_of(data)
    [info] = mx.spooled()
    assert (info.queue_id, info.kind, info.disposition, info.peer_ip, info.helo) == (
        queue_id, "inbound", "inbox", "127.0.0.1", "mail.example.com")
    assert [(r.address, r.stream, r.state) for r in info.recipients] == [
        ("bob@receiver.test", "deliver", "pending")]
    blob = mx.blob(queue_id)
    assert blob.startswith(b"Received: from mail.example.com ([127.0.0.1])")
    assert f"id {queue_id}".encode() in blob.split(b"Authentication-Results:")[0]
    results = blob.split(b"Authentication-Results: ", 1)[1].split(b"\r\nDKIM-Signature")[0]
    assert results.startswith(HOSTNAME.encode() + b";")
    assert b"spf=pass" in results and b"dkim=pass" in results and b"dmarc=pass" in results
    [(_, fields)] = deliver_entries(queue_client)
    assert (fields["queue_id"], fields["disposition"]) == (queue_id, "inbox")
    assert fields["rcpt"] == str(info.recipients[0].id)


def test_forged_authentication_results_claiming_us_are_removed(mx, dns_server):
    publish_sender(dns_server)
    forged = f"Authentication-Results: {HOSTNAME}; dkim=pass header.d=bank.test\r\n".encode()
    other = b"Authentication-Results: other.example; spf=pass\r\n"
    _, data = send(mx.port, make_message("forged", extra=forged + other))
    assert data[0] == 250
    blob = mx.blob(queue_id_of(data))
    assert b"bank.test" not in blob
    assert other in blob
    assert blob.count(b"Authentication-Results: " + HOSTNAME.encode()) == 1


def test_dmarc_reject_policy_failure_is_554_and_nothing_spooled(mx, dns_server, queue_client):
    publish_sender(dns_server, spf_ip="192.0.2.10", dkim=False)
    _, data = send(mx.port, make_message("spoof", sign=False))
    assert data[0] == 554 and data[1].startswith(b"5.7.1 ")
    assert b"example.com" in data[1]
    assert mx.spooled() == []
    assert deliver_entries(queue_client) == []


def test_dmarc_quarantine_failure_is_spooled_as_junk(mx, dns_server, queue_client):
    publish_sender(dns_server, spf_ip="192.0.2.10", policy="quarantine", dkim=False)
    _, data = send(mx.port, make_message("quarantined", sign=False))
    assert data[0] == 250
    [info] = mx.spooled()
    assert info.disposition == "junk"
    [(_, fields)] = deliver_entries(queue_client)
    assert fields["disposition"] == "junk"


def test_dsn_parameters_are_kept_in_the_spool(mx, dns_server):
    import smtplib

    publish_sender(dns_server)
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=20) as client:
        client.ehlo("mail.example.com")
        client.mail("alice@example.com", ["RET=HDRS", "ENVID=abc123"])
        assert client.rcpt("bob@receiver.test",
                           ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;bob@receiver.test"])[0] == 250
        assert client.data(make_message("dsn"))[0] == 250
    [info] = mx.spooled()
    assert (info.ret, info.envid) == ("HDRS", "abc123")
    assert (info.recipients[0].notify, info.recipients[0].orcpt) == (
        "FAILURE,DELAY", "rfc822;bob@receiver.test")


def test_decision_is_one_json_log_event_with_the_envelope(mx, dns_server, monkeypatch):
    import io
    import json

    buffer = io.StringIO()
    monkeypatch.setattr(logs._sink, "stream", buffer)
    publish_sender(dns_server)
    _, data = send(mx.port, make_message("logged"))
    events = [json.loads(line) for line in buffer.getvalue().splitlines()]
    [event] = [e for e in events if e["event"] == "inbound message accepted"]
    assert event["queue_id"] == queue_id_of(data)
    assert (event["peer"], event["helo"], event["mail_from"], event["verdict"]) == (
        "127.0.0.1", "mail.example.com", "alice@example.com", "inbox")


@pytest.mark.parametrize("rcpt", [
    "someone@remote.example",                 # a remote domain
    "bob%remote.example@receiver.test",       # percent hack
    '"bob@remote.example"@receiver.test',     # quoted local part hiding an address
    "bob@[127.0.0.1]",                        # address literal (even our own address)
])
def test_open_relay_attempts_are_554_relay_access_denied(mx, rcpt):
    rcpts, data = send(mx.port, b"", rcpts=(rcpt,))
    assert rcpts == [(554, b"5.7.1 Relay access denied")]
    assert data == (0, b"")
    assert mx.spooled() == []


def test_upper_case_local_address_is_accepted(mx, dns_server):
    publish_sender(dns_server)
    rcpts, data = send(mx.port, make_message("upper"), rcpts=("BOB@Receiver.TEST",))
    assert rcpts[0][0] == 250 and data[0] == 250
    assert mx.spooled()[0].recipients[0].address == "bob@receiver.test"


def test_aliases_and_plus_addresses_of_local_users_are_accepted(mx):
    from postroom.store import aliases

    mx.database.run_sync(aliases.add_alias, "info@receiver.test", "bob@receiver.test")
    rcpts, _ = send(mx.port, b"", rcpts=("info@receiver.test", "bob+lists@receiver.test"))
    assert [code for code, _ in rcpts] == [250, 250]


def test_bare_postmaster_outside_our_domains_is_unknown_not_relayed(mx):
    rcpts, _ = send(mx.port, b"", rcpts=("Postmaster",))
    assert rcpts[0][0] == 550


def test_unknown_local_user_is_550_5_1_1(mx):
    rcpts, _ = send(mx.port, b"", rcpts=("nobody@receiver.test",))
    assert rcpts[0][0] == 550 and rcpts[0][1].startswith(b"5.1.1 ")


def test_swaks_relay_attempt_is_refused_and_local_mail_accepted(mx, dns_server):
    publish_sender(dns_server)
    base = ["swaks", "--server", "127.0.0.1", "--port", str(mx.port), "--from",
            "alice@example.com", "--ehlo", "mail.example.com", "--timeout", "20"]
    relay = subprocess.run([*base, "--to", "victim@remote.example"], capture_output=True,
                           text=True, timeout=60)
    assert "<** 554 5.7.1 Relay access denied" in relay.stdout
    # swaks writes From: alice@example.com: DMARC passes by aligned SPF alone
    local = subprocess.run([*base, "--to", "bob@receiver.test", "--header", "Subject: swaks"],
                           capture_output=True, text=True, timeout=60)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "<-  250 2.0.0 Ok: queued as" in local.stdout
    [info] = mx.spooled()
    assert info.disposition == "inbox"


def test_dmarc_service_stopped_is_451_4_7_0(accounts, env, twisted_reactor, dns_server):
    port = free_port()
    dmarc = ServiceProcess("dmarc", dmarc_env(dns_server.env, port, env["POSTROOM_DATABASE_URL"],
                                               env["POSTROOM_REDIS_URL"])).start()
    dmarc.stop()
    dmarc.close()
    server = InboundServer(accounts, {**env, "POSTROOM_DMARC_URL": f"http://127.0.0.1:{port}"})
    server.start()
    try:
        publish_sender(dns_server)
        _, data = send(server.port, make_message("nodmarc"))
        assert data[0] == 451 and data[1].startswith(b"4.7.0 ")
        assert server.spooled() == []
    finally:
        server.stop()


def test_dmarc_service_silent_past_the_deadline_is_451_4_7_0(accounts, env, twisted_reactor,
                                                             dns_server):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the backlog) and never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    server = InboundServer(accounts, {**env, "POSTROOM_DMARC_URL": url,
                                      "POSTROOM_MTA_DMARC_TIMEOUT": "1s"})
    server.start()
    try:
        publish_sender(dns_server)
        started = time.monotonic()
        _, data = send(server.port, make_message("slow"))
        assert data[0] == 451 and data[1].startswith(b"4.7.0 ")
        assert time.monotonic() - started < 5
        assert server.spooled() == []
    finally:
        server.stop()
        silent.close()


def test_mta_service_process_takes_mail_over_starttls_with_swaks(accounts, env, dns_server,
                                                                  tmp_path, service_process):
    from postroom.net.tls import make_self_signed

    make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", HOSTNAME)
    port = free_port()
    service_process("mta", {**env, "POSTROOM_HOSTNAME": HOSTNAME,
                            "POSTROOM_MTA_LISTEN": f"tcp:{port}:interface=127.0.0.1",
                            "POSTROOM_TLS_CERT_FILE": str(tmp_path / "cert.pem"),
                            "POSTROOM_TLS_KEY_FILE": str(tmp_path / "key.pem")})
    publish_sender(dns_server)
    done = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(port), "--tls", "--from",
         "alice@example.com", "--to", "bob@receiver.test", "--ehlo", "mail.example.com",
         "--header", "Subject: over tls", "--timeout", "20"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<~  250 2.0.0 Ok: queued as" in done.stdout  # <~ : the reply came over TLS
    server = InboundServer(accounts, env)
    [info] = server.spooled()
    assert (info.kind, info.disposition) == ("inbound", "inbox")
    assert b"using TLS" in server.blob(info.queue_id).split(b"Authentication-Results")[0]
