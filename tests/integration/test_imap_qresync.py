"""QRESYNC (RFC 7162) against the live imap service: a device offline while another expunges.

Exact replies are read off a raw TLS socket; imapclient checks ENABLE. The
store's memory of expunges (postroom.store.vanished) is checked directly,
also for POP3's DELE and for a client resyncing from before the retention floor.
"""

from __future__ import annotations

import re
import socket

from imapclient import IMAPClient
from sqlalchemy import text

from postroom.store import maildrop, vanished
from postroom.store.db import Database
from tests.integration import test_imap_service as base
from tests.integration.test_imap_service import (
    MESSAGE,
    PASSWORD,
    Account,
    Server,
    imaps,
    unverified,
)

certs, server, domain, account = base.certs, base.server, base.domain, base.account


class Raw:
    """A line-level IMAP client: each command's reply exactly as the server wrote it."""

    def __init__(self, server: Server, account: Account) -> None:
        sock = socket.create_connection((server.host, server.tls_port), timeout=30)
        self.sock = unverified().wrap_socket(sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        self.file.readline()  # greeting
        self.n = 0
        assert b"OK" in self.cmd(f'LOGIN "{account.address}" "{PASSWORD}"')[-1]

    def cmd(self, line: str) -> list[bytes]:
        self.n += 1
        tag = f"t{self.n}".encode()
        self.sock.sendall(tag + b" " + line.encode() + b"\r\n")
        out = []
        while True:
            got = self.file.readline()
            assert got, "connection closed"
            out.append(got)
            if got.startswith(tag + b" "):
                return out

    def close(self) -> None:
        self.cmd("LOGOUT")
        self.file.close()
        self.sock.close()


def _value(lines: list[bytes], name: str) -> int:
    for line in lines:
        found = re.search(rb"\[%s (\d+)\]" % name.encode(), line)
        if found:
            return int(found.group(1))
    raise AssertionError(f"no {name} in {lines}")


def _modseq(client: Raw, seq: int) -> int:
    reply = client.cmd(f"FETCH {seq} (MODSEQ)")
    return int(re.search(rb"MODSEQ \((\d+)\)", reply[0]).group(1))  # type: ignore[union-attr]


def test_offline_device_resyncs_with_vanished_earlier_and_changed_flags(
        server: Server, account: Account) -> None:
    for _ in range(6):
        account.deliver(MESSAGE)
    phone = Raw(server, account)
    assert phone.cmd("ENABLE QRESYNC") == [b"* ENABLED QRESYNC\r\n", b"t2 OK ENABLE completed\r\n"]
    first = phone.cmd("SELECT INBOX")
    uidvalidity, known = _value(first, "UIDVALIDITY"), _value(first, "HIGHESTMODSEQ")
    phone.close()  # the phone goes offline

    laptop, watcher = Raw(server, account), Raw(server, account)
    try:
        watcher.cmd("ENABLE QRESYNC")
        watcher.cmd("SELECT INBOX")
        laptop.cmd("SELECT INBOX")
        laptop.cmd("STORE 2 +FLAGS.SILENT (\\Seen)")
        laptop.cmd("STORE 6 +FLAGS.SILENT (\\Flagged)")
        laptop.cmd("STORE 3:4 +FLAGS.SILENT (\\Deleted)")
        # a client without QRESYNC is told EXPUNGE, highest number first
        assert laptop.cmd("EXPUNGE") == [b"* 4 EXPUNGE\r\n", b"* 3 EXPUNGE\r\n",
                                         b"t6 OK EXPUNGE completed\r\n"]
        seen_at, flagged_at = _modseq(laptop, 2), _modseq(laptop, 4)
        # one with QRESYNC enabled gets VANISHED instead (RFC 7162 3.2.10)
        noop = watcher.cmd("NOOP")
        assert noop[0] == b"* VANISHED 3:4\r\n"
        assert b"EXPUNGE" not in b"".join(noop)
    finally:
        laptop.close()
        watcher.close()

    phone = Raw(server, account)
    try:
        phone.cmd("ENABLE QRESYNC")
        reply = phone.cmd(f"SELECT INBOX (QRESYNC ({uidvalidity} {known} 1:6))")
        highest = _value(reply, "HIGHESTMODSEQ")
        assert reply[-4:] == [
            b"* VANISHED (EARLIER) 3:4\r\n",
            b"* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ (%d))\r\n" % seen_at,
            b"* 4 FETCH (UID 6 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % flagged_at,
            b"t3 OK [READ-WRITE] SELECT completed\r\n"], reply
        assert b"* 4 EXISTS\r\n" in reply
        # known UIDs limit the answer (RFC 7162 3.2.5): only 4 and 6 asked about
        reply = phone.cmd(f"SELECT INBOX (QRESYNC ({uidvalidity} {known} 4,6))")
        assert reply[0] == b"* OK [CLOSED] previous mailbox closed\r\n"
        assert reply[-3:] == [
            b"* VANISHED (EARLIER) 4\r\n",
            b"* 4 FETCH (UID 6 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % flagged_at,
            b"t4 OK [READ-WRITE] SELECT completed\r\n"]
        # the RFC 7162 3.2.6 form, after the SELECT
        assert phone.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {known} VANISHED)") == [
            b"* VANISHED (EARLIER) 3:4\r\n",
            b"* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ (%d))\r\n" % seen_at,
            b"* 4 FETCH (UID 6 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % flagged_at,
            b"t5 OK FETCH completed\r\n"]
        # nothing vanished since the newest modseq
        assert phone.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {highest} VANISHED)") == [
            b"t6 OK FETCH completed\r\n"]
        # a different UIDVALIDITY: a plain SELECT, no VANISHED
        reply = phone.cmd(f"SELECT INBOX (QRESYNC ({uidvalidity + 1} {known}))")
        assert not any(b"VANISHED" in line or b"FETCH" in line for line in reply)
        assert phone.cmd("FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)")[-1].startswith(b"t8 BAD")
        assert phone.cmd("UID FETCH 1 (FLAGS) (VANISHED)")[-1].startswith(b"t9 BAD")
    finally:
        phone.close()


def test_qresync_parameter_without_enable_is_bad_and_imapclient_enables_it(
        server: Server, account: Account) -> None:
    account.deliver(MESSAGE)
    raw = Raw(server, account)
    try:
        assert raw.cmd("SELECT INBOX (QRESYNC (1 1))")[-1].startswith(b"t2 BAD")
        assert raw.cmd("NOOP")[-1] == b"t3 OK NOOP completed\r\n"
    finally:
        raw.close()
    client = IMAPClient(server.host, server.tls_port, ssl=True, ssl_context=unverified())
    try:
        client.login(account.address, PASSWORD)
        assert b"QRESYNC" in client.capabilities()
        assert client.enable("QRESYNC") == [b"QRESYNC"]
        assert client.select_folder("INBOX")[b"EXISTS"] == 1
    finally:
        client.logout()


def test_pop3_deletes_are_remembered_and_old_modseqs_get_the_superset(
        account: Account, database: Database) -> None:
    for _ in range(5):
        account.deliver(MESSAGE)
    client = imaps(account.server, account)
    try:
        client.select("INBOX")
        client.store("2", "+FLAGS.SILENT", "(\\Deleted)")
        client.expunge()
    finally:
        client.logout()

    def work(s: object) -> tuple[list[tuple[int, int]], list[tuple[int, int]],
                                 list[tuple[int, int]]]:
        box = s.execute(text("SELECT id, highestmodseq FROM mailboxes "  # type: ignore[attr-defined]
                             "WHERE user_id = :u AND name = 'INBOX'"),
                        {"u": account.user_id}).one()
        before = int(box[1])
        maildrop.expunge_uids(s, box[0], [4])  # type: ignore[arg-type]
        exact = vanished.vanished(s, box[0], before, None)  # type: ignore[arg-type]
        # as if the older entries had passed the retention: exact no more, never fewer
        s.execute(text("UPDATE mailboxes SET vanished_floor = :f "  # type: ignore[attr-defined]
                       "WHERE id = :m"), {"f": before, "m": box[0]})
        superset = vanished.vanished(s, box[0], 1, None)  # type: ignore[arg-type]
        within = vanished.vanished(s, box[0], 1, [(3, 9)])  # type: ignore[arg-type]
        return exact, superset, within

    exact, superset, within = database.run_sync(work)
    assert exact == [(4, 4)]
    assert superset == [(2, 2), (4, 4)]
    assert within == [(4, 4)]


def test_entries_past_the_retention_are_pruned_and_raise_the_floor(
        account: Account, database: Database) -> None:
    for _ in range(4):
        account.deliver(MESSAGE)

    def work(s: object) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
        box = s.execute(text("SELECT id FROM mailboxes "  # type: ignore[attr-defined]
                             "WHERE user_id = :u AND name = 'INBOX'"),
                        {"u": account.user_id}).scalar_one()
        _, first = maildrop.expunge_uids(s, box, [1])  # type: ignore[arg-type]
        s.execute(text("UPDATE expunged_entries SET expunged_at = now() - "  # type: ignore[attr-defined]
                       "interval '91 days' WHERE mailbox_id = :m"), {"m": box})
        maildrop.expunge_uids(s, box, [3])  # type: ignore[arg-type]
        floor = s.execute(text("SELECT vanished_floor FROM mailboxes "  # type: ignore[attr-defined]
                               "WHERE id = :m"), {"m": box}).scalar_one()
        left = [int(u) for u in s.execute(text(  # type: ignore[attr-defined]
            "SELECT uid FROM expunged_entries WHERE mailbox_id = :m"), {"m": box}).scalars()]
        assert left == [3] and floor == first
        return first, vanished.vanished(s, box, first, None), vanished.vanished(  # type: ignore[arg-type]
            s, box, first - 1, None)  # type: ignore[arg-type]

    _, exact, below = database.run_sync(work)
    assert exact == [(3, 3)]  # at the floor: still exact
    assert below == [(1, 1), (3, 3)]  # below it: every UID known that is gone


def test_qresync_session_keeps_recent_single_exists_and_searchres(
        server: Server, account: Account) -> None:
    """After ENABLE QRESYNC: `* n RECENT` with new mail, one EXISTS for an own APPEND,
    and VANISHED takes expunged messages out of `$` and of the session's \\Recent."""
    for _ in range(3):
        account.deliver(MESSAGE)
    phone = Raw(server, account)
    laptop = Raw(server, account)
    try:
        assert phone.cmd("ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC\r\n"
        selected = phone.cmd("SELECT INBOX")
        assert b"* 3 EXISTS\r\n" in selected and b"* 3 RECENT\r\n" in selected
        # new mail: EXISTS then RECENT, as without QRESYNC
        account.deliver(MESSAGE)
        assert phone.cmd("NOOP")[:2] == [b"* 4 EXISTS\r\n", b"* 4 RECENT\r\n"]
        # the session's own APPEND: one EXISTS (imap-ext's absorb), no second one at NOOP;
        # it is \Recent here, the first session told of it (RFC 3501 2.3.2)
        appended = phone.cmd(f"APPEND INBOX {{{len(MESSAGE)}+}}\r\n" + MESSAGE.decode())
        assert appended[:2] == [b"* 5 EXISTS\r\n", b"* 5 RECENT\r\n"]
        assert phone.cmd("NOOP") == [phone_tag(phone) + b" OK NOOP completed\r\n"]
        # $ holds 2 and 4; another device expunges 2
        assert phone.cmd("SEARCH RETURN (SAVE) 2,4")[-1].endswith(b"result saved\r\n")
        assert laptop.cmd("SELECT INBOX")[-1].endswith(b"SELECT completed\r\n")
        laptop.cmd("UID STORE 2 +FLAGS.SILENT (\\Deleted)")
        laptop.cmd("EXPUNGE")
        assert phone.cmd("NOOP")[0] == b"* VANISHED 2\r\n"
        assert phone.cmd("UID SEARCH $")[0] == b"* SEARCH 4\r\n"
        # UIDs 1, 3, 4 and its own APPEND (5)
        assert phone.cmd("SEARCH RECENT")[0] == b"* SEARCH 1 2 3 4\r\n"
        fetched = phone.cmd("UID FETCH $ (FLAGS)")
        assert fetched[0].startswith(b"* 3 FETCH (UID 4 FLAGS (\\Recent) MODSEQ (")
        # a new SELECT: nothing left to take, $ forgotten
        again = phone.cmd("SELECT INBOX")
        assert b"* 4 EXISTS\r\n" in again and b"* 0 RECENT\r\n" in again
        assert phone.cmd("UID SEARCH $")[0] == b"* SEARCH\r\n"
    finally:
        phone.close()
        laptop.close()


def phone_tag(client: Raw) -> bytes:
    return f"t{client.n}".encode()


def test_imap_expunge_remembers_prunes_and_drops_only_unshared_blobs(
        account: Account, database: Database) -> None:
    """EXPUNGE's one statement: entries out, UIDs remembered, blobs no entry uses deleted
    (a blob another mailbox entry still uses stays), old QRESYNC entries pruned."""
    from postroom.store import entries

    shared = MESSAGE + b"shared\r\n"
    account.deliver(shared)  # 1
    account.deliver(MESSAGE + b"own\r\n")  # 2
    account.deliver(shared)  # 3: the same blob as 1
    account.deliver(MESSAGE + b"kept\r\n")  # 4

    def work(s: object) -> tuple[list[int], bool, list[int], int, int]:
        box = s.execute(text("SELECT id FROM mailboxes "  # type: ignore[attr-defined]
                             "WHERE user_id = :u AND name = 'INBOX'"),
                        {"u": account.user_id}).scalar_one()
        s.execute(text("UPDATE mailbox_entries SET flags = ARRAY['\\Deleted'] "  # type: ignore[attr-defined]
                       "WHERE mailbox_id = :m AND uid IN (1, 2)"), {"m": box})
        blobs = dict(s.execute(text(  # type: ignore[attr-defined]
            "SELECT uid, message_id FROM mailbox_entries WHERE mailbox_id = :m"),
            {"m": box}).all())
        removed, _, after = entries.expunge(s, box, None)  # type: ignore[arg-type]
        left = sorted(int(i) for i in s.execute(text(  # type: ignore[attr-defined]
            "SELECT id FROM messages WHERE id = ANY(:ids)"),
            {"ids": [blobs[1], blobs[2]]}).scalars())
        remembered = sorted(int(u) for u in s.execute(text(  # type: ignore[attr-defined]
            "SELECT uid FROM expunged_entries WHERE mailbox_id = :m AND modseq = :ms"),
            {"m": box, "ms": after}).scalars())
        # age them past the retention: the next EXPUNGE (of the UID set) prunes them
        s.execute(text("UPDATE expunged_entries SET expunged_at = now() - "  # type: ignore[attr-defined]
                       "interval '91 days' WHERE mailbox_id = :m"), {"m": box})
        s.execute(text("UPDATE mailbox_entries SET flags = ARRAY['\\Deleted'] "  # type: ignore[attr-defined]
                       "WHERE mailbox_id = :m AND uid = 4"), {"m": box})
        entries.expunge(s, box, [4])  # type: ignore[arg-type]
        pruned = sorted(int(u) for u in s.execute(text(  # type: ignore[attr-defined]
            "SELECT uid FROM expunged_entries WHERE mailbox_id = :m"), {"m": box}).scalars())
        floor = s.execute(text("SELECT vanished_floor FROM mailboxes "  # type: ignore[attr-defined]
                               "WHERE id = :m"), {"m": box}).scalar_one()
        # the blob uid 3 shares with uid 1 stays; uid 2's own is gone
        return removed, left == [blobs[1]], [*remembered, -1, *pruned], int(floor), after

    removed, shared_blob_only, remembered, floor, after = database.run_sync(work)
    assert removed == [1, 2]
    assert shared_blob_only
    assert remembered == [1, 2, -1, 4]
    assert floor == after
