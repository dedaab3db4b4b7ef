"""The hostile-input campaign's harness: the whole suite as real processes, raw clients, a ledger.

``hostile_suite`` (session scope) starts dmarc, mta, msa, pop3, imap and managesieve as
``postroom serve NAME`` processes on free loopback ports, over a database of
their own, a Redis prefix of their own and the session's loopback DNS server,
with small limits so the attacks trip them quickly (see ``LIMITS``). Three
accounts exist in ``hostile.test``: alice (the attacker), bob (the victim, with
a private folder ``Secret-Bob``) and carol (a bystander); each brute-force test
has an account of its own to lock.

``Conn`` is a raw line client (it never "fixes" what a test sends, unlike
smtplib), able to bind to any 127.0.0.0/8 source address and to start TLS in
the middle of a session. ``LEDGER`` counts inputs tried per listener, crashes,
messages lost and checks bypassed; the last test prints it as a table.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import signal
import socket
import ssl
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from postroom.auth.passwords import hash_password
from postroom.net.tls import make_self_signed
from postroom.store import domains, mailboxes, messages, users
from postroom.store.db import Database
from postroom.store.migrate import upgrade
from postroom.store.models import Mailbox, MailboxEntry, Message, SpoolMessage
from tests.support.db import create_test_database, drop_test_database
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess
from tests.support.redisdb import delete_prefix

DOMAIN = "hostile.test"
HOSTNAME = "mx.hostile.test"
PASSWORD = "a long password 1"
ACCOUNTS = ("alice", "bob", "carol", "lock-msa", "lock-pop3", "lock-imap")
# small limits, so each attack trips its defence in a few steps
LIMITS = {
    "POSTROOM_AUTH_FAIL_LIMIT": "3",
    "POSTROOM_AUTH_ADDRESS_FAIL_LIMIT": "6",
    "POSTROOM_AUTH_DELAY_MAX": "1s",
    "POSTROOM_MAX_CONNECTIONS_PER_IP": "20",
    "POSTROOM_MAX_MESSAGE_SIZE": "1M",
    "POSTROOM_MAX_RECIPIENTS": "100",
    # under the check's deadline (4 x the 1 s DNS timeout, at least 5 s): test_dkim_flood.py
    "POSTROOM_DKIM_MAX_SIGNATURES": "10",
    "POSTROOM_DKIM_BUDGET": "1.5s",
}
SECRET = f"secret-{secrets.token_hex(4)}"


def address(user: str) -> str:
    return f"{user}@{DOMAIN}"


# --------------------------------------------------------------------------- the ledger


@dataclass
class Ledger:
    """What the campaign tried and what went wrong, per listener (printed at the end)."""

    tried: Counter[str] = field(default_factory=Counter)
    crashes: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    bypassed: Counter[str] = field(default_factory=Counter)

    def tried_on(self, listener: str, count: int = 1) -> None:
        self.tried[listener] += count

    def check(self, listener: str, ok: bool, what: str) -> None:
        """Count a bypassed check and fail the test when ``ok`` is false."""
        if not ok:
            self.bypassed[listener] += 1
        assert ok, f"{listener}: check bypassed: {what}"

    def check_lost(self, listener: str, expected: int, found: int, what: str) -> None:
        if found < expected:
            self.lost[listener] += expected - found
        assert found >= expected, f"{listener}: {expected - found} message(s) lost: {what}"

    def table(self) -> str:
        names = sorted(set(self.tried) | set(self.crashes) | set(self.lost) | set(self.bypassed))
        rows = [("listener", "inputs tried", "crashes", "lost", "bypassed")]
        rows += [(n, str(self.tried[n]), str(self.crashes[n]), str(self.lost[n]),
                  str(self.bypassed[n])) for n in names]
        rows.append(("total", str(sum(self.tried.values())), str(sum(self.crashes.values())),
                     str(sum(self.lost.values())), str(sum(self.bypassed.values()))))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                         for r in rows)


LEDGER = Ledger()


# --------------------------------------------------------------------------- raw clients


def unverified(*, maximum: ssl.TLSVersion | None = None, minimum: ssl.TLSVersion | None = None,
               ciphers: str | None = None) -> ssl.SSLContext:
    """A client context for our self-signed certificate, optionally forced to old TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if ciphers is not None or minimum is not None:
        # let the client offer what a downgrade attacker would; the server must refuse it
        context.set_ciphers(ciphers or "ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 on purpose
        if minimum is not None:
            context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum
    return context


class Closed(Exception):
    """The server closed the connection before the expected reply."""


class Conn:
    """A raw client connection that keeps every byte it received (to look for tracebacks)."""

    def __init__(self, port: int, *, tls: bool = False, source: str = "127.0.0.1",
                 timeout: float = 10.0, context: ssl.SSLContext | None = None) -> None:
        self.sock: socket.socket = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.buffer = b""
        self.received = b""
        if tls:
            self.sock = (context or unverified()).wrap_socket(self.sock)

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed(self.buffer.decode("latin-1"))
        self.buffer += chunk
        self.received += chunk

    def line(self) -> bytes:
        """The next line without its CRLF."""
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def smtp(self) -> tuple[int, bytes]:
        """One SMTP reply (multi-line joined by LF): (code, text)."""
        texts = []
        while True:
            line = self.line()
            texts.append(line[4:])
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(texts)

    def tagged(self, tag: bytes) -> tuple[list[bytes], bytes]:
        """IMAP: (untagged lines, the tagged line) up to the completion of ``tag``."""
        lines = []
        while True:
            line = self.line()
            if line.startswith(tag + b" "):
                return lines, line
            lines.append(line)

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes within ``timeout`` (bytes before the close are kept)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                self._fill()
        except Closed:
            return True
        except TimeoutError:
            return False
        except OSError:
            return True

    def starttls(self, context: ssl.SSLContext | None = None) -> None:
        # anything the server sent after its "go ahead" would be plaintext injected by a MITM
        assert self.buffer == b"", f"plaintext after the TLS go-ahead: {self.buffer!r}"
        self.sock = (context or unverified()).wrap_socket(self.sock)


def no_traceback(conn: Conn) -> None:
    """No Python traceback ever reaches a network peer."""
    assert b"Traceback" not in conn.received and b'File "' not in conn.received, conn.received


# --------------------------------------------------------------------------- the suite


@dataclass
class Suite:
    """The running services, their ports and the store they share."""

    database: Database
    database_url: str
    redis_url: str
    prefix: str
    ports: dict[str, int]
    processes: dict[str, ServiceProcess]
    user_ids: dict[str, int]
    startup: dict[str, float]

    # listener names, as in the ledger: "smtp-25", "smtp-587", "smtps-465", "pop3-110",
    # "pop3s-995", "imap-143", "imaps-993", "dmarc-http"; "relay-sink" is no listener of
    # ours but the port the mta's relay connects to on remote MXs (POSTROOM_SMTP_OUTBOUND_PORT)

    def spool_count(self, marker: bytes | None = None) -> int:
        """Spooled messages (whose blob contains ``marker``, when given)."""
        def work(session: Any) -> int:
            query = select(func.count()).select_from(SpoolMessage)
            if marker is not None:
                query = query.join(Message, Message.id == SpoolMessage.message_id).where(
                    Message.blob.op("LIKE")(b"%" + marker + b"%"))
            return int(session.execute(query).scalar_one())
        return self.database.run_sync(work)

    def spooled_blobs(self, marker: bytes) -> list[bytes]:
        def work(session: Any) -> list[bytes]:
            return [bytes(b) for b in session.execute(
                select(Message.blob).join(SpoolMessage, SpoolMessage.message_id == Message.id)
                .where(Message.blob.op("LIKE")(b"%" + marker + b"%"))).scalars()]
        return self.database.run_sync(work)

    def mailbox_state(self, user: str) -> dict[str, int]:
        """{mailbox name: number of messages} of one account, straight from the store."""
        user_id = self.user_ids[user]

        def work(session: Any) -> dict[str, int]:
            rows = session.execute(
                select(Mailbox.name, func.count(MailboxEntry.id))
                .outerjoin(MailboxEntry, MailboxEntry.mailbox_id == Mailbox.id)
                .where(Mailbox.user_id == user_id).group_by(Mailbox.name)).all()
            return {name: int(count) for name, count in rows}
        return self.database.run_sync(work)

    def deliver(self, user: str, data: bytes, mailbox: str = "INBOX") -> None:
        user_id = self.user_ids[user]

        def work(session: Any) -> None:
            message_id = messages.store_message(session, data)
            mailboxes.deliver_to_mailbox(session, user_id=user_id, mailbox_name=mailbox,
                                         message_id=message_id, spool_recipient_id=None)
        self.database.run_sync(work)

    def alive(self) -> dict[str, int | None]:
        """{service: exit code or None while it runs}."""
        return {name: (p.proc.poll() if p.proc else -1) for name, p in self.processes.items()}

    def internal_errors(self) -> list[dict[str, Any]]:
        """Log events that carry a traceback: a bug reached by some input."""
        return [e for p in self.processes.values() for e in p.log_events() if "traceback" in e]

    def non_json_lines(self) -> list[tuple[str, str]]:
        """Output lines that are not one JSON object (a log injection would make some)."""
        bad = []
        for name, process in self.processes.items():
            for line in process.output.splitlines():
                try:
                    if not isinstance(json.loads(line), dict):
                        bad.append((name, line))
                except ValueError:
                    bad.append((name, line))
        return bad


def _seed(database: Database) -> dict[str, int]:
    database.run_sync(domains.add_domain, DOMAIN)
    cheap = functools.partial(hash_password, ln=4)
    ids = {}
    for user in ACCOUNTS:
        ids[user] = database.run_sync(users.add_user, address(user), PASSWORD,
                                      hash_fn=cheap).id
    database.run_sync(mailboxes.create_mailbox, ids["bob"], "Secret-Bob")
    return ids


def _env(common: dict[str, str], **listen: str) -> dict[str, str]:
    return {**common, **{f"POSTROOM_{k.upper()}": v for k, v in listen.items()}}


def _listen(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


@pytest.fixture(scope="session")
def hostile_suite(redis_url: str, dns_server_session: Any,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """Every listener of the suite as a real process, seeded with the campaign's accounts."""
    url = create_test_database("postroom_hostile_")
    upgrade(url)
    database = Database(url, pool_size=2)
    database.start()
    prefix = f"prtest:{secrets.token_hex(6)}:"
    certs: Path = tmp_path_factory.mktemp("hostile-tls")
    make_self_signed(certs / "cert.pem", certs / "key.pem", "localhost")
    ports = {name: free_port() for name in (
        "smtp-25", "smtp-587", "smtps-465", "pop3-110", "pop3s-995", "imap-143", "imaps-993",
        "sieve-4190", "dmarc-http", "relay-sink")}
    common = {
        "POSTROOM_DATABASE_URL": url, "POSTROOM_REDIS_URL": redis_url,
        "POSTROOM_REDIS_PREFIX": prefix, "POSTROOM_HOSTNAME": HOSTNAME,
        "POSTROOM_TLS_CERT_FILE": str(certs / "cert.pem"),
        "POSTROOM_TLS_KEY_FILE": str(certs / "key.pem"),
        "POSTROOM_DB_POOL_SIZE": "3", "POSTROOM_DNS_TIMEOUT": "1s",
        "POSTROOM_DMARC_URL": f"http://127.0.0.1:{ports['dmarc-http']}",
        **dns_server_session.env, **LIMITS,
    }
    processes = {
        "dmarc": ServiceProcess("dmarc", _env(common, dmarc_listen=_listen(ports["dmarc-http"]))),
        # the relay as shipped (no internal network allowed); remote MXs on "relay-sink"'s port
        "mta": ServiceProcess("mta", _env(common, mta_listen=_listen(ports["smtp-25"]),
                                          smtp_outbound_port=str(ports["relay-sink"]))),
        "msa": ServiceProcess("msa", _env(common, msa_listen=_listen(ports["smtp-587"]),
                                          msa_tls_listen=_listen(ports["smtps-465"]))),
        "pop3": ServiceProcess("pop3", _env(common, pop3_listen=_listen(ports["pop3-110"]),
                                            pop3_tls_listen=_listen(ports["pop3s-995"]))),
        "imap": ServiceProcess("imap", _env(common, imap_listen=_listen(ports["imap-143"]),
                                            imap_tls_listen=_listen(ports["imaps-993"]))),
        "managesieve": ServiceProcess("managesieve", _env(
            common, managesieve_listen=_listen(ports["sieve-4190"]))),
    }
    try:
        user_ids = _seed(database)
        for process in processes.values():
            process.spawn()
        started = time.monotonic()
        startup = {}
        for name, process in processes.items():
            process.wait_healthy(60)
            startup[name] = round(time.monotonic() - started, 1)
        suite = Suite(database, url, redis_url, prefix, ports, processes, user_ids, startup)
        suite.deliver("bob", b"From: x@example.org\r\nSubject: " + SECRET.encode()
                      + b"\r\n\r\nbob only\r\n")
        suite.deliver("bob", b"From: x@example.org\r\nSubject: folder " + SECRET.encode()
                      + b"\r\n\r\nbob only\r\n", "Secret-Bob")
        suite.deliver("alice", b"From: x@example.org\r\nSubject: alice mail\r\n\r\nhi\r\n")
        yield suite
    finally:
        stop_live_services(processes, database, url, redis_url, prefix)


def stop_live_services(processes: dict[str, ServiceProcess], database: Database, url: str,
                       redis_url: str, prefix: str) -> None:
    """Tear down what a live-service fixture started: processes, test database, Redis keys."""
    for process in processes.values():  # SIGTERM them all first: they stop in parallel
        if process.proc is not None:
            process.signal(signal.SIGTERM)
    for process in processes.values():
        process.close()
    database.stop()
    drop_test_database(url)
    client = redis.Redis.from_url(redis_url)
    try:
        delete_prefix(client, prefix)
    finally:
        client.close()


# --------------------------------------------------------------------------- normal clients


def smtp_session(suite: Suite, listener: str, *, source: str = "127.0.0.1") -> Conn:
    """A session at the point after EHLO (and STARTTLS+AUTH on submission ports)."""
    port = suite.ports[listener]
    conn = Conn(port, tls=listener == "smtps-465", source=source)
    assert conn.smtp()[0] == 220
    conn.send(b"EHLO client.example\r\n")
    assert conn.smtp()[0] == 250
    if listener == "smtp-587":
        conn.send(b"STARTTLS\r\n")
        assert conn.smtp()[0] == 220
        conn.starttls()
        conn.send(b"EHLO client.example\r\n")
        assert conn.smtp()[0] == 250
    if listener in ("smtp-587", "smtps-465"):
        import base64
        token = base64.b64encode(f"\0{address('alice')}\0{PASSWORD}".encode())
        conn.send(b"AUTH PLAIN " + token + b"\r\n")
        code, text = conn.smtp()
        assert code == 235, text
    return conn


def sender_for(listener: str) -> bytes:
    return (address("alice") if listener != "smtp-25" else "someone@sender.example").encode()


def smtp_send_ok(suite: Suite, listener: str) -> None:
    """A normal message goes through ``listener`` and is spooled exactly once."""
    marker = f"normal-{secrets.token_hex(6)}".encode()
    with smtp_session(suite, listener) as conn:
        conn.send(b"MAIL FROM:<" + sender_for(listener) + b">\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"RCPT TO:<" + address("carol").encode() + b">\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"DATA\r\n")
        assert conn.smtp()[0] == 354
        conn.send(b"From: " + sender_for(listener) + b"\r\nTo: carol@hostile.test\r\n"
                  b"Subject: " + marker + b"\r\n\r\nhello\r\n.\r\n")
        code, text = conn.smtp()
        assert code == 250, text
        conn.send(b"QUIT\r\n")
        assert conn.smtp()[0] == 221
        no_traceback(conn)
    LEDGER.check_lost(listener, 1, suite.spool_count(marker), "normal message after attacks")


def pop3_ok(suite: Suite, user: str = "carol", source: str = "127.0.0.1") -> None:
    with Conn(suite.ports["pop3s-995"], tls=True, source=source) as conn:
        assert conn.line().startswith(b"+OK")
        conn.send(f"USER {address(user)}\r\n".encode())
        assert conn.line().startswith(b"+OK")
        conn.send(f"PASS {PASSWORD}\r\n".encode())
        reply = conn.line()
        assert reply.startswith(b"+OK"), reply
        conn.send(b"QUIT\r\n")
        assert conn.line().startswith(b"+OK")


def imap_ok(suite: Suite, user: str = "carol", source: str = "127.0.0.1") -> None:
    with Conn(suite.ports["imaps-993"], tls=True, source=source) as conn:
        assert conn.line().startswith(b"* OK")
        conn.send(f'a LOGIN "{address(user)}" "{PASSWORD}"\r\n'.encode())
        _, done = conn.tagged(b"a")
        assert done.startswith(b"a OK"), done
        conn.send(b"b SELECT INBOX\r\n")
        _, done = conn.tagged(b"b")
        assert done.startswith(b"b OK"), done
        conn.send(b"c LOGOUT\r\n")
        conn.tagged(b"c")


def managesieve_ok(suite: Suite, user: str = "carol") -> None:
    with Conn(suite.ports["sieve-4190"]) as conn:
        while not conn.line().startswith(b"OK"):
            pass
        conn.send(b"STARTTLS\r\n")
        assert conn.line().startswith(b"OK")
        conn.starttls()
        while not conn.line().startswith(b"OK"):
            pass
        token = base64.b64encode(f"\0{address(user)}\0{PASSWORD}".encode()).decode()
        conn.send(f'AUTHENTICATE "PLAIN" "{token}"\r\n'.encode())
        reply = conn.line()
        assert reply.startswith(b"OK"), reply
        conn.send(b"LISTSCRIPTS\r\n")
        while not (reply := conn.line()).startswith((b"OK", b"NO", b"BYE")):
            pass
        assert reply.startswith(b"OK"), reply
        conn.send(b"LOGOUT\r\n")
        assert conn.line().startswith(b"OK")


def still_serves(suite: Suite, listener: str) -> None:
    """The service behind ``listener`` is up and answers a normal client."""
    service = {"smtp-25": "mta", "smtp-587": "msa", "smtps-465": "msa", "pop3-110": "pop3",
               "pop3s-995": "pop3", "imap-143": "imap", "imaps-993": "imap",
               "sieve-4190": "managesieve", "dmarc-http": "dmarc"}[listener]
    code = suite.alive()[service]
    if code is not None:
        LEDGER.crashes[listener] += 1
    assert code is None, f"{service} exited with {code}"
    if listener.startswith("smtp"):
        smtp_send_ok(suite, listener)
    elif listener.startswith("pop3"):
        pop3_ok(suite)
    elif listener.startswith("imap"):
        imap_ok(suite)
    elif listener.startswith("sieve"):
        managesieve_ok(suite)
    else:
        status, _ = suite.processes["dmarc"].healthz()
        assert status == 200


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
