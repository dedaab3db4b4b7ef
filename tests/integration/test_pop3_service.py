"""The pop3 service as deployed (own process, real PostgreSQL and Redis) with real clients."""

from __future__ import annotations

import json
import poplib
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from postroom.auth.passwords import hash_password
from postroom.net.tls import make_self_signed
from postroom.store import domains, mailboxes, messages, users
from postroom.store.db import Database
from postroom.store.models import Mailbox, MailboxEntry
from postroom_pop3.maildrop import expunge_uids
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, listener_env, runtime_argv
from tests.support.redisdb import delete_prefix

PASSWORD = "correct horse"


@dataclass
class Server:
    host: str
    port: int
    tls_port: int
    prefix: str
    domain: str
    process: ServiceProcess


@pytest.fixture(scope="module")
def server(database_url: str, redis_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One pop3 process for the module (`postroom serve` path through the runtime)."""
    certs: Path = tmp_path_factory.mktemp("pop3-tls")
    make_self_signed(certs / "cert.pem", certs / "key.pem", "localhost")
    port, tls_port = free_port(), free_port()
    prefix = f"prtest:{secrets.token_hex(6)}:"
    env = listener_env(database_url, redis_url, prefix, certs,
                       pop3_listen=port, pop3_tls_listen=tls_port)
    process = ServiceProcess("pop3", env, argv=runtime_argv("postroom_pop3.main:SERVICE"))
    process.start()
    try:
        yield Server("127.0.0.1", port, tls_port, prefix,
                     f"pop{secrets.token_hex(4)}.example", process)
    finally:
        process.close()
        client = redis.Redis.from_url(redis_url)
        try:
            delete_prefix(client, prefix)
        finally:
            client.close()


@pytest.fixture(scope="module")
def domain(server: Server, database: Database) -> str:
    database.run_sync(domains.add_domain, server.domain)
    return server.domain


@dataclass
class Account:
    address: str
    user_id: int
    database: Database

    def deliver(self, data: bytes) -> int:
        def work(session: object) -> int:
            message_id = messages.store_message(session, data)  # type: ignore[arg-type]
            uid, _ = mailboxes.deliver_to_mailbox(
                session, user_id=self.user_id, mailbox_name="INBOX",  # type: ignore[arg-type]
                message_id=message_id, spool_recipient_id=None)
            return uid
        return self.database.run_sync(work)

    def inbox_uids(self) -> list[int]:
        def work(session: object) -> list[int]:
            return list(session.execute(  # type: ignore[attr-defined]
                select(MailboxEntry.uid).join(Mailbox, Mailbox.id == MailboxEntry.mailbox_id)
                .where(Mailbox.user_id == self.user_id, Mailbox.name == "INBOX")
                .order_by(MailboxEntry.uid)).scalars())
        return self.database.run_sync(work)

    def inbox(self) -> mailboxes.MailboxInfo:
        return self.database.run_sync(mailboxes.get_mailbox, self.user_id, "INBOX")


@pytest.fixture
def account(domain: str, database: Database) -> Account:
    address = f"u{secrets.token_hex(4)}@{domain}"
    info = database.run_sync(users.add_user, address, PASSWORD,
                             hash_fn=lambda p: hash_password(p, ln=4))
    return Account(address, info.id, database)


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # our self-signed test certificate
    return context


def pop3s(server: Server) -> poplib.POP3_SSL:
    return poplib.POP3_SSL(server.host, server.tls_port, context=unverified(), timeout=30)


def pop3_stls(server: Server) -> poplib.POP3:
    client = poplib.POP3(server.host, server.port, timeout=30)
    client.stls(unverified())
    return client


def retr(client: poplib.POP3, number: int) -> bytes:
    """The message as the client received it, lines joined with CRLF as sent."""
    _, lines, octets = client.retr(number)
    data = b"".join(line + b"\r\n" for line in lines)
    assert octets == len(data)  # poplib counts octets after undoing the dot-stuffing
    return data


MESSAGE = (b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: hello\r\n\r\n"
           b"Hello Bob.\r\n.\r\n..leading dots\r\nBye.\r\n")


def test_poplib_over_implicit_tls_downloads_byte_identical(server: Server,
                                                            account: Account) -> None:
    account.deliver(MESSAGE)
    client = pop3s(server)
    try:
        client.user(account.address)
        client.pass_(PASSWORD)
        assert client.stat() == (1, len(MESSAGE))
        assert client.list(1) == f"+OK 1 {len(MESSAGE)}".encode()
        assert retr(client, 1) == MESSAGE
    finally:
        client.quit()


def test_poplib_with_stls_downloads_byte_identical(server: Server, account: Account) -> None:
    account.deliver(MESSAGE)
    client = pop3_stls(server)
    try:
        assert "USER" in client.capa()
        client.user(account.address)
        client.pass_(PASSWORD)
        assert retr(client, 1) == MESSAGE
    finally:
        client.quit()


def test_cleartext_login_is_refused_before_stls(server: Server, account: Account) -> None:
    client = poplib.POP3(server.host, server.port, timeout=30)
    try:
        assert "STLS" in client.capa() and "USER" not in client.capa()
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.user(account.address)
    finally:
        client.quit()


def test_wrong_password_is_refused_with_auth_code(server: Server, account: Account) -> None:
    client = pop3s(server)
    try:
        client.user(account.address)
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.pass_("wrong")
    finally:
        client.close()


def test_dele_and_quit_remove_the_message_from_the_store(server: Server,
                                                         account: Account) -> None:
    first = account.deliver(MESSAGE)
    second = account.deliver(MESSAGE + b"second\r\n")
    before = account.inbox().highestmodseq
    client = pop3s(server)
    client.user(account.address)
    client.pass_(PASSWORD)
    client.dele(1)
    assert account.inbox_uids() == [first, second]  # nothing happens before QUIT
    client.quit()
    assert account.inbox_uids() == [second]
    assert account.inbox().highestmodseq > before


def test_dropped_session_expunges_nothing(server: Server, account: Account) -> None:
    uid = account.deliver(MESSAGE)
    client = pop3s(server)
    client.user(account.address)
    client.pass_(PASSWORD)
    client.dele(1)
    client.close()
    time.sleep(0.3)
    assert account.inbox_uids() == [uid]


def test_second_session_for_same_user_gets_in_use(server: Server, account: Account) -> None:
    first = pop3s(server)
    first.user(account.address)
    first.pass_(PASSWORD)
    second = pop3s(server)
    try:
        second.user(account.address)
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            second.pass_(PASSWORD)
    finally:
        second.close()
        first.quit()
    third = pop3s(server)  # the lock went with QUIT
    third.user(account.address)
    third.pass_(PASSWORD)
    third.quit()


def test_uidl_is_uidvalidity_dot_uid_and_stable(server: Server, account: Account) -> None:
    uid = account.deliver(MESSAGE)
    expected = f"{account.inbox().uidvalidity}.{uid}".encode()
    for _ in range(2):
        client = pop3s(server)
        client.user(account.address)
        client.pass_(PASSWORD)
        assert client.uidl(1) == b"+OK 1 " + expected
        client.quit()


def test_message_expunged_by_imap_during_session_is_reported(server: Server,
                                                             account: Account) -> None:
    uid = account.deliver(MESSAGE)
    account.deliver(MESSAGE + b"two\r\n")
    client = pop3s(server)
    try:
        client.user(account.address)
        client.pass_(PASSWORD)
        account.database.run_sync(expunge_uids, account.inbox().id, [uid])
        with pytest.raises(poplib.error_proto, match=r"\[SYS/PERM\] message was deleted"):
            client.retr(1)
        assert retr(client, 2).endswith(b"two\r\n")
    finally:
        client.quit()


def test_quit_publishes_an_expunge_event(server: Server, account: Account,
                                         redis_client: redis.Redis) -> None:
    uid = account.deliver(MESSAGE)
    mailbox_id = account.inbox().id
    pubsub = redis_client.pubsub()
    pubsub.subscribe(f"{server.prefix}mailbox:{mailbox_id}")
    pubsub.get_message(timeout=2)  # the subscribe confirmation
    client = pop3s(server)
    client.user(account.address)
    client.pass_(PASSWORD)
    client.dele(1)
    client.quit()
    message = pubsub.get_message(timeout=5)
    pubsub.close()
    assert message is not None
    event = json.loads(message["data"])
    assert event["event"] == "expunge" and event["uids"] == [uid]


def dots_around_16k() -> bytes:
    lines = [b"Subject: dots\r\n", b"\r\n"]
    size = sum(map(len, lines))
    # a "." line starting at every offset from 16 KiB - 8 to 16 KiB + 8
    while size < 16384 - 8:
        line = b"x" * min(70, 16384 - 8 - size - 2) + b"\r\n"
        lines.append(line)
        size += len(line)
    for _ in range(17):
        lines.append(b".\r\n")
        size += 3
    lines.append(b"end\r\n")
    return b"".join(lines)


def test_dot_lines_around_16k_arrive_intact(server: Server, account: Account) -> None:
    data = dots_around_16k()
    for shift in range(3):  # three alignments of the "." lines against 16 KiB
        account.deliver(b"X-Pad: " + b"p" * shift + b"\r\n" + data)
    client = pop3s(server)
    try:
        client.user(account.address)
        client.pass_(PASSWORD)
        for number, shift in enumerate(range(3), start=1):
            assert retr(client, number) == b"X-Pad: " + b"p" * shift + b"\r\n" + data
    finally:
        client.quit()


def test_thirty_megabyte_message_arrives_intact(server: Server, account: Account) -> None:
    line = b"0123456789" * 7 + b"..\r\n"
    data = b"Subject: big\r\n\r\n" + line * (30 * 1024 * 1024 // len(line))
    account.deliver(data)
    client = pop3s(server)
    try:
        client.user(account.address)
        client.pass_(PASSWORD)
        assert client.stat() == (1, len(data))
        assert retr(client, 1) == data
    finally:
        client.quit()


def test_hostile_input_gets_errors_and_no_traceback(server: Server, account: Account) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        raw.sendall(b"\x00\xff garbage\r\n" + b"A" * 5000 + b"\r\nTOP -1 -1\r\nAUTH PLAIN\r\n"
                    b"NOOP\r\n")
        replies = [reader.readline() for _ in range(5)]
        assert [r[:4] for r in replies] == [b"-ERR"] * 5
        assert not any(b"Traceback" in r for r in replies)
        raw.sendall(b"CAPA\r\n")
        assert reader.readline().startswith(b"+OK")


def test_commands_pipelined_after_stls_are_not_executed(server: Server,
                                                       account: Account) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        reader = raw.makefile("rb")
        reader.readline()
        raw.sendall(b"STLS\r\nCAPA\r\n")
        assert reader.readline() == b"+OK begin TLS negotiation\r\n"
        tls = unverified().wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"NOOP\r\n")
        # NOOP is refused in AUTHORIZATION; had the injected CAPA run, its reply would be first
        assert tls.recv(4096).startswith(b"-ERR")
        tls.close()


def curl(*args: str) -> bytes:
    result = subprocess.run(["curl", "-sS", "--max-time", "30", "-k", *args],
                            capture_output=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def test_curl_over_implicit_tls_downloads_byte_identical(server: Server,
                                                          account: Account) -> None:
    account.deliver(MESSAGE)
    out = curl("-u", f"{account.address}:{PASSWORD}",
               f"pop3s://{server.host}:{server.tls_port}/1")
    assert out == MESSAGE


def test_curl_with_stls_downloads_byte_identical(server: Server, account: Account) -> None:
    account.deliver(MESSAGE)
    out = curl("--ssl-reqd", "-u", f"{account.address}:{PASSWORD}",
               f"pop3://{server.host}:{server.port}/1")
    assert out == MESSAGE


SAVE_MDA = """import os, sys, time
data = sys.stdin.buffer.read()
path = os.path.join(sys.argv[1], f"{time.time_ns()}-{os.getpid()}.eml")
with open(path, "wb") as handle:
    handle.write(data)
"""


class Fetchmail:
    """fetchmail polling our STLS port once per run, delivering each message to a directory."""

    def __init__(self, server: Server, account: Account, home: Path, *, keep: bool) -> None:
        self.home = home
        self.out = home / "delivered"
        self.out.mkdir()
        mda = home / "save.py"
        mda.write_text(SAVE_MDA)
        rc = home / "fetchmailrc"
        mode = "keep" if keep else "no keep"
        rc.write_text(
            "set no syslog\n"
            f"poll 127.0.0.1 with proto POP3 port {server.port} uidl\n"
            f'  user "{account.address}" there with password "{PASSWORD}" is "nobody" here\n'
            # STLS with TLS 1.2 or later required; the test certificate is self-signed
            f"  options sslproto 'tls1.2+' no sslcertck {mode}\n"
            f'  mda "{sys.executable} {mda} {self.out}"\n')
        rc.chmod(0o600)
        self.rc = rc

    def run(self) -> list[bytes]:
        """Poll once; the messages delivered by this run."""
        before = set(self.out.iterdir())
        result = subprocess.run(
            ["fetchmail", "--nodetach", "--fetchmailrc", str(self.rc),
             "--idfile", str(self.home / "ids"), "--pidfile", str(self.home / "pid")],
            env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"}, capture_output=True,
            timeout=60, check=False)
        # 0: mail fetched, 1: no mail
        assert result.returncode in (0, 1), result.stderr.decode(errors="replace")
        new = sorted(set(self.out.iterdir()) - before)
        return [path.read_bytes() for path in new]


def body_of(delivered: bytes) -> bytes:
    """The message a client delivered, less the trace fields it prepends, with CRLF again."""
    lines = delivered.replace(b"\r\n", b"\n").split(b"\n")
    while lines and lines[0].startswith((b"Received:", b"Return-Path:", b"Delivered-To:", b" ",
                                         b"\t")):
        lines.pop(0)
    return b"\r\n".join(lines)


def test_fetchmail_keep_mode_fetches_each_message_once(server: Server, account: Account,
                                                       tmp_path: Path) -> None:
    account.deliver(MESSAGE)
    fetchmail = Fetchmail(server, account, tmp_path, keep=True)
    first = fetchmail.run()
    assert [body_of(m) for m in first] == [MESSAGE]
    assert fetchmail.run() == []  # leave on server: nothing new
    account.deliver(MESSAGE + b"new\r\n")
    assert [body_of(m) for m in fetchmail.run()] == [MESSAGE + b"new\r\n"]
    assert len(account.inbox_uids()) == 2


def test_fetchmail_delete_mode_empties_the_inbox(server: Server, account: Account,
                                                 tmp_path: Path) -> None:
    account.deliver(MESSAGE)
    account.deliver(MESSAGE + b"two\r\n")
    fetchmail = Fetchmail(server, account, tmp_path, keep=False)
    assert len(fetchmail.run()) == 2
    assert account.inbox_uids() == []


def getmail_run(server: Server, account: Account, home: Path) -> list[bytes]:
    """One getmail6 run over implicit TLS (995-style), leaving mail on the server."""
    out = home / "delivered"
    out.mkdir(exist_ok=True)
    mda = home / "save.py"
    mda.write_text(SAVE_MDA)
    rc = home / "getmailrc"
    rc.write_text(
        "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = 127.0.0.1\n"
        f"port = {server.tls_port}\nusername = {account.address}\npassword = {PASSWORD}\n"
        # an external MDA: getmail's Maildir delivery refuses to run as root (CI containers)
        f"[destination]\ntype = MDA_external\npath = {sys.executable}\n"
        f"arguments = (\"{mda}\", \"{out}\")\nallow_root_commands = true\n"
        "[options]\nread_all = false\ndelete = false\nverbose = 0\n")
    before = set(out.iterdir())
    result = subprocess.run(["getmail", "--getmaildir", str(home), "--rcfile", str(rc)],
                            capture_output=True, timeout=60, check=False,
                            env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")
    return [p.read_bytes() for p in sorted(set(out.iterdir()) - before)]


def test_getmail_over_implicit_tls_leaves_mail_and_fetches_only_new(
        server: Server, account: Account, tmp_path: Path) -> None:
    account.deliver(MESSAGE)
    assert [body_of(m) for m in getmail_run(server, account, tmp_path)] == [MESSAGE]
    assert getmail_run(server, account, tmp_path) == []
    account.deliver(MESSAGE + b"new\r\n")
    assert [body_of(m) for m in getmail_run(server, account, tmp_path)] == [MESSAGE + b"new\r\n"]
