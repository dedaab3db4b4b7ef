"""The msa service as deployed (`postroom serve msa`, real PostgreSQL and Redis) with real clients.

smtplib, swaks and curl submit over 587+STARTTLS and 465; each accepted
message is checked in the spool (DKIM signatures verified with dkimpy against
the TXT records `postroom dkim generate` printed) and on the `outbound` stream.
The keys are generated and signed with POSTROOM_SECRET_KEY_FILE set, so they are
stored encrypted and the msa decrypts them (docs/security.md).
Tests that fail logins connect from loopback addresses of their own
(127.0.0.2, 127.0.0.3) so they do not lock the others out.
"""

from __future__ import annotations

import re
import secrets
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
import redis

from postroom.auth.passwords import hash_password
from postroom.net.tls import make_self_signed
from postroom.queue import authevents
from postroom.queue.envelope import decode
from postroom.queue.streams import QueueClient, connect
from postroom.secretbox import write_key_file
from postroom.store import aliases, domains, messages, spool, users
from postroom.store import dkim as dkim_store
from postroom.store.db import Database
from postroom_msa import replies as M
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, base_env, listener_env
from tests.support.redisdb import delete_prefix

PASSWORD = "correct horse battery"
AUTH_FAIL_LIMIT = 3
MESSAGES_PER_HOUR = 3
RECIPIENTS_PER_DAY = 6
QUEUED = re.compile(r"queued as ([0-9A-Z]{16})")


@dataclass
class Server:
    host: str
    port: int
    tls_port: int
    prefix: str
    redis_url: str
    database_url: str
    process: ServiceProcess
    secret_key_file: str


def msa_env(database_url: str, redis_url: str, prefix: str, certs: Path, port: int,
            tls_port: int, **extra: str) -> dict[str, str]:
    """The environment of an msa process listening on loopback ports of the test's own."""
    make_self_signed(certs / "cert.pem", certs / "key.pem", "localhost")
    env = listener_env(database_url, redis_url, prefix, certs, hostname="msa.test",
                       msa_listen=port, msa_tls_listen=tls_port)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def server(database_url: str, redis_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One msa process for the module, started as compose does: `postroom serve msa`."""
    port, tls_port = free_port(), free_port()
    prefix = f"prtest:{secrets.token_hex(6)}:"
    secret_key_file = str(tmp_path_factory.mktemp("msa-secret") / "secret.key")
    write_key_file(secret_key_file)
    env = msa_env(database_url, redis_url, prefix, tmp_path_factory.mktemp("msa-tls"), port,
                  tls_port, POSTROOM_AUTH_FAIL_LIMIT=str(AUTH_FAIL_LIMIT),
                  POSTROOM_AUTH_DELAY_MAX="0",
                  POSTROOM_MSA_MAX_MESSAGES_PER_HOUR=str(MESSAGES_PER_HOUR),
                  POSTROOM_MSA_MAX_RECIPIENTS_PER_DAY=str(RECIPIENTS_PER_DAY),
                  POSTROOM_SECRET_KEY_FILE=secret_key_file)
    process = ServiceProcess("msa", env)
    process.start()
    try:
        yield Server("127.0.0.1", port, tls_port, prefix, redis_url, database_url, process,
                     secret_key_file)
    finally:
        process.close()
        client = redis.Redis.from_url(redis_url)
        try:
            delete_prefix(client, prefix)
        finally:
            client.close()


def generate_dkim(database_url: str, domain: str,
                  secret_key_file: str | None = None) -> dict[str, bytes]:
    """Run `postroom dkim generate DOMAIN` and return its TXT records: {name: value}."""
    env = {"POSTROOM_DATABASE_URL": database_url}
    if secret_key_file:
        env["POSTROOM_SECRET_KEY_FILE"] = secret_key_file
    out = subprocess.run(
        [sys.executable, "-m", "postroom.ops.cli", "dkim", "generate", domain],
        env=base_env(env), capture_output=True, text=True, timeout=60, check=True).stdout
    records = {}
    for match in re.finditer(r'^(\S+) IN TXT (\(.*?\)|"[^"]*")', out, re.M | re.S):
        value = "".join(re.findall(r'"([^"]*)"', match.group(2)))
        records[match.group(1).rstrip(".").lower()] = value.encode("ascii")
    assert len(records) == 2, out
    # new keys are pending; this msa's "DNS" is the dict above: activate them by hand
    for name in records:
        subprocess.run([sys.executable, "-m", "postroom.ops.cli", "dkim", "activate", domain,
                        name.split(".")[0], "--force"],
                       env=base_env(env), capture_output=True, text=True, timeout=60, check=True)
    return records


@dataclass
class Domain:
    name: str
    dkim_txt: dict[str, bytes]

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes | None:
        return self.dkim_txt.get(name.decode("ascii").rstrip(".").lower())


@pytest.fixture(scope="module")
def domain(server: Server, database: Database) -> Iterator[Domain]:
    name = f"msa{secrets.token_hex(4)}.example"
    database.run_sync(domains.add_domain, name)
    yield Domain(name, generate_dkim(server.database_url, name, server.secret_key_file))
    # retired: an msa started later on the session database without this module's secret
    # key would (rightly) refuse to start on an active key it cannot decrypt
    for key in database.run_sync(dkim_store.list_keys, name):
        database.run_sync(dkim_store.set_key_active, name, key.selector, False)


@dataclass
class Account:
    address: str
    user_id: int


def make_account(database: Database, domain: str) -> Account:
    address = f"u{secrets.token_hex(4)}@{domain}"
    info = database.run_sync(users.add_user, address, PASSWORD,
                             hash_fn=lambda p: hash_password(p, ln=4))
    return Account(address, info.id)


@pytest.fixture
def account(domain: Domain, database: Database) -> Account:
    return make_account(database, domain.name)


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def loopback_source(n: int) -> tuple[str, int]:
    """Loopback address 127.0.0.n of a test's own, so per-IP login limits stay apart."""
    return (f"127.0.0.{n}", 0)


def submission(server: Server, *, source: tuple[str, int] | None = None) -> smtplib.SMTP:
    client = smtplib.SMTP(server.host, server.port, timeout=20, source_address=source)
    client.ehlo("client.test")
    client.starttls(context=unverified())
    client.ehlo("client.test")
    return client


def smtps(server: Server) -> smtplib.SMTP_SSL:
    client = smtplib.SMTP_SSL(server.host, server.tls_port, timeout=20, context=unverified())
    client.ehlo("client.test")
    return client


def message(sender: str, to: str = "friend@remote.example", *, subject: str = "hello",
            date: bool = True, message_id: bool = True) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    if date:
        msg["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
    if message_id:
        msg["Message-ID"] = f"<{secrets.token_hex(8)}@client.test>"
    msg.set_content("Hi there,\n\nthis is a test.\n")
    return msg.as_bytes().replace(b"\n", b"\r\n")


def queue_id_of(reply: bytes | str) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    found = QUEUED.search(text)
    assert found, text
    return found.group(1)


def send(client: smtplib.SMTP, sender: str, rcpts: list[str], data: bytes) -> str:
    """MAIL, RCPT..., DATA; the queue id from the 250 reply."""
    code, reply = client.mail(sender)
    assert code == 250, reply
    for rcpt in rcpts:
        code, reply = client.rcpt(rcpt)
        assert code == 250, reply
    code, reply = client.data(data)
    assert code == 250, reply
    return queue_id_of(reply)


def spooled(database: Database, queue_id: str) -> tuple[spool.SpoolInfo, bytes]:
    info = database.run_sync(spool.get_spool, queue_id)
    return info, database.run_sync(messages.get_message, info.message_id)


def outbound_entries(server: Server, queue_id: str, stream: str = "outbound") -> list[Any]:
    client = connect(server.redis_url)
    try:
        key = QueueClient(client, server.prefix).stream_key(stream)
        return [decode(fields) for _id, fields in client.xrange(key)
                if fields.get("queue_id") == queue_id]
    finally:
        client.close()


def dkim_results(domain: Domain, data: bytes) -> list[bool]:
    """Verify each DKIM-Signature of ``data`` in turn (dkimpy checks one by index)."""
    count = len(re.findall(rb"^DKIM-Signature:", data, re.M | re.I))
    verifier = dkim.DKIM(data)
    return [verifier.verify(idx=i, dnsfunc=domain.dnsfunc) for i in range(count)]


def assert_submitted(server: Server, database: Database, domain: Domain, queue_id: str,
                     account: Account, rcpts: list[str]) -> bytes:
    """The spool row, two valid signatures (RSA and ed25519) and the outbound entry."""
    info, data = spooled(database, queue_id)
    assert info.kind == "submission"
    assert info.auth_user == account.address
    assert sorted(r.address for r in info.recipients) == sorted(rcpts)
    assert {r.stream for r in info.recipients} == {"outbound"}
    algorithms = re.findall(rb"a=(rsa-sha256|ed25519-sha256);", data)
    assert sorted(algorithms) == [b"ed25519-sha256", b"rsa-sha256"]
    assert dkim_results(domain, data) == [True, True]
    entries = outbound_entries(server, queue_id)
    assert len(entries) == 1
    assert sorted(entries[0].recipient_ids) == sorted(r.id for r in info.recipients)
    return data


# --- accepted submissions


def test_smtplib_starttls_auth_plain_submits_signed_and_queued(
        server: Server, database: Database, domain: Domain, account: Account):
    with submission(server) as client:
        assert "PLAIN" in client.esmtp_features["auth"]
        client.login(account.address, PASSWORD)
        queue_id = send(client, account.address, ["friend@remote.example"],
                        message(account.address))
    data = assert_submitted(server, database, domain, queue_id, account,
                            ["friend@remote.example"])
    assert f"by msa.test (Postroom) with ESMTPSA id {queue_id}".encode() in data
    assert b"(using TLSv1." in data


def test_dkim_private_keys_are_stored_encrypted_and_still_sign(
        server: Server, database: Database, domain: Domain, account: Account):
    from sqlalchemy import text

    from postroom.secretbox import key_id, read_key_file

    def stored(session: Any) -> list[str]:
        return list(session.execute(text(
            "SELECT k.private_key_pem FROM dkim_keys k JOIN domains d ON d.id = k.domain_id"
            " WHERE d.name = :name"), {"name": domain.name}).scalars())

    rows = database.run_sync(stored)
    kid = key_id(read_key_file(server.secret_key_file))
    assert len(rows) == 2
    assert all(r.startswith(f"enc:v1:{kid}:") and "PRIVATE KEY" not in r for r in rows)
    # and the msa, which holds the key, signs with them (both signatures verify)
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        queue_id = send(client, account.address, ["friend@remote.example"],
                        message(account.address))
    assert_submitted(server, database, domain, queue_id, account, ["friend@remote.example"])


def test_smtps_auth_login_submits_signed_and_queued(
        server: Server, database: Database, domain: Domain, account: Account):
    with smtps(server) as client:
        client.user, client.password = account.address, PASSWORD
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
        queue_id = send(client, account.address, ["a@remote.example", "b@remote.example"],
                        message(account.address))
    assert_submitted(server, database, domain, queue_id, account,
                     ["a@remote.example", "b@remote.example"])


def test_swaks_starttls_auth_login_submits(
        server: Server, database: Database, domain: Domain, account: Account):
    result = subprocess.run(
        ["swaks", "--server", f"{server.host}:{server.port}", "--tls", "--auth", "LOGIN",
         "--auth-user", account.address, "--auth-password", PASSWORD,
         "--from", account.address, "--to", "friend@remote.example",
         "--helo", "client.test", "--timeout", "20"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_submitted(server, database, domain, queue_id_of(result.stdout), account,
                     ["friend@remote.example"])


def test_swaks_implicit_tls_auth_plain_submits(
        server: Server, database: Database, domain: Domain, account: Account):
    result = subprocess.run(
        ["swaks", "--server", f"{server.host}:{server.tls_port}", "--tls-on-connect",
         "--auth", "PLAIN", "--auth-user", account.address, "--auth-password", PASSWORD,
         "--from", account.address, "--to", "friend@remote.example",
         "--helo", "client.test", "--timeout", "20"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_submitted(server, database, domain, queue_id_of(result.stdout), account,
                     ["friend@remote.example"])


@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_curl_submits(scheme: str, server: Server, database: Database, domain: Domain,
                      account: Account, tmp_path: Path):
    body = tmp_path / "message.eml"
    body.write_bytes(message(account.address))
    port = server.port if scheme == "smtp" else server.tls_port
    argv = ["curl", "--silent", "--show-error", "--verbose", "--insecure",
            f"{scheme}://{server.host}:{port}", "--mail-from", account.address,
            "--mail-rcpt", "friend@remote.example", "--user", f"{account.address}:{PASSWORD}",
            "--upload-file", str(body), "--max-time", "30"]
    if scheme == "smtp":
        argv.insert(1, "--ssl-reqd")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert_submitted(server, database, domain, queue_id_of(result.stderr), account,
                     ["friend@remote.example"])


def test_missing_date_and_message_id_are_added(
        server: Server, database: Database, domain: Domain, account: Account):
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        queue_id = send(client, account.address, ["friend@remote.example"],
                        message(account.address, date=False, message_id=False))
    data = assert_submitted(server, database, domain, queue_id, account,
                            ["friend@remote.example"])
    assert re.search(rb"^Date: \w{3}, \d{2} \w{3} \d{4} ", data, re.M)
    assert re.search(rf"^Message-ID: <{queue_id}\.[0-9a-f]+@msa\.test>".encode(), data, re.M)


def test_present_date_and_message_id_are_kept(
        server: Server, database: Database, domain: Domain, account: Account):
    original = message(account.address)
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        queue_id = send(client, account.address, ["friend@remote.example"], original)
    _, data = spooled(database, queue_id)
    assert data.endswith(original)
    assert len(re.findall(rb"^Message-ID:", data, re.M)) == 1


def test_alias_of_the_user_is_accepted_as_sender(
        server: Server, database: Database, domain: Domain, account: Account):
    alias = f"sales{secrets.token_hex(3)}@{domain.name}"
    database.run_sync(aliases.add_alias, alias, account.address)
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        queue_id = send(client, alias, ["friend@remote.example"], message(alias))
    assert_submitted(server, database, domain, queue_id, account, ["friend@remote.example"])


def test_dsn_parameters_are_kept_in_the_spool(
        server: Server, database: Database, account: Account):
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        code, _ = client.mail(account.address, ["RET=HDRS", "ENVID=env42"])
        assert code == 250
        code, _ = client.rcpt("friend@remote.example",
                              ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;orig@remote.example"])
        assert code == 250
        code, reply = client.data(message(account.address))
        assert code == 250
    info, _ = spooled(database, queue_id_of(reply))
    assert (info.ret, info.envid) == ("HDRS", "env42")
    assert (info.recipients[0].notify, info.recipients[0].orcpt) == (
        "SUCCESS,FAILURE", "orig@remote.example")


def test_existing_local_recipient_is_accepted(
        server: Server, database: Database, domain: Domain, account: Account):
    other = make_account(database, domain.name)
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        queue_id = send(client, account.address, [other.address], message(account.address))
    info, _ = spooled(database, queue_id)
    # straight to the mda: no round through the relay (docs/decisions/0030)
    assert [(r.address, r.stream) for r in info.recipients] == [(other.address, "deliver")]
    assert [e.recipient_ids for e in outbound_entries(server, queue_id, "deliver")] == [
        (info.recipients[0].id,)]
    assert outbound_entries(server, queue_id) == []


def test_local_and_remote_recipients_go_to_the_mda_and_the_relay(
        server: Server, database: Database, domain: Domain, account: Account):
    other = make_account(database, domain.name)
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        queue_id = send(client, account.address, ["far@remote.example", other.address],
                        message(account.address))
    info, _ = spooled(database, queue_id)
    streams = {r.address: (r.id, r.stream) for r in info.recipients}
    assert {a: s for a, (_i, s) in streams.items()} == {
        "far@remote.example": "outbound", other.address: "deliver"}
    assert [e.recipient_ids for e in outbound_entries(server, queue_id, "deliver")] == [
        (streams[other.address][0],)]
    assert [e.recipient_ids for e in outbound_entries(server, queue_id)] == [
        (streams["far@remote.example"][0],)]


# --- refusals


def test_mail_without_auth_is_refused_with_530(server: Server, account: Account):
    with submission(server) as client:
        code, reply = client.mail(account.address)
    assert (code, reply.decode()) == (530, "5.7.0 Authentication required")


def test_auth_is_not_offered_before_tls(server: Server, account: Account):
    with smtplib.SMTP(server.host, server.port, timeout=20) as client:
        client.ehlo("client.test")
        assert "starttls" in client.esmtp_features
        assert "auth" not in client.esmtp_features
        code, reply = client.docmd("AUTH", "PLAIN " + "AGFAYgBj")
    assert code == 538 and reply.startswith(b"5.7.11")


def test_foreign_mail_from_is_refused_with_553(
        server: Server, database: Database, domain: Domain, account: Account):
    other = make_account(database, domain.name)
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        for sender in (other.address, "someone@remote.example"):
            code, reply = client.mail(sender)
            assert (code, reply.decode()) == (553, f"{M.SENDER_NOT_OWNED.enhanced} "
                                                   f"{M.SENDER_NOT_OWNED.text}")
            client.rset()


def test_foreign_from_header_is_refused_with_553(
        server: Server, database: Database, domain: Domain, account: Account):
    other = make_account(database, domain.name)
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        client.mail(account.address)
        client.rcpt("friend@remote.example")
        code, reply = client.data(message(f"Boss <{other.address}>"))
    assert code == 553 and reply.startswith(b"5.7.1")
    assert [m for m in database.run_sync(spool.list_spool) if m.mail_from == account.address] == []


def test_display_name_trick_in_from_is_refused(server: Server, account: Account):
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        client.mail(account.address)
        client.rcpt("friend@remote.example")
        data = message(account.address).replace(
            f"From: {account.address}".encode(),
            f"From: {account.address} <ceo@remote.example>".encode())
        code, _ = client.data(data)
    assert code == 553


def test_unknown_local_recipient_is_refused_with_550_at_rcpt(
        server: Server, domain: Domain, account: Account):
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        client.mail(account.address)
        code, reply = client.rcpt(f"nobody{secrets.token_hex(3)}@{domain.name}")
    assert code == 550 and reply.startswith(b"5.1.1")


def test_wrong_password_is_refused_with_535(server: Server, account: Account):
    with submission(server, source=loopback_source(2)) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login(account.address, "wrong password")
    assert failed.value.smtp_code == 535
    assert failed.value.smtp_error.startswith(b"5.7.8")
    log = server.process.output
    assert "wrong password" not in log
    assert any(e.get("event") == "login failed" and e.get("account") == account.address
               for e in server.process.log_events())


def test_brute_force_series_trips_the_limit_with_454(server: Server, account: Account):
    source = loopback_source(3)
    codes = []
    for attempt in range(AUTH_FAIL_LIMIT + 2):
        with submission(server, source=source) as client:
            code, _ = client.docmd("AUTH", "PLAIN " + _plain(account.address, f"guess{attempt}"))
            codes.append(code)
    assert codes == [535] * AUTH_FAIL_LIMIT + [454, 454]
    # the right password is refused too while the limit holds
    with submission(server, source=source) as client:
        code, reply = client.docmd("AUTH", "PLAIN " + _plain(account.address, PASSWORD))
    assert code == 454 and reply.startswith(b"4.7.0")


def _plain(user: str, password: str) -> str:
    import base64
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_hourly_message_limit_gives_450(server: Server, account: Account):
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        for _ in range(MESSAGES_PER_HOUR):
            send(client, account.address, ["friend@remote.example"], message(account.address))
        code, reply = client.mail(account.address)
    assert code == 450 and reply.startswith(b"4.7.1")
    assert any(e.get("event") == "sending limit reached" and e.get("user") == account.address
               for e in server.process.log_events())


def test_daily_recipient_limit_gives_450_at_rcpt(server: Server, account: Account):
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        client.mail(account.address)
        codes = [client.rcpt(f"r{i}@remote.example")[0] for i in range(RECIPIENTS_PER_DAY + 1)]
    assert codes == [250] * RECIPIENTS_PER_DAY + [450]


def test_healthz_reports_both_listeners(server: Server):
    status, body = server.process.healthz()
    assert status == 200, body
    started = [e for e in server.process.log_events() if e.get("event") == "listening"]
    assert {e.get("tls") for e in started} == {None, "implicit"}


def test_plaintext_port_speaks_smtp_and_implicit_port_speaks_tls(server: Server):
    with socket.create_connection((server.host, server.tls_port), timeout=10) as raw:
        with unverified().wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(100).startswith(b"220 ")


# --- the DKIM key lifecycle (docs/msa.md): only active keys sign


def _selectors(data: bytes) -> list[str]:
    return sorted(m.decode() for m in re.findall(rb"^DKIM-Signature:[^\n]*?\bs=([a-z0-9.-]+);",
                                                 data, re.M | re.I))


def _signed_by(server: Server, database: Database, domain: Domain) -> list[str]:
    account = make_account(database, domain.name)  # each its own hourly limit
    with submission(server) as client:
        client.login(account.address, PASSWORD)
        queue_id = send(client, account.address, ["friend@remote.example"],
                        message(account.address))
    _info, data = spooled(database, queue_id)
    # the selector is in the folded header: unfold it first
    return _selectors(re.sub(rb"\r\n[ \t]+", b" ", data))


def announce_dkim(server: Server, name: str) -> None:
    """What `postroom dkim` and the web console do after a key change: the msa forgets its
    cached keys of the domain (postroom.queue.authevents)."""
    client = connect(server.redis_url)
    try:
        authevents.publish_dkim(client, server.prefix, name)
    finally:
        client.close()


def test_a_pending_key_never_signs_an_active_one_does_a_retired_one_stops(
        server: Server, database: Database, domain: Domain):
    before = _signed_by(server, database, domain)
    assert len(before) == 2
    database.run_sync(dkim_store.generate_key, domain.name, "ed25519-sha256", "pend1",
                      pending=True)
    announce_dkim(server, domain.name)
    try:
        assert _signed_by(server, database, domain) == before
        database.run_sync(dkim_store.activate_key, domain.name, "pend1")
        announce_dkim(server, domain.name)
        assert _signed_by(server, database, domain) == sorted([*before, "pend1"])
        database.run_sync(dkim_store.retire_key, domain.name, "pend1")
        announce_dkim(server, domain.name)
        assert _signed_by(server, database, domain) == before
    finally:
        database.run_sync(dkim_store.retire_key, domain.name, "pend1")
        announce_dkim(server, domain.name)
