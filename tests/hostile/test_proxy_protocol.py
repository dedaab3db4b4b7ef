"""PROXY protocol listeners of the mta, msa, pop3 and imap: only a trusted proxy names the client.

Each service runs as a real ``postroom serve NAME`` process with PROXY
listeners written both ways: ``haproxy:tcp:N`` (the spelling compose.yaml used,
which once meant Twisted's permissive wrapper) on the plain/STARTTLS ports and
``proxy:tcp:N`` on the implicit-TLS ports. POSTROOM_PROXY_TRUSTED is
127.0.0.2 alone: a raw socket from 127.0.0.1 plays anyone else on the container
network, one from 127.0.0.2 plays HAProxy.

An untrusted peer's header must never be believed, nor the peer served: it
would otherwise claim any address, pass SPF as that address and get a fresh
per-address budget for every connection. A trusted proxy's header must be
believed: the per-address limit, SPF and ``Received:`` see the claimed client.
"""

from __future__ import annotations

import base64
import functools
import re
import secrets
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from postroom.auth.passwords import hash_password
from postroom.net.tls import make_self_signed
from postroom.store import domains, users
from postroom.store.db import Database
from postroom.store.migrate import upgrade
from postroom.store.models import Message, SpoolMessage
from tests.support.db import create_test_database
from tests.support.hostile import LEDGER, Closed, Conn, no_traceback, stop_live_services
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess

pytestmark = pytest.mark.slow

PROXY = "127.0.0.2"  # the one trusted proxy
STRANGER = "127.0.0.1"  # anyone else who can reach the PROXY ports
DOMAIN = "proxied.test"
SENDER_DOMAIN = "proxied-sender.example"
PER_IP = 3

# listener -> (service, setting, PROXY prefix, implicit TLS, greeting, per-address refusal)
LISTENERS = {
    "smtp-25": ("mta", "mta_listen", "haproxy", False, b"220 ", b"421 "),
    "smtp-587": ("msa", "msa_listen", "haproxy", False, b"220 ", b"421 "),
    "smtps-465": ("msa", "msa_tls_listen", "proxy", True, b"220 ", b"421 "),
    "pop3-110": ("pop3", "pop3_listen", "haproxy", False, b"+OK", b"-ERR"),
    "pop3s-995": ("pop3", "pop3_tls_listen", "proxy", True, b"+OK", b"-ERR"),
    "imap-143": ("imap", "imap_listen", "haproxy", False, b"* OK", b"* BYE"),
    "imaps-993": ("imap", "imap_tls_listen", "proxy", True, b"* OK", b"* BYE"),
}
PLAIN = [name for name, spec in LISTENERS.items() if not spec[3]]
IMPLICIT_TLS = [name for name, spec in LISTENERS.items() if spec[3]]


@dataclass
class ProxiedSuite:
    database: Database
    ports: dict[str, int]
    processes: dict[str, ServiceProcess]

    def spooled_blobs(self, marker: bytes) -> list[bytes]:
        def work(session: Any) -> list[bytes]:
            return [bytes(b) for b in session.execute(
                select(Message.blob).join(SpoolMessage, SpoolMessage.message_id == Message.id)
                .where(Message.blob.op("LIKE")(b"%" + marker + b"%"))).scalars()]
        return self.database.run_sync(work)


@pytest.fixture(scope="module")
def proxied(redis_url: str, dns_server_session: Any,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedSuite]:
    url = create_test_database("postroom_proxied_")
    upgrade(url)
    database = Database(url, pool_size=2)
    database.start()
    database.run_sync(domains.add_domain, DOMAIN)
    database.run_sync(users.add_user, f"carol@{DOMAIN}", "a long password 1",
                      hash_fn=functools.partial(hash_password, ln=4))
    prefix = f"prtest:{secrets.token_hex(6)}:"
    certs: Path = tmp_path_factory.mktemp("proxied-tls")
    make_self_signed(certs / "cert.pem", certs / "key.pem", "localhost")
    ports = {name: free_port() for name in [*LISTENERS, "dmarc-http"]}
    common = {
        "POSTROOM_DATABASE_URL": url, "POSTROOM_REDIS_URL": redis_url,
        "POSTROOM_REDIS_PREFIX": prefix, "POSTROOM_HOSTNAME": "mx.proxied.test",
        "POSTROOM_TLS_CERT_FILE": str(certs / "cert.pem"),
        "POSTROOM_TLS_KEY_FILE": str(certs / "key.pem"),
        "POSTROOM_DB_POOL_SIZE": "3", "POSTROOM_DNS_TIMEOUT": "1s",
        "POSTROOM_DMARC_URL": f"http://127.0.0.1:{ports['dmarc-http']}",
        "POSTROOM_MAX_CONNECTIONS_PER_IP": str(PER_IP),
        "POSTROOM_PROXY_TRUSTED": PROXY,
        **dns_server_session.env,
    }
    envs: dict[str, dict[str, str]] = {
        "dmarc": {**common, "POSTROOM_DMARC_LISTEN": f"tcp:{ports['dmarc-http']}:interface="
                  "127.0.0.1", "POSTROOM_DMARC_REPORTS": "false"},
        "mta": dict(common), "msa": dict(common), "pop3": dict(common), "imap": dict(common)}
    for name, (service, setting, kind, _, _, _) in LISTENERS.items():
        envs[service][f"POSTROOM_{setting.upper()}"] = (
            f"{kind}:tcp:{ports[name]}:interface=127.0.0.1")
    processes = {name: ServiceProcess(name, env) for name, env in envs.items()}
    try:
        for process in processes.values():
            process.spawn()
        for process in processes.values():
            process.wait_healthy(60)
        yield ProxiedSuite(database, ports, processes)
    finally:
        stop_live_services(processes, database, url, redis_url, prefix)


def v1_header(client: str, port: int) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 40000 {port}\r\n".encode()


def v2_header(client: str, port: int) -> bytes:
    payload = (socket.inet_aton(client) + socket.inet_aton("127.0.0.1")
               + struct.pack("!HH", 40000, port))
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(payload))
            + payload)


def proxied_conn(suite: ProxiedSuite, listener: str, client: str, *, source: str = PROXY,
                 header: Any = v2_header) -> Conn:
    """A connection from ``source`` that starts with a header naming ``client``."""
    conn = Conn(suite.ports[listener], source=source)
    conn.send(header(client, suite.ports[listener]))
    if LISTENERS[listener][3]:
        conn.starttls()  # implicit TLS starts after the header, as behind HAProxy
    return conn


def refused_total(process: ServiceProcess, reason: str) -> float:
    status, body = process.get("/metrics")
    assert status == 200
    match = re.search(rb'^postroom_proxy_refused_total\{reason="' + reason.encode()
                      + rb'"\} (\S+)$', body, re.M)
    return float(match.group(1)) if match else 0.0


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@pytest.mark.parametrize("header", [v1_header, v2_header], ids=["v1", "v2"])
@pytest.mark.parametrize("listener", list(LISTENERS))
def test_a_spoofed_header_from_an_untrusted_peer_is_refused(
        proxied: ProxiedSuite, listener: str, header: Any) -> None:
    service = LISTENERS[listener][0]
    process = proxied.processes[service]
    before = refused_total(process, "untrusted_peer")
    conn = Conn(proxied.ports[listener], source=STRANGER)
    try:
        conn.send(header("203.0.113.66", proxied.ports[listener]) + b"QUIT\r\n")
        closed = conn.closed()
    except OSError:  # a reset is a refusal too
        closed = True
    finally:
        conn.close()
    LEDGER.tried_on(f"proxy-{listener}")
    LEDGER.check(f"proxy-{listener}", closed and conn.received == b"",
                 f"an untrusted peer was served (got {conn.received[:60]!r})")
    assert wait_for(lambda: refused_total(process, "untrusted_peer") == before + 1)
    assert wait_for(lambda: any(
        e.get("event") == "proxy header refused" and e.get("peer") == STRANGER
        and e.get("reason") == "untrusted_peer" for e in process.log_events()))


@pytest.mark.parametrize("listener", list(LISTENERS))
def test_the_per_address_limit_counts_the_client_a_trusted_proxy_names(
        proxied: ProxiedSuite, listener: str) -> None:
    greeting, refusal = LISTENERS[listener][4:]
    crowded, other = f"203.0.113.{10 + list(LISTENERS).index(listener)}", "198.51.100.77"
    conns: list[Conn] = []
    try:
        for _ in range(PER_IP):
            conns.append(proxied_conn(proxied, listener, crowded))
            assert conns[-1].line().startswith(greeting)
        # one more from the same claimed client is over its limit...
        conns.append(proxied_conn(proxied, listener, crowded))
        try:
            first = conns[-1].line()
        except (Closed, OSError):
            first = b""
        assert first.startswith(refusal) or first == b"", first
        # ...while another client behind the same proxy is greeted: the key is not 127.0.0.2
        conns.append(proxied_conn(proxied, listener, other))
        assert conns[-1].line().startswith(greeting)
        for conn in conns:
            no_traceback(conn)
    finally:
        for conn in conns:
            conn.close()


def test_the_mta_believes_a_trusted_proxy_for_spf_and_received(
        proxied: ProxiedSuite, dns_server_session: Any) -> None:
    client = "203.0.113.25"
    # SPF passes only for the claimed client and DMARC rejects a failure: 250 means believed
    dns_server_session.set_records(SENDER_DOMAIN, "TXT", [f"v=spf1 ip4:{client} -all"])
    dns_server_session.set_records(f"_dmarc.{SENDER_DOMAIN}", "TXT", ["v=DMARC1; p=reject"])
    marker = f"proxied-{secrets.token_hex(6)}".encode()
    with proxied_conn(proxied, "smtp-25", client) as conn:
        assert conn.smtp()[0] == 220
        for command, expected in [(b"EHLO sender.example", 250),
                                  (b"MAIL FROM:<alice@" + SENDER_DOMAIN.encode() + b">", 250),
                                  (b"RCPT TO:<carol@" + DOMAIN.encode() + b">", 250),
                                  (b"DATA", 354)]:
            conn.send(command + b"\r\n")
            code, text = conn.smtp()
            assert code == expected, (command, code, text)
        conn.send(b"From: alice@" + SENDER_DOMAIN.encode() + b"\r\nTo: carol@proxied.test\r\n"
                  b"Subject: " + marker + b"\r\n\r\nhello\r\n.\r\n")
        code, text = conn.smtp()
        assert code == 250, text
    [blob] = proxied.spooled_blobs(marker)
    assert blob.startswith(f"Received: from sender.example ([{client}])".encode()), blob[:200]


def _login_after_starttls(conn: Conn, listener: str) -> bytes:
    """STARTTLS (STLS) through the proxied connection, then a login that needs TLS."""
    user, password = f"carol@{DOMAIN}".encode(), b"a long password 1"
    if listener == "smtp-587":
        assert conn.smtp()[0] == 220
        conn.send(b"EHLO client.example\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"STARTTLS\r\n")
        assert conn.smtp()[0] == 220
        conn.starttls()
        conn.send(b"EHLO client.example\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0" + password) + b"\r\n")
        return conn.line()
    if listener == "pop3-110":
        assert conn.line().startswith(b"+OK")
        conn.send(b"STLS\r\n")
        assert conn.line().startswith(b"+OK")
        conn.starttls()
        conn.send(b"USER " + user + b"\r\n")
        assert conn.line().startswith(b"+OK")
        conn.send(b"PASS " + password + b"\r\n")
        return conn.line()
    assert conn.line().startswith(b"* OK")
    conn.send(b"a STARTTLS\r\n")
    assert conn.tagged(b"a")[1].startswith(b"a OK")
    conn.starttls()
    conn.send(b'b LOGIN "' + user + b'" "' + password + b'"\r\n')
    return conn.tagged(b"b")[1]


@pytest.mark.parametrize(("listener", "success"), [
    ("smtp-587", b"235 "), ("pop3-110", b"+OK"), ("imap-143", b"b OK")])
def test_starttls_through_a_trusted_proxy_counts_as_tls_for_login(
        proxied: ProxiedSuite, listener: str, success: bytes) -> None:
    with proxied_conn(proxied, listener, "198.51.100.88") as conn:
        reply = _login_after_starttls(conn, listener)
        assert reply.startswith(success), reply
