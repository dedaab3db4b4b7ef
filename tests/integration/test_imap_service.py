"""The imap service as deployed (own process, PostgreSQL, Redis) with imaplib and imapclient."""

from __future__ import annotations

import imaplib
import re
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from imapclient import IMAPClient

from postroom.auth.passwords import hash_password
from postroom.mime import analyze
from postroom.queue import events
from postroom.store import domains, mailboxes, messages, users
from postroom.store.db import Database
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
    redis_url: str
    process: ServiceProcess


def start_imap(database_url: str, redis_url: str, certs: Path, prefix: str) -> tuple[
        ServiceProcess, int, int]:
    port, tls_port = free_port(), free_port()
    env = listener_env(database_url, redis_url, prefix, certs,
                       imap_listen=port, imap_tls_listen=tls_port)
    process = ServiceProcess("imap", env, argv=runtime_argv("postroom_imap.main:SERVICE"))
    process.start()
    return process, port, tls_port


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from postroom.net.tls import make_self_signed

    path: Path = tmp_path_factory.mktemp("imap-tls")
    make_self_signed(path / "cert.pem", path / "key.pem", "localhost")
    return path


@pytest.fixture(scope="module")
def server(database_url: str, redis_url: str, certs: Path) -> Iterator[Server]:
    prefix = f"prtest:{secrets.token_hex(6)}:"
    process, port, tls_port = start_imap(database_url, redis_url, certs, prefix)
    try:
        yield Server("127.0.0.1", port, tls_port, prefix, f"imap{secrets.token_hex(4)}.example",
                     redis_url, process)
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
    server: Server

    def deliver(self, data: bytes, mailbox: str = "INBOX") -> int:
        """Deliver as the MDA does: store, allocate a UID, publish the change event."""
        def work(session: object) -> tuple[int, int]:
            message_id = messages.store_message(session, data,  # type: ignore[arg-type]
                                                analyze(data).to_dict())
            uid, _ = mailboxes.deliver_to_mailbox(
                session, user_id=self.user_id, mailbox_name=mailbox,  # type: ignore[arg-type]
                message_id=message_id, spool_recipient_id=None)
            box = mailboxes.get_mailbox(session, self.user_id, mailbox)  # type: ignore[arg-type]
            return uid, box.id
        uid, mailbox_id = self.database.run_sync(work)
        client = redis.Redis.from_url(self.server.redis_url)
        try:
            events.publish(client, self.server.prefix,
                           events.ChangeEvent(events.EXISTS, mailbox_id, "test", uid=uid))
        finally:
            client.close()
        return uid


@pytest.fixture
def account(domain: str, database: Database, server: Server) -> Account:
    address = f"u{secrets.token_hex(4)}@{domain}"
    info = database.run_sync(users.add_user, address, PASSWORD,
                             hash_fn=lambda p: hash_password(p, ln=4))
    return Account(address, info.id, database, server)


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # our self-signed test certificate
    return context


def imaps(server: Server, account: Account | None = None) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(server.host, server.tls_port, ssl_context=unverified(),
                               timeout=30)
    if account is not None:
        client.login(account.address, PASSWORD)
    return client


MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\n"
           b"Subject: hello\r\nX-Custom: marker-42\r\nMessage-ID: <m1@example.org>\r\n"
           b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n\r\nHello Bob.\r\n")
MULTIPART = (b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: parts\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
             b"--XX\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
             b"--XX\r\nContent-Type: text/html\r\n\r\n<p>second</p>\r\n--XX--\r\n")


def test_login_over_implicit_tls_lists_special_use_folders(server: Server,
                                                           account: Account) -> None:
    client = imaps(server, account)
    try:
        typ, lines = client.list()
        assert typ == "OK"
        text = b"\n".join(lines).decode()
        assert '(\\HasNoChildren) "/" INBOX' in text
        for name, use in (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"),
                          ("Junk", "\\Junk"), ("Archive", "\\Archive")):
            assert re.search(rf"\(.*{re.escape(use)}.*\) \"/\" {name}", text), text
    finally:
        client.logout()


def test_starttls_then_login_works_and_plaintext_login_is_disabled(server: Server,
                                                                   account: Account) -> None:
    client = imaplib.IMAP4(server.host, server.port, timeout=30)
    try:
        assert "LOGINDISABLED" in client.capabilities
        assert "STARTTLS" in client.capabilities
        client.starttls(unverified())
        assert "LOGINDISABLED" not in client.capabilities
        typ, _ = client.login(account.address, PASSWORD)
        assert typ == "OK"
    finally:
        client.logout()


def test_wrong_password_is_refused(server: Server, account: Account) -> None:
    client = imaps(server)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login(account.address, "wrong")
    finally:
        client.shutdown()


def test_append_without_flags_then_fetch_is_byte_exact(server: Server, account: Account) -> None:
    client = imaps(server, account)
    try:
        typ, data = client.append("INBOX", None, None, MESSAGE)
        assert typ == "OK" and b"APPENDUID" in data[0]
        client.select("INBOX")
        typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[] BODY.PEEK[HEADER] BODY.PEEK[TEXT] "
                               "RFC822.SIZE)")
        assert typ == "OK"
        parts = [p for p in data if isinstance(p, tuple)]
        assert parts[0][1] == MESSAGE
        header, _, body = MESSAGE.partition(b"\r\n\r\n")
        assert parts[1][1] == header + b"\r\n\r\n"
        assert parts[2][1] == body
        assert f"RFC822.SIZE {len(MESSAGE)}".encode() in data[-1]
    finally:
        client.logout()


def test_fetch_envelope_bodystructure_and_sections(server: Server, account: Account) -> None:
    account.deliver(MULTIPART)
    client = IMAPClient(server.host, server.tls_port, ssl=True, ssl_context=unverified(),
                        timeout=30)
    try:
        client.login(account.address, PASSWORD)
        client.select_folder("INBOX")
        uid = client.search(["ALL"])[0]
        got = client.fetch([uid], ["ENVELOPE", "BODYSTRUCTURE", "BODY.PEEK[2]",
                                   "BODY.PEEK[1.MIME]", "BODY.PEEK[]<0.10>"])[uid]
        assert got[b"ENVELOPE"].subject == b"parts"
        assert got[b"BODYSTRUCTURE"].is_multipart
        assert got[b"BODY[2]"] == b"<p>second</p>"
        assert got[b"BODY[1.MIME]"] == b"Content-Type: text/plain\r\n\r\n"
        assert got[b"BODY[]<0>"] == MULTIPART[:10]
    finally:
        client.logout()


def test_non_ascii_headers_fetch_without_dropping_the_connection(server: Server,
                                                                 account: Account) -> None:
    raw = ("From: Zoë <zoe@example.org>\r\nSubject: Grüße aus Köln\r\n\r\nbody\r\n"
           ).encode()
    account.deliver(raw)
    client = imaps(server, account)
    try:
        client.select("INBOX")
        typ, data = client.fetch("1", "(ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        assert "Grüße aus Köln".encode() in b"".join(
            p[1] if isinstance(p, tuple) else p for p in data)
        assert client.noop()[0] == "OK"
    finally:
        client.logout()


def test_store_flags_and_search(server: Server, account: Account) -> None:
    account.deliver(MESSAGE)
    account.deliver(MULTIPART)
    client = imaps(server, account)
    try:
        client.select("INBOX")
        typ, data = client.store("1", "+FLAGS", "(\\Flagged $Work)")
        assert typ == "OK" and b"\\Flagged" in data[0] and b"$Work" in data[0]
        assert client.search(None, "FLAGGED")[1] == [b"1"]
        assert client.search(None, "KEYWORD", "$Work")[1] == [b"1"]
        assert client.search(None, "UNFLAGGED")[1] == [b"2"]
        assert client.search(None, "HEADER", "X-Custom", "marker-42")[1] == [b"1"]
        assert client.search(None, "HEADER", "Subject", "PARTS")[1] == [b"2"]
        assert client.search(None, "FROM", "alice")[1] == [b"1 2"]
        assert client.search(None, "BODY", "second")[1] == [b"2"]
        assert client.search(None, "TEXT", "\"HELLO BOB\"")[1] == [b"1"]
        assert client.search(None, "NOT", "SEEN")[1] == [b"1 2"]
        assert client.search(None, "SENTBEFORE", "1-Jan-2000")[1] == [b"1"]
        assert client.uid("SEARCH", "LARGER", str(len(MESSAGE)))[1] == [b"2"]
    finally:
        client.logout()


def test_fetching_a_body_sets_seen(server: Server, account: Account) -> None:
    account.deliver(MESSAGE)
    client = imaps(server, account)
    try:
        client.select("INBOX")
        typ, _data = client.fetch("1", "(BODY[TEXT])")
        assert typ == "OK"
        assert client.fetch("1", "(FLAGS)")[1][0].count(b"\\Seen") == 1
    finally:
        client.logout()


def test_copy_move_and_expunge_with_uidplus(server: Server, account: Account) -> None:
    for _ in range(3):
        account.deliver(MESSAGE)
    client = imaps(server, account)
    try:
        client.select("INBOX")
        typ, _ = client.uid("COPY", "1:2", "Archive")
        assert typ == "OK"
        code = client.response("COPYUID")[1][0]
        assert re.fullmatch(rb"\d+ 1:2 1:2", code), code
        typ, data = client.uid("MOVE", "3", "Trash")
        assert typ == "OK"
        assert re.fullmatch(rb"\d+ 3 1", client.response("COPYUID")[1][0])
        assert client.response("EXPUNGE")[1] == [b"3"]  # MOVE announces the moved message gone
        client.store("1", "+FLAGS", "(\\Deleted)")
        typ, data = client.expunge()
        assert typ == "OK" and data == [b"1"]
        assert client.status("INBOX", "(MESSAGES)")[1][0].endswith(b"(MESSAGES 1)")
        assert client.status("Archive", "(MESSAGES)")[1][0].endswith(b"(MESSAGES 2)")
        assert client.status("Trash", "(MESSAGES)")[1][0].endswith(b"(MESSAGES 1)")
    finally:
        client.logout()


def test_create_rename_delete_hierarchy(server: Server, account: Account) -> None:
    client = imaps(server, account)
    try:
        assert client.create("Projects/2024/Q1")[0] == "OK"
        assert client.rename("Projects", "Work")[0] == "OK"
        names = b"\n".join(client.list('""', "Work/*")[1])
        assert b'"Work/2024"' in names or b" Work/2024" in names
        assert b"Work/2024/Q1" in names
        assert client.delete("Work/2024/Q1")[0] == "OK"
        assert client.select("Nope")[0] == "NO"
    finally:
        client.logout()


def test_rename_inbox_moves_its_messages(server: Server, account: Account) -> None:
    account.deliver(MESSAGE)
    client = imaps(server, account)
    try:
        assert client.rename("INBOX", "Old")[0] == "OK"
        assert client.status("Old", "(MESSAGES)")[1][0].endswith(b"(MESSAGES 1)")
        assert client.status("INBOX", "(MESSAGES)")[1][0].endswith(b"(MESSAGES 0)")
    finally:
        client.logout()


def test_idle_sees_a_delivered_message(server: Server, account: Account) -> None:
    client = IMAPClient(server.host, server.tls_port, ssl=True, ssl_context=unverified(),
                        timeout=30)
    try:
        client.login(account.address, PASSWORD)
        client.select_folder("INBOX")
        client.idle()
        timer = threading.Timer(0.3, account.deliver, args=(MESSAGE,))
        timer.start()
        responses = client.idle_check(timeout=10)
        client.idle_done()
        timer.join()
        assert (1, b"EXISTS") in responses
    finally:
        client.logout()


@contextmanager
def _watching(server: Server, account: Account, watcher_port: int | None = None
              ) -> Iterator[tuple[IMAPClient, imaplib.IMAP4_SSL]]:
    """Two sessions of ``account`` on INBOX: a watcher in IDLE (on ``watcher_port``: another
    imap process's; default the server's) and an actor; both logged out at the end."""
    watcher = IMAPClient(server.host, watcher_port or server.tls_port, ssl=True,
                         ssl_context=unverified(), timeout=30)
    actor = imaps(server, account)
    try:
        watcher.login(account.address, PASSWORD)
        watcher.select_folder("INBOX")
        actor.select("INBOX")
        watcher.idle()
        yield watcher, actor
    finally:
        actor.logout()
        watcher.logout()


def _idle_until(watcher: IMAPClient, wanted: tuple[int, bytes]) -> list:
    """The IDLE responses the watcher gets until ``wanted`` is among them (10 s at most);
    IDLE ended."""
    deadline = time.monotonic() + 10
    seen: list = []
    while time.monotonic() < deadline and wanted not in seen:
        seen += watcher.idle_check(timeout=2)
    watcher.idle_done()
    return seen


def test_two_sessions_see_each_others_changes(server: Server, account: Account) -> None:
    account.deliver(MESSAGE)
    account.deliver(MESSAGE)
    with _watching(server, account) as (watcher, actor):
        actor.store("1", "+FLAGS", "(\\Flagged)")
        seen = watcher.idle_check(timeout=10)
        assert any(r[1] == b"FETCH" and b"\\Flagged" in r[2][r[2].index(b"FLAGS") + 1]
                   for r in seen if len(r) > 2), seen
        actor.store("2", "+FLAGS", "(\\Deleted)")
        actor.expunge()
        gone = _idle_until(watcher, (2, b"EXPUNGE"))
        assert (2, b"EXPUNGE") in gone


def test_an_append_and_an_expunge_reach_idle_in_the_same_process_once(
        server: Server, account: Account) -> None:
    """A session's APPEND and EXPUNGE wake another session of the same process (delivered
    by the publishing process itself, the Redis echo dropped); the acting session gets its
    own change once, in its command's reply, and nothing more at the next NOOP."""
    account.deliver(MESSAGE)
    with _watching(server, account) as (watcher, actor):
        actor.untagged_responses.clear()
        assert actor.append("INBOX", "", imaplib.Time2Internaldate(0), MESSAGE)[0] == "OK"
        assert actor.untagged_responses.pop("EXISTS", []) == [b"2"]
        seen = watcher.idle_check(timeout=10)
        assert (2, b"EXISTS") in seen, seen
        actor.store("1", "+FLAGS.SILENT", "(\\Deleted)")
        assert actor.expunge() == ("OK", [b"1"])  # imaplib returns the EXPUNGE responses
        gone = _idle_until(watcher, (1, b"EXPUNGE"))
        assert (1, b"EXPUNGE") in gone, gone
        actor.untagged_responses.clear()
        actor.noop()
        assert not {"EXISTS", "EXPUNGE", "FETCH"} & set(actor.untagged_responses)


def test_condstore_and_quota(server: Server, account: Account) -> None:
    account.deliver(MESSAGE)
    client = imaps(server, account)
    try:
        client.select("INBOX")
        typ, data = client.fetch("1", "(MODSEQ)")
        modseq = int(re.search(rb"MODSEQ \((\d+)\)", data[0]).group(1))
        client.store("1", "+FLAGS", "(\\Answered)")
        typ, data = client.fetch("1", f"(FLAGS) (CHANGEDSINCE {modseq})")
        assert b"\\Answered" in data[0]
        typ, data = client.store("1", f"(UNCHANGEDSINCE {modseq}) +FLAGS", "(\\Seen)")
        assert typ == "OK" and client.response("MODIFIED")[1] == [b"1"]
        assert b"\\Seen" not in client.fetch("1", "(FLAGS)")[1][0]
        typ, data = client.getquotaroot("INBOX")
        assert typ == "OK"
    finally:
        client.logout()


def _mbsync(tmp_path: Path, server: Server, account: Account, certs: Path) -> str:
    import subprocess

    maildir = tmp_path / "mail"
    maildir.mkdir(exist_ok=True)
    config = tmp_path / "mbsyncrc"
    config.write_text(
        f"IMAPAccount test\nHost 127.0.0.1\nPort {server.tls_port}\nUser {account.address}\n"
        f"Pass \"{PASSWORD}\"\nSSLType IMAPS\nCertificateFile {certs / 'cert.pem'}\n\n"
        "IMAPStore remote\nAccount test\n\n"
        f"MaildirStore local\nPath {maildir}/\nInbox {maildir}/INBOX\nSubFolders Verbatim\n\n"
        "Channel sync\nFar :remote:\nNear :local:\nPatterns INBOX Archive\nCreate Both\n"
        f"Expunge Both\nSyncState *\n")
    done = subprocess.run(["mbsync", "-c", str(config), "-a"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_mbsync_two_way_sync_converges(tmp_path: Path, server: Server, account: Account,
                                       certs: Path) -> None:
    for i in range(5):
        account.deliver(MESSAGE.replace(b"hello", b"hello %d" % i))
    _mbsync(tmp_path, server, account, certs)
    inbox = tmp_path / "mail" / "INBOX"
    files = sorted((inbox / "cur").iterdir()) + sorted((inbox / "new").iterdir())
    assert len(files) == 5
    # a local change: mark one message seen and flagged (Maildir info ":2,FS")
    first = files[0]
    base = first.name.split(":2,")[0]
    first.rename(inbox / "cur" / (base + ":2,FS"))
    _mbsync(tmp_path, server, account, certs)
    client = imaps(server, account)
    try:
        client.select("INBOX")
        assert len(client.search(None, "FLAGGED")[1][0].split()) == 1
        assert len(client.search(None, "SEEN")[1][0].split()) == 1
        client.store("2", "+FLAGS", "(\\Deleted)")
        client.expunge()
    finally:
        client.logout()
    account.deliver(MESSAGE)
    _mbsync(tmp_path, server, account, certs)
    files = list((inbox / "cur").iterdir()) + list((inbox / "new").iterdir())
    assert len(files) == 5  # one expunged on the server, one delivered


def test_search_header_works_regression_of_twisted_mail(server: Server,
                                                         account: Account) -> None:
    account.deliver(MESSAGE)
    client = imaps(server, account)
    try:
        client.select("INBOX")
        assert client.search(None, "HEADER", "Message-ID", "m1@example")[1] == [b"1"]
        assert client.search(None, "HEADER", "X-Custom", "\"\"")[1] == [b"1"]
        assert client.search(None, "HEADER", "X-Missing", "\"\"")[1] == [b""]
    finally:
        client.logout()


def test_an_append_and_an_expunge_reach_idle_in_another_imap_process(
        server: Server, account: Account, database_url: str, redis_url: str,
        certs: Path) -> None:
    """The publishing process delivers its own events locally and drops their echo by
    origin: another process (POSTROOM_REUSE_PORT runs several) must still get each one."""
    account.deliver(MESSAGE)
    other, _, other_tls = start_imap(database_url, redis_url, certs, server.prefix)
    try:
        with _watching(server, account, other_tls) as (watcher, actor):
            assert actor.append("INBOX", "", imaplib.Time2Internaldate(0), MESSAGE)[0] == "OK"
            seen = watcher.idle_check(timeout=10)
            assert (2, b"EXISTS") in seen, seen
            actor.store("1", "+FLAGS.SILENT", "(\\Deleted)")
            actor.expunge()
            gone = _idle_until(watcher, (1, b"EXPUNGE"))
            assert (1, b"EXPUNGE") in gone, gone
    finally:
        other.close()


def test_flag_change_reaches_idle_in_another_imap_process(
        server: Server, account: Account, database_url: str, redis_url: str,
        certs: Path) -> None:
    account.deliver(MESSAGE)
    other, _, other_tls = start_imap(database_url, redis_url, certs, server.prefix)
    try:
        with _watching(server, account, other_tls) as (watcher, actor):
            actor.store("1", "+FLAGS", "(\\Flagged)")
            seen = watcher.idle_check(timeout=5)
            watcher.idle_done()
            assert any(r[1] == b"FETCH" for r in seen if len(r) > 1), seen
    finally:
        other.close()
