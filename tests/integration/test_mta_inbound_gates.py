"""Inbound port 25 gates: PROXY protocol listener, Redis down, greylisting, DNSBL at connect."""

from __future__ import annotations

import smtplib
import socket
import struct
import time

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
from tests.support.redisdb import PrivateRedis

CLIENT = "198.51.100.7"


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
def inbound(accounts, env, twisted_reactor):
    """Factory: an inbound listener with extra settings, stopped at teardown."""
    started: list[InboundServer] = []

    def make(**extra: str) -> InboundServer:
        server = InboundServer(accounts, {**env, **extra}).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def proxied_socket(port: int, header: bytes, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20,
                                    source_address=(source, 0))
    sock.sendall(header)
    return sock


def v2_header(client: str, port: int = 40000) -> bytes:
    payload = socket.inet_aton(client) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port,
                                                                                     25)
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(payload))
            + payload)


PROXIED = "tcp:0:interface=127.0.0.1,proxy:tcp:0:interface=127.0.0.1"


@pytest.mark.parametrize("header", [
    f"PROXY TCP4 {CLIENT} 127.0.0.1 40000 25\r\n".encode(),
    v2_header(CLIENT),
], ids=["v1", "v2"])
def test_proxy_header_from_trusted_proxy_sets_the_client_address(inbound, dns_server, header):
    # SPF only passes for the proxied client's address: a 250 means the header was believed
    publish_sender(dns_server, spf_ip=CLIENT, dkim=False)
    mx = inbound(POSTROOM_MTA_LISTEN=PROXIED, POSTROOM_PROXY_TRUSTED="127.0.0.1/32")
    sock = proxied_socket(mx.proxy_port, header)
    _, data = send(mx.proxy_port, make_message("proxied", sign=False), sock=sock)
    assert data[0] == 250, data
    [info] = mx.spooled()
    assert info.peer_ip == CLIENT
    assert mx.blob(queue_id_of(data)).startswith(
        f"Received: from mail.example.com ([{CLIENT}])".encode())


def test_deprecated_mta_proxy_settings_still_make_a_strict_proxy_listener(inbound, dns_server):
    publish_sender(dns_server, spf_ip=CLIENT, dkim=False)
    mx = inbound(POSTROOM_MTA_PROXY_LISTEN="tcp:0:interface=127.0.0.1",
                 POSTROOM_MTA_PROXY_TRUSTED="127.0.0.1/32")
    sock = proxied_socket(mx.proxy_port, v2_header(CLIENT))
    _, data = send(mx.proxy_port, make_message("proxied", sign=False), sock=sock)
    assert data[0] == 250, data
    [info] = mx.spooled()
    assert info.peer_ip == CLIENT


def test_proxy_header_from_untrusted_address_is_refused(inbound, dns_server):
    publish_sender(dns_server, spf_ip=CLIENT, dkim=False)
    mx = inbound(POSTROOM_MTA_LISTEN=PROXIED, POSTROOM_PROXY_TRUSTED="127.0.0.2")
    sock = proxied_socket(mx.proxy_port, f"PROXY TCP4 {CLIENT} 127.0.0.1 1 25\r\n".encode())
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    sock.close()
    assert received == b""  # closed unserved: no banner, so no session as the claimed client
    assert mx.spooled() == []


def test_proxy_listener_without_header_drops_the_client(inbound):
    mx = inbound(POSTROOM_MTA_LISTEN=PROXIED, POSTROOM_PROXY_TRUSTED="127.0.0.1")
    sock = proxied_socket(mx.proxy_port, b"EHLO mail.example.com\r\n")
    assert sock.recv(4096) == b""
    sock.close()


def test_plain_listener_treats_a_proxy_header_as_a_bad_command(inbound):
    mx = inbound()
    sock = proxied_socket(mx.port, f"PROXY TCP4 {CLIENT} 127.0.0.1 1 25\r\nQUIT\r\n".encode())
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    sock.close()
    # a header on a plain listener is just a bad command; the client stays 127.0.0.1
    assert received.split(b"\r\n")[:3] == [b"220 mx.receiver.test ESMTP Postroom",
                                           b"500 5.5.2 Syntax error, command unrecognized",
                                           b"221 2.0.0 Bye"]


def test_redis_down_is_451_before_anything_is_spooled(accounts, env, twisted_reactor,
                                                      dns_server):
    redis_server = PrivateRedis()
    redis_server.start()
    mx = InboundServer(accounts, {**env, "POSTROOM_REDIS_URL": redis_server.url}).start()
    try:
        publish_sender(dns_server)
        redis_server.stop()
        _, data = send(mx.port, make_message("noredis"))
        assert data == (451, b"4.3.0 Queue temporarily unavailable, try again later")
        assert mx.spooled() == []
    finally:
        mx.stop()
        redis_server.stop()


def test_greylisting_defers_a_new_triplet_and_passes_its_retry(inbound, dns_server):
    publish_sender(dns_server)
    mx = inbound(POSTROOM_MTA_GREYLIST="true", POSTROOM_MTA_GREYLIST_DELAY="1s")
    rcpts, _ = send(mx.port, b"")
    assert rcpts == [(451, b"4.7.1 Greylisted, please try again later")]
    time.sleep(1.1)
    rcpts, data = send(mx.port, make_message("greylisted"))
    assert rcpts[0][0] == 250 and data[0] == 250


def test_greylisting_is_off_by_default(inbound, dns_server):
    publish_sender(dns_server)
    mx = inbound()
    _, data = send(mx.port, make_message("first"))
    assert data[0] == 250


def test_client_listed_in_dnsbl_is_refused_at_connect(inbound, dns_server):
    dns_server.set_records("1.0.0.127.bl.test", "A", ["127.0.0.2"])
    mx = inbound(POSTROOM_MTA_DNSBL_ZONES="clean.test,bl.test")
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", mx.port, timeout=20)
    assert refused.value.smtp_code == 554
    assert b"5.7.1" in refused.value.smtp_error and b"bl.test" in refused.value.smtp_error


def test_client_not_listed_in_dnsbl_is_greeted(inbound, dns_server):
    dns_server.set_records("1.0.0.127.bl.test", "A", ["127.255.255.254"])  # a list's error code
    mx = inbound(POSTROOM_MTA_DNSBL_ZONES="bl.test")
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=20) as client:
        assert client.noop()[0] == 250
