"""The imap service on a mailbox of thousands of messages: FETCH by range, SELECT, login cache."""

from __future__ import annotations

import imaplib
import re

import pytest
from sqlalchemy import text

from postroom.store.db import Database
from tests.integration import test_imap_service as base
from tests.integration.test_imap_service import MESSAGE, PASSWORD, Account, Server, imaps

# the service, domain and account fixtures of the main imap tests, reused by name
certs, server, domain, account = base.certs, base.server, base.domain, base.account

# more than one FLAGS_BATCH (10,000), so the response is written in batches with backpressure
COUNT = 12_345
FLAGS_OF = {0: "{}", 1: "{\\\\Seen}", 2: "{\\\\Seen,\\\\Flagged}", 3: "{\\\\Seen,$Work}"}


def fill(account: Account, count: int) -> None:
    """``count`` entries (UIDs 1..count) sharing one message; flags cycle through FLAGS_OF."""
    account.deliver(MESSAGE)

    def work(session: object) -> None:
        s = session  # a SQLAlchemy Session
        box, message_id = s.execute(text(  # type: ignore[attr-defined]
            "SELECT m.id, e.message_id FROM mailboxes m JOIN mailbox_entries e "
            "ON e.mailbox_id = m.id WHERE m.user_id = :u AND m.name = 'INBOX'"),
            {"u": account.user_id}).one()
        s.execute(text(  # type: ignore[attr-defined]
            "INSERT INTO mailbox_entries (mailbox_id, uid, message_id, flags, modseq, "
            "internaldate) SELECT :box, g, :msg, CAST((ARRAY[:f0, :f1, :f2, :f3])[g % 4 + 1] "
            "AS text[]), g, now() FROM generate_series(2, :n) g"),
            {"box": box, "msg": message_id, "n": count, "f0": FLAGS_OF[0], "f1": FLAGS_OF[1],
             "f2": FLAGS_OF[2], "f3": FLAGS_OF[3]})
        # old mail: no longer \Recent (a session took it), so FLAGS are the stored ones
        s.execute(text("UPDATE mailboxes SET uidnext = :n + 1, highestmodseq = :n + 1, "  # type: ignore[attr-defined]
                       "recent_uid = :n + 1 WHERE id = :box"), {"n": count, "box": box})

    account.database.run_sync(work)


def expected_flags(uid: int) -> str:
    if uid == 1:
        return ""
    return FLAGS_OF[uid % 4].strip("{}").replace("\\\\", "\\").replace(",", " ")


@pytest.fixture
def big(server: Server, account: Account, database: Database) -> Account:
    fill(account, COUNT)
    return account


def test_fetch_uid_flags_over_the_whole_mailbox_returns_every_message_in_order(
        server: Server, big: Account) -> None:
    client = imaps(server, big)
    try:
        typ, data = client.select("INBOX")
        assert typ == "OK" and data == [str(COUNT).encode()]
        typ, lines = client.fetch("1:*", "(UID FLAGS)")
        assert typ == "OK"
        assert len(lines) == COUNT
        for seq, line in enumerate(lines, start=1):
            found = re.fullmatch(rb"(\d+) \(UID (\d+) FLAGS \(([^)]*)\)\)", line)
            assert found is not None, line
            assert int(found[1]) == seq and int(found[2]) == seq
            assert found[3].decode() == expected_flags(seq)
    finally:
        client.logout()


def test_fetch_flags_of_a_sparse_set_returns_only_the_named_messages(
        server: Server, big: Account) -> None:
    client = imaps(server, big)
    try:
        client.select("INBOX")
        typ, lines = client.fetch("2,7,12000:12001", "(FLAGS)")
        assert typ == "OK"
        assert lines == [f"{n} (FLAGS ({expected_flags(n)}))".encode()
                         for n in (2, 7, 12000, 12001)]
    finally:
        client.logout()


def test_select_reports_first_unseen_and_keywords_of_a_big_mailbox(
        server: Server, big: Account) -> None:
    client = imaps(server, big)
    try:
        client.select("INBOX")
        # UID 1 (delivered) is unseen; every 4th from 4 on has no flags either
        assert client.untagged_responses.get("UNSEEN") == [b"1"]
        flags = client.untagged_responses["FLAGS"][0].decode()
        assert "$Work" in flags
    finally:
        client.logout()


def test_login_from_cache_still_refuses_a_wrong_password(server: Server,
                                                         account: Account) -> None:
    for _ in range(2):  # the second login is answered from the cache
        imaps(server, account).logout()
    client = imaps(server)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            client.login(account.address, PASSWORD + "x")
    finally:
        client.shutdown()
    imaps(server, account).logout()
