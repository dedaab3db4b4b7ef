"""SELECT of a cached mailbox is one statement that skips the entries while the row is unchanged.

Every mailbox, whatever its size, is kept in the process's SelectCache (decision 0038): the
statement compares the mailbox row with the cached key and aggregates the entries only when it
differs, so an unchanged mailbox is answered from the cache and any writer's change, in any
process, is loaded by that same statement.
"""

from __future__ import annotations

import imaplib
from array import array
from dataclasses import replace

from postroom.store import entries
from postroom.store.db import Database
from tests.integration import test_imap_service as base
from tests.integration.test_imap_service import MESSAGE, Account, Server, imaps

certs, server, domain, account = base.certs, base.server, base.domain, base.account


def _select(database: Database, account: Account, cache: entries.SelectCache
            ) -> entries.SelectState:
    return database.run_read_sync(entries.select, account.user_id, "INBOX", cache, False)


def test_an_unchanged_mailbox_is_answered_from_the_cached_entry(account: Account,
                                                                database: Database) -> None:
    for _ in range(3):
        account.deliver(MESSAGE)
    cache = entries.SelectCache()
    assert _select(database, account, cache).uids.tolist() == [1, 2, 3]
    held = cache.get(account.user_id, "INBOX")
    assert held is not None
    # the same key over other UIDs: only an answer that never read the entries returns them
    cache.put(account.user_id, "INBOX", replace(held, uids=array("I", [7, 8])))
    assert _select(database, account, cache).uids.tolist() == [7, 8]


def test_a_change_by_any_writer_is_loaded_by_the_same_select(account: Account,
                                                             database: Database) -> None:
    for _ in range(3):
        account.deliver(MESSAGE)
    cache = entries.SelectCache()
    first = _select(database, account, cache)
    assert first.first_unseen_uid == 1 and first.keywords == []
    account.deliver(MESSAGE)  # as the MDA does, in another process
    state = _select(database, account, cache)
    assert state.uids.tolist() == [1, 2, 3, 4] and state.uidnext == 5
    assert state.highestmodseq > first.highestmodseq
    held = cache.get(account.user_id, "INBOX")
    assert held is not None and held.uids.tolist() == [1, 2, 3, 4]


def test_an_empty_mailbox_is_cached_and_reloaded_when_mail_arrives(account: Account,
                                                                   database: Database) -> None:
    cache = entries.SelectCache()
    assert _select(database, account, cache).uids.tolist() == []
    assert _select(database, account, cache).uids.tolist() == []  # from the cache
    account.deliver(MESSAGE)
    assert _select(database, account, cache).uids.tolist() == [1]


def _untagged(client: imaplib.IMAP4, kind: str) -> list[bytes]:
    return [v for v in client.untagged_responses.pop(kind, []) if isinstance(v, bytes)]


def test_a_small_cached_mailbox_sees_flag_changes_keywords_and_expunges_by_others(
        server: Server, account: Account) -> None:
    for _ in range(4):
        account.deliver(MESSAGE)
    reader, writer = imaps(server, account), imaps(server, account)
    try:
        assert reader.select("INBOX") == ("OK", [b"4"])
        assert reader.select("INBOX") == ("OK", [b"4"])  # cached now
        assert _untagged(reader, "UNSEEN") == [b"1"]
        writer.select("INBOX")
        writer.store("1:2", "+FLAGS", "(\\Seen)")
        writer.store("3", "+FLAGS", "(Project)")
        reader.untagged_responses.clear()
        assert reader.select("INBOX") == ("OK", [b"4"])
        assert _untagged(reader, "UNSEEN") == [b"3"]
        assert any(b"Project" in line for line in _untagged(reader, "FLAGS"))
        writer.store("1", "+FLAGS.SILENT", "(\\Deleted)")
        writer.expunge()
        assert reader.select("INBOX") == ("OK", [b"3"])
        typ, data = reader.fetch("1", "(UID)")
        assert typ == "OK" and data == [b"1 (UID 2)"]
    finally:
        reader.logout()
        writer.logout()
