"""The imap service's round-trip savers against the real store (issue #10).

The SELECT cache (a big mailbox's UIDs kept per process, valid while the
mailbox row is unchanged) must see every other writer; a session's own
STORE/APPEND/EXPUNGE must move its view on without asking the store and
without hiding the change from other sessions; SEARCH HEADER's cheap
pre-tests must never drop a real match.
"""

from __future__ import annotations

import imaplib

from postroom.store.db import Database
from tests.integration import test_imap_large_mailbox as large
from tests.integration import test_imap_service as base
from tests.integration.test_imap_service import MESSAGE, Account, Server, imaps

# the service, domain and account fixtures of the main imap tests, reused by name
certs, server, domain, account = base.certs, base.server, base.domain, base.account

# a big mailbox (the SELECT cache keeps every size since decision 0038): the second SELECT
# is served from it
BIG = 3_000


def _untagged(client: imaplib.IMAP4, kind: str) -> list[bytes]:
    return [v for v in client.untagged_responses.pop(kind, []) if isinstance(v, bytes)]


def test_select_cache_sees_deliveries_flag_changes_and_expunges_by_others(
        server: Server, account: Account, database: Database) -> None:
    large.fill(account, BIG)
    reader, writer = imaps(server, account), imaps(server, account)
    try:
        assert reader.select("INBOX") == ("OK", [str(BIG).encode()])
        assert reader.select("INBOX") == ("OK", [str(BIG).encode()])  # cached now
        assert _untagged(reader, "UNSEEN") == [b"1"]
        account.deliver(MESSAGE)  # as the MDA does, in another process
        assert reader.select("INBOX") == ("OK", [str(BIG + 1).encode()])
        writer.select("INBOX")
        writer.store("1", "+FLAGS", "(\\Seen)")
        reader.untagged_responses.clear()
        reader.select("INBOX")
        assert _untagged(reader, "UNSEEN") == [b"4"]  # uid 4 is the next without \Seen
        writer.store("2", "+FLAGS.SILENT", "(\\Deleted)")
        writer.expunge()
        assert reader.select("INBOX") == ("OK", [str(BIG).encode()])
        typ, data = reader.fetch("2", "(UID)")
        assert typ == "OK" and data == [b"2 (UID 3)"]
        typ, data = reader.fetch(str(BIG), "(UID)")
        assert data == [f"{BIG} (UID {BIG + 1})".encode()]
    finally:
        reader.logout()
        writer.logout()


def test_own_changes_move_the_session_on_and_reach_the_others(server: Server,
                                                              account: Account) -> None:
    account.deliver(MESSAGE)
    actor, watcher = imaps(server, account), imaps(server, account)
    try:
        actor.select("INBOX")
        watcher.select("INBOX")
        typ, data = actor.store("1", "+FLAGS", "(\\Flagged)")
        assert typ == "OK" and b"\\Flagged" in data[0]
        actor.untagged_responses.clear()
        actor.noop()
        assert _untagged(actor, "FETCH") == []  # its own change is not echoed back
        watcher.untagged_responses.clear()
        watcher.noop()
        assert any(b"\\Flagged" in line for line in _untagged(watcher, "FETCH"))

        actor.untagged_responses.clear()
        typ, data = actor.append("INBOX", "", imaplib.Time2Internaldate(0), MESSAGE)
        assert typ == "OK" and b"APPENDUID" in data[0]
        assert _untagged(actor, "EXISTS") == [b"2"]  # announced before the tagged OK
        actor.noop()
        assert _untagged(actor, "EXISTS") == []
        watcher.noop()
        assert _untagged(watcher, "EXISTS") == [b"2"]

        actor.store("2", "+FLAGS.SILENT", "(\\Deleted)")
        typ, data = actor.expunge()  # imaplib hands back the EXPUNGE responses
        assert typ == "OK" and data == [b"2"]
        actor.noop()
        assert _untagged(actor, "EXPUNGE") == []
        watcher.untagged_responses.clear()
        watcher.noop()
        assert _untagged(watcher, "EXPUNGE") == [b"2"]
        typ, data = actor.fetch("1:*", "(UID)")
        assert data == [b"1 (UID 1)"]
    finally:
        actor.logout()
        watcher.logout()


HEADERS = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\n"
           b"X-Tracker: Alpha-0042 beta\r\n"
           b"X-Folded: first\r\n second-PART\r\n"
           b"\r\n"
           b"X-Tracker: body-only-7777\r\n")


def test_search_header_pre_tests_keep_every_real_match(server: Server,
                                                       account: Account) -> None:
    account.deliver(HEADERS)
    account.deliver(MESSAGE)
    client = imaps(server, account)
    try:
        client.select("INBOX")
        cases = [
            (("X-Tracker", "alpha-0042"), b"1"),  # a case-proof run, then case folded
            (("x-tracker", "ALPHA"), b"1"),  # letters only: no raw-byte test
            (("X-Tracker", "\"0042 beta\""), b"1"),
            (("X-Tracker", "body-only-7777"), b""),  # in the body, not the header
            (("X-Folded", "second-part"), b"1"),  # on a continuation line
            (("X-Tracker", "\"\""), b"1"),
            (("X-Nowhere", "\"\""), b""),
            (("X-Custom", "MARKER-42"), b"2"),
        ]
        for (name, value), expected in cases:
            typ, data = client.search(None, "HEADER", name, value)
            assert typ == "OK" and data == [expected], (name, value, data)
    finally:
        client.logout()
