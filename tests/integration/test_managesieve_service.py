"""The managesieve service as deployed (`postroom serve managesieve`, real PostgreSQL and
Redis) with real clients over STARTTLS: sievelib's ManageSieve client and Debian's
sieve-connect; then a real mda process delivers by the script they uploaded."""

from __future__ import annotations

import base64
import secrets
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sievelib import managesieve
from sqlalchemy import select

from postroom.auth.passwords import hash_password
from postroom.net.tls import make_self_signed
from postroom.queue.envelope import Envelope
from postroom.queue.streams import QueueClient, connect
from postroom.store import domains, sieve, spool, users
from postroom.store.db import Database
from postroom.store.models import Mailbox, MailboxEntry
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, listener_env, runtime_argv
from tests.support.redisdb import delete_prefix
from tests.support.scram import ScramClient

PASSWORD = "correct horse"
GOOD = 'require ["fileinto", "mailbox"];\r\nif header :contains "subject" "list" {\r\n' \
    '  fileinto :create "Lists";\r\n}\r\n'
BROKEN = 'require "fileinto";\r\nkeep;\r\nfileinto "x" "y";\r\n'


@dataclass
class Server:
    port: int
    prefix: str
    domain: str
    certs: Path
    database: Database
    process: ServiceProcess


@pytest.fixture(scope="module")
def server(database_url: str, database: Database, redis_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One managesieve and one mda process for the module, sharing a Redis prefix."""
    certs: Path = tmp_path_factory.mktemp("managesieve-tls")
    make_self_signed(certs / "cert.pem", certs / "key.pem", "localhost")
    port = free_port()
    prefix = f"prtest:{secrets.token_hex(6)}:"
    env = listener_env(database_url, redis_url, prefix, certs, managesieve_listen=port)
    env["POSTROOM_SIEVE_MAX_SCRIPTS"] = "3"
    env["POSTROOM_SIEVE_MAX_SCRIPT_BYTES"] = "4K"
    process = ServiceProcess("managesieve", env)  # `postroom serve managesieve`, as compose
    mda = ServiceProcess("mda", {
        "POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
        "POSTROOM_REDIS_PREFIX": prefix, "POSTROOM_DB_POOL_SIZE": "3",
        "POSTROOM_HOSTNAME": "mx.example.test"}, argv=runtime_argv("postroom_mda.main:SERVICE"))
    process.start()
    try:
        mda.start()
        domain = f"sieve{secrets.token_hex(4)}.example"
        database.run_sync(domains.add_domain, domain)
        yield Server(port, prefix, domain, certs, database, process)
    finally:
        mda.close()
        process.close()
        client = redis.Redis.from_url(redis_url)
        try:
            delete_prefix(client, prefix)
        finally:
            client.close()


@pytest.fixture
def account(server: Server) -> tuple[str, int]:
    address = f"u{secrets.token_hex(4)}@{server.domain}"
    info = server.database.run_sync(users.add_user, address, PASSWORD,
                                    hash_fn=lambda p: hash_password(p, ln=4))
    return address, info.id


@pytest.fixture
def sievelib_trusts_our_certificate(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """sievelib verifies the server's certificate with a default context: trust ours."""
    cafile = str(server.certs / "cert.pem")
    context = ssl.create_default_context(cafile=cafile)
    monkeypatch.setattr(managesieve.ssllib, "create_default_context", lambda: context)


def client(server: Server, address: str) -> managesieve.Client:
    c = managesieve.Client("127.0.0.1", server.port, srvhostname="localhost")
    assert c.connect(address, PASSWORD, starttls=True, authmech="PLAIN"), c.errmsg
    return c


def deliver(server: Server, redis_url: str, address: str, subject: str) -> int:
    """Queue a message for ``address`` to the real mda; the recipient id."""
    message = f"From: a@remote.test\r\nTo: {address}\r\nSubject: {subject}\r\n\r\nhi\r\n"
    qid = server.database.run_sync(
        spool.create_spool, kind="inbound", mail_from="a@remote.test",
        recipients=[(address, "deliver", None, None)], message=message.encode(),
        enqueued_at=datetime.now(UTC))
    rids = tuple(r.id for r in server.database.run_sync(spool.get_spool, qid).recipients)
    queue = connect(redis_url)
    try:
        QueueClient(queue, server.prefix).enqueue("deliver", Envelope(qid, rids, "deliver"))
    finally:
        queue.close()
    return rids[0]


def folder_of(server: Server, user_id: int, rid: int) -> str:
    """The mailbox the mda filed recipient ``rid`` in (waits for it)."""
    deadline = time.monotonic() + 30
    while True:
        rows = server.database.run_sync(lambda s: s.execute(
            select(Mailbox.name).join(MailboxEntry, MailboxEntry.mailbox_id == Mailbox.id)
            .where(Mailbox.user_id == user_id, MailboxEntry.spool_recipient_id == rid)).all())
        if rows:
            return str(rows[0][0])
        assert time.monotonic() < deadline, "the mda did not deliver"
        time.sleep(0.1)


def test_sievelib_uploads_checks_activates_lists_renames_and_deletes(
        server: Server, account: tuple[str, int], sievelib_trusts_our_certificate: None) -> None:
    address, user_id = account
    c = client(server, address)
    assert c.get_implementation() == "Postroom"
    assert "fileinto" in c.get_sieve_capabilities()
    assert c.checkscript(GOOD)
    assert not c.checkscript(BROKEN) and b"line 3" in c.errmsg
    assert not c.putscript("broken", BROKEN) and b"line 3" in c.errmsg
    assert c.havespace("lists", len(GOOD))
    assert not c.havespace("lists", 5000) and c.errcode == b"QUOTA/MAXSIZE"
    assert c.putscript("draft", GOOD)
    assert c.renamescript("draft", "lists")
    assert c.setactive("lists")
    assert c.listscripts() == ("lists", [])
    # sievelib hands the text back with LF line ends
    assert c.getscript("lists").strip() == GOOD.replace("\r\n", "\n").strip()
    assert server.database.run_sync(sieve.active_script, user_id) == ("lists", GOOD)
    assert c.putscript("two", "keep;\r\n") and c.putscript("three", "keep;\r\n")
    assert not c.putscript("four", "keep;\r\n") and c.errcode == b"QUOTA/MAXSCRIPTS"
    assert not c.deletescript("lists") and c.errcode == b"ACTIVE"
    assert c.setactive("")
    assert c.deletescript("lists") and c.deletescript("two")
    assert c.listscripts() == (None, ["three"])
    c.logout()


def test_the_next_delivery_follows_the_script_just_uploaded(
        server: Server, account: tuple[str, int], redis_url: str,
        sievelib_trusts_our_certificate: None) -> None:
    address, user_id = account
    assert folder_of(server, user_id, deliver(server, redis_url, address, "a list")) == "INBOX"
    c = client(server, address)
    assert c.putscript("main", GOOD) and c.setactive("main")
    assert folder_of(server, user_id, deliver(server, redis_url, address, "a list")) == "Lists"
    # a changed script counts from the next message on (no restart, no stale cache)
    assert c.putscript("main", GOOD.replace('"Lists"', '"Other"'))
    assert folder_of(server, user_id, deliver(server, redis_url, address, "a list")) == "Other"
    c.logout()


def sieve_connect(server: Server, address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sieve-connect", "--server", "127.0.0.1", "--port", str(server.port),
         "--user", address, "--passwordfd", "0", "--authmech", "PLAIN",
         "--tlscafile", str(server.certs / "cert.pem"), "--tlshostname", "localhost", *args],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, check=False)


def test_sieve_connect_uploads_lists_activates_and_deletes(
        server: Server, account: tuple[str, int], tmp_path: Path) -> None:
    address, user_id = account
    script = tmp_path / "vacation.sieve"
    script.write_text(GOOD)
    done = sieve_connect(server, address, "--upload", "--localsieve", str(script),
                         "--remotesieve", "mine")
    assert done.returncode == 0, done.stderr
    done = sieve_connect(server, address, "--activate", "--remotesieve", "mine")
    assert done.returncode == 0, done.stderr
    done = sieve_connect(server, address, "--list")
    assert done.returncode == 0 and "mine" in done.stdout, done.stdout + done.stderr
    assert server.database.run_sync(sieve.active_script, user_id) == ("mine", GOOD)
    broken = tmp_path / "broken.sieve"
    broken.write_text(BROKEN)
    done = sieve_connect(server, address, "--upload", "--localsieve", str(broken),
                         "--remotesieve", "broken")
    assert done.returncode != 0 and "line 3" in done.stdout + done.stderr
    done = sieve_connect(server, address, "--deactivate")
    assert done.returncode == 0, done.stderr
    done = sieve_connect(server, address, "--delete", "--remotesieve", "mine")
    assert done.returncode == 0, done.stderr
    assert server.database.run_sync(sieve.list_scripts, user_id) == []


def read_until_ok(sock: ssl.SSLSocket | socket.socket, buffer: bytearray) -> list[bytes]:
    """Lines up to and including the next OK/NO/BYE line."""
    lines: list[bytes] = []
    while True:
        while b"\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, bytes(buffer)
            buffer += chunk
        line, _, rest = bytes(buffer).partition(b"\r\n")
        buffer[:] = rest
        lines.append(line)
        if line.startswith((b"OK", b"NO", b"BYE")):
            return lines


def test_scram_sha_256_over_starttls_proves_the_server_knows_the_secrets(
        server: Server, account: tuple[str, int]) -> None:
    address, _user_id = account
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    buffer = bytearray()
    read_until_ok(raw, buffer)
    raw.sendall(b"STARTTLS\r\n")
    assert read_until_ok(raw, buffer)[-1].startswith(b"OK")
    context = ssl.create_default_context(cafile=str(server.certs / "cert.pem"))
    sock = context.wrap_socket(raw, server_hostname="localhost")
    capabilities = read_until_ok(sock, buffer)
    assert b'"SASL" "PLAIN SCRAM-SHA-256"' in capabilities
    scram = ScramClient(address, PASSWORD)
    sock.sendall(b'AUTHENTICATE "SCRAM-SHA-256" "%s"\r\n' % base64.b64encode(scram.first()))
    while b"\r\n" not in buffer:
        buffer += sock.recv(65536)
    challenge, _, rest = bytes(buffer).partition(b"\r\n")
    buffer[:] = rest
    server_first = base64.b64decode(challenge.strip(b'"'))
    sock.sendall(b'"%s"\r\n' % base64.b64encode(scram.final(server_first)))
    [done] = read_until_ok(sock, buffer)
    assert done.startswith(b'OK (SASL "'), done
    assert scram.verify(base64.b64decode(done.split(b'"')[1]))
    sock.sendall(b"LISTSCRIPTS\r\n")
    assert read_until_ok(sock, buffer)[-1].startswith(b"OK")
    sock.close()


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of the managesieve process's /metrics (0 when absent)."""
    _status, body = server.process.get("/metrics")
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in body.decode().splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sessions_commands_and_failed_logins_are_counted(
        server: Server, account: tuple[str, int], sievelib_trusts_our_certificate: None) -> None:
    address, _user_id = account
    connections = metric(server, "postroom_connections_total", listener="managesieve")
    puts = metric(server, "postroom_commands_total", command="PUTSCRIPT")
    failures = metric(server, "postroom_auth_failures_total", mechanism="PLAIN")
    c = client(server, address)
    assert c.putscript("counted", "keep;\r\n")
    c.logout()
    wrong = managesieve.Client("127.0.0.1", server.port, srvhostname="localhost")
    assert not wrong.connect(address, "wrong password", starttls=True, authmech="PLAIN")
    assert metric(server, "postroom_connections_total", listener="managesieve") >= \
        connections + 2
    assert metric(server, "postroom_commands_total", command="PUTSCRIPT") == puts + 1
    assert metric(server, "postroom_auth_failures_total", mechanism="PLAIN") == failures + 1
