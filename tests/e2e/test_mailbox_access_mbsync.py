"""mbsync (isync) two-way sync against a real imap process: 1,000 flagged messages, then changes.

One scenario, in steps that each assert both sides: the first run pulls every
message with its flags; then the Maildir and the server both change (flags set
and cleared, a local deletion, a server expunge, a server delivery, a local new
message) and the second run converges; a third run finds nothing to do.
"""

from __future__ import annotations

import re
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient

from tests.support.suite import PASSWORD, Running, Suite

pytestmark = pytest.mark.slow

ADDRESS = "sync@mbsync.example.test"
COUNT = 1000
# Maildir info letters <-> IMAP system flags (mbsync's mapping)
LETTERS = {"D": b"\\Draft", "F": b"\\Flagged", "R": b"\\Answered", "S": b"\\Seen"}


def message(n: int) -> bytes:
    return (b"From: sender@remote.test\r\nTo: " + ADDRESS.encode() + b"\r\n"
            b"Subject: sync %d\r\nMessage-ID: <sync%d@remote.test>\r\n"
            b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n\r\nBody of %d.\r\n" % (n, n, n))


def flags_for(n: int) -> list[str]:
    """A spread of flag combinations over the mailbox."""
    flags = []
    if n % 2 == 0:
        flags.append("\\Seen")
    if n % 5 == 0:
        flags.append("\\Flagged")
    if n % 7 == 0:
        flags.append("\\Answered")
    if n % 11 == 0:
        flags.append("\\Draft")
    return flags


class Sync:
    """An mbsync configuration for one account: Maildir under ``home``, IMAPS to ``imap``."""

    def __init__(self, suite: Suite, imap: Running, home: Path) -> None:
        self.imap = imap
        self.maildir = home / "mail"
        self.maildir.mkdir()
        self.config = home / "mbsyncrc"
        self.config.write_text(
            f"IMAPAccount test\nHost 127.0.0.1\nPort {imap.tls_port}\nUser {ADDRESS}\n"
            f'Pass "{PASSWORD}"\nSSLType IMAPS\nCertificateFile {suite.cert_file}\n\n'
            "IMAPStore remote\nAccount test\n\n"
            f"MaildirStore local\nPath {self.maildir}/\nInbox {self.maildir}/INBOX\n"
            "SubFolders Verbatim\n\n"
            "Channel sync\nFar :remote:\nNear :local:\nPatterns INBOX Archive\nCreate Both\n"
            "Expunge Both\nSyncState *\n")

    def run(self) -> str:
        started = time.monotonic()
        done = subprocess.run(["mbsync", "-V", "-c", str(self.config), "-a"],
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        print(f"\nmbsync run: {time.monotonic() - started:.1f} s")
        return done.stdout

    def local(self, folder: str = "INBOX") -> dict[int, tuple[Path, set[bytes]]]:
        """Maildir messages by their test number: (file, IMAP flags from the info suffix)."""
        result: dict[int, tuple[Path, set[bytes]]] = {}
        for sub in ("cur", "new"):
            for path in (self.maildir / folder / sub).iterdir():
                found = re.search(rb"^Subject: sync (\d+)\r?$", path.read_bytes(), re.M)
                assert found, path
                info = path.name.split(":2,")[1] if ":2," in path.name else ""
                number = int(found.group(1))
                assert number not in result, f"message {number} twice in the Maildir"
                result[number] = (path, {LETTERS[c] for c in info if c in LETTERS})
        return result

    def set_local_flags(self, path: Path, flags: set[bytes]) -> None:
        letters = "".join(sorted(k for k, v in LETTERS.items() if v in flags))
        path.rename(path.parent.parent / "cur" / (path.name.split(":2,")[0] + ":2," + letters))


def remote(client: IMAPClient, folder: str = "INBOX") -> dict[int, tuple[int, set[bytes]]]:
    """Server messages by their test number: (UID, system flags)."""
    client.select_folder(folder)
    result: dict[int, tuple[int, set[bytes]]] = {}
    wanted = ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]
    for uid, item in client.fetch(client.search("ALL"), wanted).items():
        header = item[b"BODY[HEADER.FIELDS (SUBJECT)]"]
        number = int(re.search(rb"sync (\d+)", header).group(1))  # type: ignore[union-attr]
        assert number not in result, f"message {number} twice on the server"
        result[number] = (uid, {f for f in item[b"FLAGS"] if f in LETTERS.values()})
    return result


def local_view(sync: Sync, folder: str = "INBOX") -> dict[int, set[bytes]]:
    return {n: flags for n, (_, flags) in sync.local(folder).items()}


def remote_view(client: IMAPClient, folder: str = "INBOX") -> dict[int, set[bytes]]:
    return {n: flags for n, (_, flags) in remote(client, folder).items()}


@pytest.fixture
def setup(suite: Suite, tmp_path: Path) -> Iterator[tuple[Suite, Sync, IMAPClient, int]]:
    user_id = suite.add_user(ADDRESS)
    started = time.monotonic()
    suite.store_many(user_id, [(message(n), flags_for(n)) for n in range(COUNT)])
    suite.store_many(user_id, [(message(n), ["\\Seen"]) for n in range(COUNT, COUNT + 3)],
                     mailbox="Archive")
    print(f"\nstored {COUNT + 3} messages: {time.monotonic() - started:.1f} s")
    imap = suite.start("imap")
    context = ssl.create_default_context(cafile=str(suite.cert_file))
    client = IMAPClient("127.0.0.1", imap.tls_port, ssl=True, ssl_context=context, timeout=60)
    client.login(ADDRESS, PASSWORD)
    try:
        yield suite, Sync(suite, imap, tmp_path), client, user_id
    finally:
        client.logout()


def test_mbsync_two_way_sync_of_a_thousand_messages_converges(
        setup: tuple[Suite, Sync, IMAPClient, int]) -> None:
    suite, sync, client, user_id = setup
    expected = {n: {f.encode() for f in flags_for(n)} for n in range(COUNT)}

    # first run: everything, with its flags, in both folders
    sync.run()
    assert local_view(sync) == expected
    assert local_view(sync, "Archive") == {n: {b"\\Seen"} for n in range(COUNT, COUNT + 3)}

    # changes on the Maildir side
    local = sync.local()
    sync.set_local_flags(local[1][0], local[1][1] | {b"\\Flagged"})   # set
    sync.set_local_flags(local[2][0], local[2][1] - {b"\\Seen"})      # clear
    local[3][0].unlink()                                               # delete
    new_local = message(COUNT + 10)
    (sync.maildir / "INBOX" / "new" / "1.local.test").write_bytes(new_local)
    # changes on the server side
    server = remote(client)
    client.add_flags([server[4][0]], [b"\\Flagged"])
    client.remove_flags([server[6][0]], [b"\\Seen"])
    client.delete_messages([server[8][0]])
    client.expunge()
    suite.store(user_id, message(COUNT + 20), flags=["\\Flagged"])
    suite.publish_change(user_id)

    expected[1] = expected[1] | {b"\\Flagged"}
    expected[2] = expected[2] - {b"\\Seen"}
    del expected[3]
    expected[4] = expected[4] | {b"\\Flagged"}
    expected[6] = expected[6] - {b"\\Seen"}
    del expected[8]
    expected[COUNT + 10] = set()
    expected[COUNT + 20] = {b"\\Flagged"}

    sync.run()
    assert local_view(sync) == expected
    assert remote_view(client) == expected
    assert remote_view(client, "Archive") == local_view(sync, "Archive")
    folders = {name for _, _, name in client.list_folders()}
    assert {"INBOX", "Archive"} <= folders
    assert sorted(p.name for p in sync.maildir.iterdir() if p.is_dir()) == ["Archive", "INBOX"]
    uploaded = remote(client)[COUNT + 10][0]
    stored = client.fetch([uploaded], ["BODY.PEEK[]"])[uploaded][b"BODY[]"]
    # mbsync adds its own tracking header (X-TUID) to what it uploads
    assert re.sub(rb"X-TUID: [^\r\n]*\r\n", b"", stored) == new_local

    # a third run has nothing left to do and changes nothing
    out = sync.run()
    assert local_view(sync) == expected and remote_view(client) == expected
    print(out[-600:])
