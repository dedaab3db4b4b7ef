"""The recent mark (RFC 3501 2.3.2) moves by compare-and-set: each UID is taken by one session.

SELECT runs without a transaction (``Database.run_read``), so the mark cannot be
held locked between reading and moving it: a session that read a mark another
one has moved since must not take those UIDs again.
"""

from __future__ import annotations

from sqlalchemy import text

from postroom.store import entries
from postroom.store.db import Database
from tests.integration import test_imap_service as base
from tests.integration.test_imap_service import MESSAGE, Account

certs, server, domain, account = base.certs, base.server, base.domain, base.account


def test_a_stale_mark_takes_only_what_no_one_took(account: Account, database: Database) -> None:
    for _ in range(5):
        account.deliver(MESSAGE)

    def work(s: object) -> tuple[int, int, int, int]:
        box = s.execute(text("SELECT id FROM mailboxes "  # type: ignore[attr-defined]
                             "WHERE user_id = :u AND name = 'INBOX'"),
                        {"u": account.user_id}).scalar_one()
        s.execute(text("UPDATE mailboxes SET recent_uid = 1 WHERE id = :m"),  # type: ignore[attr-defined]
                  {"m": box})
        first = entries.take_recent_uids(s, box, 4, seen=1)  # takes 1..3
        stale = entries.take_recent_uids(s, box, 6, seen=1)  # read 1, but 1..3 are taken: 4..5
        past = entries.take_recent_uids(s, box, 5)  # nothing left below 5
        mark = s.execute(text("SELECT recent_uid FROM mailboxes "  # type: ignore[attr-defined]
                              "WHERE id = :m"), {"m": box}).scalar_one()
        return first, stale, past, int(mark)

    assert database.run_sync(work) == (1, 4, 6, 6)


def test_select_without_a_transaction_takes_recent_once(account: Account,
                                                        database: Database) -> None:
    for _ in range(3):
        account.deliver(MESSAGE)
    states = [database.run_read_sync(entries.select, account.user_id, "INBOX", None, True)
              for _ in range(2)]
    assert states[0].recent_from == 1 and states[0].uids.tolist() == [1, 2, 3]
    assert states[1].recent_from == 4  # the second SELECT finds them taken
