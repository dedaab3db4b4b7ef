"""Mail access end to end: real mda, imap (two processes) and pop3 over one store, real clients.

curl over IMAPS and IMAP+STARTTLS, IDLE across two imap processes (flags,
expunges, and a delivery by the mda, with its latency printed), POP3 DELE+QUIT
seen by IMAP, and poplib/fetchmail downloads of mda-delivered mail byte for byte.
"""

from __future__ import annotations

import imaplib
import poplib
import secrets
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support.db import server_url
from tests.support.suite import PASSWORD, Running, Suite

pytestmark = pytest.mark.slow

DOMAIN = "access.example.test"
# a hard bound only against hangs; the measured figure is printed (run with -s)
LATENCY_BOUND = 5.0


def message(n: int, extra: bytes = b"") -> bytes:
    return (b"From: Alice <alice@remote.test>\r\nTo: bob@" + DOMAIN.encode() + b"\r\n"
            b"Subject: message %d\r\nMessage-ID: <m%d.%s@remote.test>\r\n"
            b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n\r\nLine one of %d.\r\n"
            b".leading dot\r\n\r\nLast line.\r\n" % (n, n, secrets.token_hex(4).encode(), n)
            + extra)


class Access:
    """The module's running services: one mda, two imap processes and one pop3."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.mda, self.imap1, self.imap2, self.pop3 = suite.start_all("mda", "imap", "imap",
                                                                      "pop3")

    def user(self) -> str:
        address = f"u{secrets.token_hex(4)}@{DOMAIN}"
        self.suite.add_user(address)
        return address

    def deliver(self, address: str, data: bytes) -> str:
        """Hand ``data`` to the real mda via the `deliver` stream; wait until it is stored."""
        return self.suite.deliver_and_wait(address, data)


@pytest.fixture(scope="module")
def access(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Access]:
    with Suite(redis_url, tmp_path_factory.mktemp("access")) as suite:
        yield Access(suite)


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the suite's self-signed certificate
    return context


def imaps(running: Running, address: str) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=unverified(),
                               timeout=30)
    client.login(address, PASSWORD)
    return client


def idler(running: Running, address: str) -> IMAPClient:
    client = IMAPClient("127.0.0.1", running.tls_port, ssl=True, ssl_context=unverified(),
                        timeout=30)
    client.login(address, PASSWORD)
    client.select_folder("INBOX")
    return client


def curl(*args: str) -> bytes:
    done = subprocess.run(["curl", "-sS", "--max-time", "30", "-k", *args],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


# --- curl


def test_curl_over_implicit_tls_lists_and_fetches_byte_exact(access: Access) -> None:
    address = access.user()
    data = message(1)
    access.deliver(address, data)
    base = f"imaps://127.0.0.1:{access.imap1.tls_port}"
    listing = curl("-u", f"{address}:{PASSWORD}", base + "/").decode()
    for name in ("INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert f'"/" {name}' in listing, listing
    assert curl("-u", f"{address}:{PASSWORD}", base + "/INBOX;UID=1") == data


def test_curl_with_starttls_required_lists_and_fetches_byte_exact(access: Access) -> None:
    address = access.user()
    data = message(2, b"8-bit body: \xc3\xa9t\xc3\xa9\r\n")
    access.deliver(address, data)
    base = f"imap://127.0.0.1:{access.imap2.port}"
    listing = curl("--ssl-reqd", "-u", f"{address}:{PASSWORD}", base + "/").decode()
    assert '"/" INBOX' in listing, listing
    assert curl("--ssl-reqd", "-u", f"{address}:{PASSWORD}", base + "/INBOX;UID=1") == data


# --- IDLE across two imap processes


def idle_until(client: IMAPClient, wanted: bytes, timeout: float = LATENCY_BOUND) -> tuple[
        list[Any], float]:
    """IDLE responses until one whose second field is ``wanted``; (responses, when seen)."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.idle_check(timeout=max(0.01, deadline - time.monotonic()))
        now = time.monotonic()
        seen.extend(batch)
        if any(len(r) > 1 and r[1] == wanted for r in batch):
            return seen, now
    pytest.fail(f"no {wanted!r} in IDLE within {timeout}s; got {seen}", pytrace=False)


def test_flag_set_in_one_imap_process_reaches_idle_in_the_other(access: Access) -> None:
    address = access.user()
    access.deliver(address, message(3))
    watcher = idler(access.imap1, address)
    actor = imaps(access.imap2, address)
    try:
        watcher.idle()
        actor.select("INBOX")
        started = time.monotonic()
        actor.store("1", "+FLAGS", "(\\Flagged)")
        seen, when = idle_until(watcher, b"FETCH")
        watcher.idle_done()
        print(f"\nflag change -> other process's IDLE: {(when - started) * 1000:.0f} ms")
        fetch = next(r for r in seen if len(r) > 1 and r[1] == b"FETCH")
        assert fetch[0] == 1 and b"\\Flagged" in fetch[2][fetch[2].index(b"FLAGS") + 1]
    finally:
        actor.logout()
        watcher.logout()


def test_expunge_in_one_imap_process_reaches_idle_in_the_other(access: Access) -> None:
    address = access.user()
    for n in range(3):
        access.deliver(address, message(10 + n))
    watcher = idler(access.imap2, address)
    actor = imaps(access.imap1, address)
    try:
        watcher.idle()
        actor.select("INBOX")
        actor.store("2", "+FLAGS", "(\\Deleted)")
        started = time.monotonic()
        actor.expunge()
        seen, when = idle_until(watcher, b"EXPUNGE")
        watcher.idle_done()
        print(f"\nexpunge -> other process's IDLE: {(when - started) * 1000:.0f} ms")
        assert (2, b"EXPUNGE") in seen
        assert watcher.search("ALL") == [1, 3]  # imapclient speaks UIDs
    finally:
        actor.logout()
        watcher.logout()


def test_mda_delivery_reaches_idle_sessions_in_both_imap_processes(access: Access) -> None:
    address = access.user()
    access.deliver(address, message(20))
    watchers = [idler(access.imap1, address), idler(access.imap2, address)]
    arrived: list[float | None] = [None, None]
    errors: list[BaseException] = []

    def watch(index: int) -> None:
        try:
            arrived[index] = idle_until(watchers[index], b"EXISTS")[1]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    try:
        for client in watchers:
            client.idle()
        threads = [threading.Thread(target=watch, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        access.suite.enqueue_delivery(address, message(21))
        for thread in threads:
            thread.join(LATENCY_BOUND + 5)
        assert not errors, errors
        latencies = [(t - started) * 1000 for t in arrived if t is not None]
        print(f"\nmda delivery (enqueue) -> IDLE EXISTS: imap1 {latencies[0]:.0f} ms, "
              f"imap2 {latencies[1]:.0f} ms")
        assert len(latencies) == 2
        for client in watchers:
            client.idle_done()
            assert client.search("ALL") == [1, 2]
    finally:
        for client in watchers:
            client.logout()


# --- POP3 and IMAP on one store


def pop3s(access: Access, address: str) -> poplib.POP3_SSL:
    client = poplib.POP3_SSL("127.0.0.1", access.pop3.tls_port, context=unverified(),
                             timeout=30)
    client.user(address)
    client.pass_(PASSWORD)
    return client


def test_pop3_dele_quit_removes_the_messages_from_imap_view(access: Access) -> None:
    address = access.user()
    for n in range(3):
        access.deliver(address, message(30 + n))
    viewer = idler(access.imap1, address)
    try:
        assert viewer.search("ALL") == [1, 2, 3]  # UIDs
        viewer.idle()
        pop = pop3s(access, address)
        pop.dele(1)
        pop.dele(3)
        pop.quit()
        seen, _ = idle_until(viewer, b"EXPUNGE")
        # both expunges may come in one burst or two
        if sum(1 for r in seen if len(r) > 1 and r[1] == b"EXPUNGE") < 2:
            seen += idle_until(viewer, b"EXPUNGE")[0]
        viewer.idle_done()
        assert viewer.search("ALL") == [2]  # UIDs
    finally:
        viewer.logout()
    fresh = imaps(access.imap2, address)
    try:
        assert fresh.select("INBOX") == ("OK", [b"1"])
    finally:
        fresh.logout()


def test_poplib_downloads_an_mda_delivery_byte_identical_with_crlf(access: Access) -> None:
    address = access.user()
    data = message(40, b"..two dots\r\n.\r\nsingle-dot line above\r\n")
    access.deliver(address, data)
    pop = pop3s(access, address)
    try:
        _, listing, _ = pop.list()
        _, lines, octets = pop.retr(1)
    finally:
        pop.quit()
    # poplib splits on CRLF and undoes dot-stuffing: CRLF joined back is the message
    assert b"\r\n".join(lines) + b"\r\n" == data
    assert listing == [b"1 %d" % len(data)]
    assert octets >= len(data)


SAVE_MDA = """\
import os, sys, time
data = sys.stdin.buffer.read()
path = os.path.join(sys.argv[1], f"{time.time_ns()}-{os.getpid()}.eml")
with open(path, "wb") as handle:
    handle.write(data)
"""


def test_fetchmail_downloads_mda_deliveries_byte_identical_with_crlf(
        access: Access, tmp_path: Path) -> None:
    address = access.user()
    sent = [message(50), message(51, b"\xe2\x82\xac 8-bit\r\n.\r\n")]
    for data in sent:
        access.deliver(address, data)
    out = tmp_path / "delivered"
    out.mkdir()
    mda = tmp_path / "save.py"
    mda.write_text(SAVE_MDA)
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set no syslog\nset invisible\n"
        f"poll 127.0.0.1 with proto POP3 port {access.pop3.port} uidl\n"
        f'  user "{address}" there with password "{PASSWORD}" is "nobody" here\n'
        # keep CRs (fetchmail strips them for an MDA by default) and the bytes as sent
        f"  options sslproto 'tls1.2+' no sslcertck no stripcr no mimedecode keep\n"
        f'  mda "{sys.executable} {mda} {out}"\n')
    rc.chmod(0o600)
    done = subprocess.run(
        ["fetchmail", "--nodetach", "--fetchmailrc", str(rc), "--idfile", str(tmp_path / "ids"),
         "--pidfile", str(tmp_path / "pid")],
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, capture_output=True, timeout=60,
        check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    got = [p.read_bytes() for p in sorted(out.iterdir())]
    assert len(got) == 2
    for data, delivered in zip(sent, got, strict=True):
        # fetchmail still prepends its own trace line(s); everything after is ours
        assert delivered.endswith(data), delivered[:400]
        assert b"\r\n" in delivered and b"\n" not in delivered.replace(b"\r\n", b"")


# --- database outage


def rename_database(url: str, new_name: str) -> str:
    """Rename the database of ``url`` (closing its sessions first); the new URL."""
    old = make_url(url)
    admin = create_engine(server_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :name AND pid <> pg_backend_pid()"),
                         {"name": old.database})
            conn.execute(text(f'ALTER DATABASE "{old.database}" RENAME TO "{new_name}"'))
    finally:
        admin.dispose()
    return old.set(database=new_name).render_as_string(hide_password=False)


def test_database_outage_answers_no_unavailable_and_recovers(suite: Suite) -> None:
    address = f"outage@{DOMAIN}"
    user_id = suite.add_user(address)
    suite.store(user_id, message(60))
    imap = suite.start("imap")
    client = imaps(imap, address)
    suite.db.dispose()
    name = str(make_url(suite.database_url).database)
    moved = rename_database(suite.database_url, name + "_away")
    try:
        answer = client.select("INBOX")
        status = client.status("INBOX", "(MESSAGES)")
    finally:
        rename_database(moved, name)
    print(f"\nwithout a database: SELECT {answer}, STATUS {status}")
    assert answer == ("NO", [b"[UNAVAILABLE] temporary failure, try again later"])
    assert status == ("NO", [b"[UNAVAILABLE] temporary failure, try again later"])
    typ, data = client.select("INBOX")
    assert (typ, data) == ("OK", [b"1"])
    client.logout()
