"""Moving in from a real Dovecot without users noticing (issue 24, "What it must show").

Debian's Dovecot is started on loopback with a passwd-file holding one account
per password scheme and Maildirs owned by a vmail-like user (files 0600).
Mail arrives through Dovecot itself (``doveadm save``, a file dropped into
new/ as Postfix would, IMAP APPEND); imaplib sets flags and keywords and
expunges one message (a gap in the UIDs), and the UIDVALIDITY, UIDs and POP3
UIDLs Dovecot answers are recorded. Dovecot is stopped, ``postroom import
dovecot`` runs, and real Postroom imap and pop3 processes must answer the
same: every user logs in with the old password (and the stored hash is ours
afterwards), UIDVALIDITY, UIDNEXT, UIDs, flags, keywords and UIDLs unchanged.
Then the cutover's second run: a message that reached Dovecot meanwhile is
added with the UID Dovecot gave it, and one deleted here meanwhile stays deleted.
"""

from __future__ import annotations

import email
import imaplib
import poplib
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from postroom.store import domains
from postroom.store.models import User
from tests.support.dovecot import Dovecot, hash_password, make_root
from tests.support.procs import base_env
from tests.support.suite import Running, Suite

pytestmark = pytest.mark.slow

DOMAIN = "moving.example.test"
SCHEMES = ["SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "ARGON2I", "ARGON2ID", "SSHA512",
           "PLAIN-MD5", "MD5-CRYPT"]
ALICE = f"alice@{DOMAIN}"  # the one with mail (SHA512-CRYPT)
DRAFTS_DE = "Entw&APw-rfe"  # "Entwürfe" in modified UTF-7
MAILBOXES = ("INBOX", "Lists.python", DRAFTS_DE)


def address_of(scheme: str) -> str:
    return ALICE if scheme == "SHA512-CRYPT" else f"{scheme.lower()}@{DOMAIN}"


def password_of(scheme: str) -> str:
    return f"old-{scheme}-Passw0rd"


def message(n: int) -> bytes:
    return (b"From: Bob <bob@remote.test>\r\nTo: alice@" + DOMAIN.encode() + b"\r\n"
            b"Subject: message %d\r\nMessage-ID: <m%d@remote.test>\r\n"
            b"Date: Mon, 7 Dec 2026 06:00:00 +0000\r\n\r\nBody of %d.\r\n" % (n, n, n))


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the suite's self-signed certificate
    return context


Mailbox = dict[str, object]  # uidvalidity, uidnext, messages: {message-id: (uid, flags)}


def _message_ids(client: imaplib.IMAP4) -> dict[str, tuple[int, frozenset[str]]]:
    typ, data = client.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    found = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        meta = item[0].decode()
        uid = int(re.search(r"UID (\d+)", meta).group(1))  # type: ignore[union-attr]
        flags = re.search(r"FLAGS \(([^)]*)\)", meta).group(1).split()  # type: ignore[union-attr]
        mid = email.message_from_bytes(item[1])["Message-ID"].strip()
        found[mid] = (uid, frozenset(f for f in flags if f != "\\Recent"))
    return found


def snapshot(client: imaplib.IMAP4, mailbox: str) -> Mailbox:
    typ, data = client.status(mailbox, "(UIDVALIDITY UIDNEXT MESSAGES HIGHESTMODSEQ)")
    assert typ == "OK", data
    status = data[0].decode()
    typ, _ = client.select(mailbox, readonly=True)
    assert typ == "OK"
    return {"uidvalidity": int(re.search(r"UIDVALIDITY (\d+)", status).group(1)),  # type: ignore[union-attr]
            "uidnext": int(re.search(r"UIDNEXT (\d+)", status).group(1)),  # type: ignore[union-attr]
            "highestmodseq": int(re.search(r"HIGHESTMODSEQ (\d+)", status).group(1)),  # type: ignore[union-attr]
            "messages": _message_ids(client)}


def uidls(pop: poplib.POP3) -> dict[str, str]:
    """Message-ID -> UIDL of every message of the maildrop."""
    found = {}
    for line in pop.uidl()[1]:
        number, uidl = line.decode().split()
        head = b"\r\n".join(pop.top(int(number), 0)[1])
        found[email.message_from_bytes(head)["Message-ID"].strip()] = uidl
    return found


def run_import(suite: Suite, dovecot: Dovecot) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "postroom.ops.cli", "import", "dovecot", str(dovecot.passwd)],
        env=base_env(suite.env()), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class Moved:
    def __init__(self, suite: Suite, dovecot: Dovecot) -> None:
        self.suite = suite
        self.dovecot = dovecot
        self.before: dict[str, Mailbox] = {}
        self.pop3_before: dict[str, str] = {}
        self.first_run = ""
        self.imap: Running | None = None
        self.pop3: Running | None = None

    def postroom_imap(self, address: str, password: str) -> imaplib.IMAP4_SSL:
        assert self.imap is not None
        client = imaplib.IMAP4_SSL("127.0.0.1", self.imap.tls_port, ssl_context=unverified(),
                                   timeout=30)
        client.login(address, password)
        return client

    def postroom_pop3(self, address: str, password: str) -> poplib.POP3_SSL:
        assert self.pop3 is not None
        pop = poplib.POP3_SSL("127.0.0.1", self.pop3.tls_port, context=unverified(), timeout=30)
        pop.user(address)
        pop.pass_(password)
        return pop


def fill_dovecot(dovecot: Dovecot) -> None:
    """Mail in three ways, flags and keywords set over IMAP, one message expunged."""
    password = password_of("SHA512-CRYPT")
    client = dovecot.imap(ALICE, password)  # the first login makes the Maildir
    client.logout()
    for n in (1, 2, 3):
        dovecot.save(ALICE, message(n))
    dovecot.drop(ALICE, "1796000000.M1P1.oldhost", message(4))  # seen on next SELECT
    client = dovecot.imap(ALICE, password)
    assert client.create("Lists.python")[0] == "OK"
    assert client.append("Lists.python", r"(\Seen $Label1 project-x)", None, message(10))[0] \
        == "OK"
    assert client.append("Lists.python", r"(\Flagged)", None, message(11))[0] == "OK"
    # a folder name outside ASCII: modified UTF-7 on the wire and in Dovecot's folder name
    assert client.create(DRAFTS_DE)[0] == "OK"
    assert client.append(DRAFTS_DE, r"(\Draft $Label2)", None, message(20))[0] == "OK"
    assert client.subscribe("Lists.python")[0] == "OK"  # and not DRAFTS_DE
    client.select("INBOX")
    # message 2 goes: the UIDs that stay have a gap, as real mailboxes do
    client.uid("STORE", "2", "+FLAGS.SILENT", r"(\Deleted)")
    client.expunge()
    client.uid("STORE", "1", "+FLAGS.SILENT", r"(\Seen \Answered $Forwarded Important)")
    client.uid("STORE", "3", "+FLAGS.SILENT", r"(\Flagged Important)")
    client.logout()


@pytest.fixture(scope="module")
def moved(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moved]:
    accounts = {address_of(s): hash_password(s, password_of(s)) for s in SCHEMES}
    dovecot = Dovecot(make_root(), accounts)
    try:
        with Suite(redis_url, tmp_path_factory.mktemp("dovecot")) as suite:
            state = Moved(suite, dovecot)
            dovecot.start()
            fill_dovecot(dovecot)
            client = dovecot.imap(ALICE, password_of("SHA512-CRYPT"))
            state.before = {name: snapshot(client, name) for name in MAILBOXES}
            client.logout()
            pop = poplib.POP3("127.0.0.1", dovecot.pop3_port, timeout=30)
            pop.user(ALICE)
            pop.pass_(password_of("SHA512-CRYPT"))
            state.pop3_before = uidls(pop)
            pop.quit()
            dovecot.stop()
            suite.db.run_sync(domains.add_domain, DOMAIN)
            state.first_run = run_import(suite, dovecot)
            state.imap, state.pop3 = suite.start_all("imap", "pop3")
            yield state
    finally:
        dovecot.remove()


def test_the_files_were_dovecots_and_private(moved: Moved) -> None:
    """What the import read was Dovecot's own: uidlist, keywords, vmail-owned 0600 files."""
    root = moved.dovecot.maildir(ALICE)
    assert (root / "dovecot-uidlist").read_text().startswith("3 V")
    assert "project-x" in (root / ".Lists.python" / "dovecot-keywords").read_text()
    assert (root / ("." + DRAFTS_DE) / "dovecot-uidlist").exists()
    files = list((root / "cur").iterdir())
    assert files and all(f.stat().st_mode & 0o777 == 0o600 and f.stat().st_uid != 0
                         for f in files)
    assert "users: 8 created" in moved.first_run, moved.first_run


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_user_logs_in_with_the_old_password_and_gets_our_hash(moved: Moved,
                                                                     scheme: str) -> None:
    address = address_of(scheme)

    def stored() -> str:
        return str(moved.suite.db.run_sync(
            lambda s: s.execute(select(User.password_hash).where(User.address == address))
            .scalar_one()))

    assert stored().startswith("{" + scheme + "}")
    with pytest.raises(imaplib.IMAP4.error):
        moved.postroom_imap(address, "not the password")
    client = moved.postroom_imap(address, password_of(scheme))
    client.logout()
    assert stored().startswith("$scrypt$"), "not rehashed to ours after the login"
    # and the new hash takes the same password, over POP3 too
    moved.postroom_pop3(address, password_of(scheme)).quit()


def test_uidvalidity_uids_flags_and_keywords_are_unchanged(moved: Moved) -> None:
    client = moved.postroom_imap(ALICE, password_of("SHA512-CRYPT"))
    try:
        for name, before in moved.before.items():
            after = snapshot(client, name.replace(".", "/"))
            assert after["uidvalidity"] == before["uidvalidity"], name
            assert after["messages"] == before["messages"], name
            assert after["uidnext"] == before["uidnext"], name
            assert isinstance(after["highestmodseq"], int)
            assert after["highestmodseq"] > before["highestmodseq"], name  # type: ignore[operator]
    finally:
        client.logout()
    inbox = moved.before["INBOX"]["messages"]
    assert isinstance(inbox, dict)
    assert "<m2@remote.test>" not in inbox and len(inbox) == 3  # the gap is kept
    assert "Important" in inbox["<m1@remote.test>"][1]
    assert "$Forwarded" in inbox["<m1@remote.test>"][1]
    assert moved.before[DRAFTS_DE]["messages"] == {
        "<m20@remote.test>": (1, frozenset({"\\Draft", "$Label2"}))}


def test_condstore_clients_see_changes_made_after_the_move(moved: Moved) -> None:
    """A client that cached Dovecot's HIGHESTMODSEQ asks what changed since: it gets this."""
    known = moved.before["Lists.python"]["highestmodseq"]
    assert isinstance(known, int)
    client = moved.postroom_imap(ALICE, password_of("SHA512-CRYPT"))
    try:
        client.select("Lists/python")
        typ, data = client.uid("FETCH", "1:*", f"(FLAGS) (CHANGEDSINCE {known})")
        assert typ == "OK" and data == [None], data  # nothing changed since the move
        uid = moved.before["Lists.python"]["messages"]["<m11@remote.test>"][0]  # type: ignore[index]
        client.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Seen)")
        typ, data = client.uid("FETCH", "1:*", f"(FLAGS) (CHANGEDSINCE {known})")
        assert typ == "OK" and len([d for d in data if d]) == 1, data
        assert b"UID %d" % uid in data[0] and b"\\Seen" in data[0], data  # type: ignore[operator]
        client.uid("STORE", str(uid), "-FLAGS.SILENT", r"(\Seen)")  # as it was, for the next test
    finally:
        client.logout()


def test_subscriptions_are_kept(moved: Moved) -> None:
    client = moved.postroom_imap(ALICE, password_of("SHA512-CRYPT"))
    try:
        typ, data = client.lsub('""', "*")
        assert typ == "OK", data
        listed = {line.decode().rsplit(" ", 1)[-1].strip('"') for line in data if line}
    finally:
        client.logout()
    assert "Lists/python" in listed and "INBOX" in listed
    assert DRAFTS_DE not in listed


def test_pop3_uidls_are_unchanged(moved: Moved) -> None:
    pop = moved.postroom_pop3(ALICE, password_of("SHA512-CRYPT"))
    try:
        assert uidls(pop) == moved.pop3_before
    finally:
        pop.quit()
    # Dovecot's default %08Xu%08Xv, so not Postroom's own <uidvalidity>.<uid>
    assert all(re.fullmatch(r"[0-9a-f]{16}", u) for u in moved.pop3_before.values())


def test_a_second_run_adds_only_what_arrived_since(moved: Moved) -> None:
    dovecot = moved.dovecot
    # here, the user deletes a message between the two runs: it must not come back
    client = moved.postroom_imap(ALICE, password_of("SHA512-CRYPT"))
    client.select("INBOX")
    gone_uid = moved.before["INBOX"]["messages"]["<m3@remote.test>"][0]  # type: ignore[index]
    client.uid("STORE", str(gone_uid), "+FLAGS.SILENT", r"(\Deleted)")
    client.expunge()
    client.logout()
    # there, mail still arrives until the MX moves
    dovecot.start()
    try:
        dovecot.save(ALICE, message(5))
        client = dovecot.imap(ALICE, password_of("SHA512-CRYPT"))
        late = snapshot(client, "INBOX")
        client.logout()
    finally:
        dovecot.stop()
    new_uid = late["messages"]["<m5@remote.test>"][0]  # type: ignore[index]
    output = run_import(moved.suite, dovecot)
    assert "messages: 1 imported" in output, output
    client = moved.postroom_imap(ALICE, password_of("SHA512-CRYPT"))
    try:
        after = snapshot(client, "INBOX")
        listing = after["messages"]
        assert isinstance(listing, dict)
        assert listing["<m5@remote.test>"][0] == new_uid
        assert "<m3@remote.test>" not in listing
        assert after["uidvalidity"] == late["uidvalidity"]
        assert after["uidnext"] == late["uidnext"]
        box = snapshot(client, "Lists/python")
        assert box["messages"] == moved.before["Lists.python"]["messages"]
    finally:
        client.logout()
    # and a third run finds nothing at all
    assert "messages: 0 imported" in run_import(moved.suite, dovecot)
