"""The one-statement paths: spool ids by RETURNING, RCPT status, account resolution."""

from __future__ import annotations

import functools

import pytest

from postroom.auth.passwords import hash_password
from postroom.store import aliases, domains, spool, users

BODY = b"From: a@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"
cheap = functools.partial(hash_password, ln=4)


@pytest.fixture
def example(database, clean_db):
    database.run_sync(domains.add_domain, "example.test")
    database.run_sync(users.add_user, "alice@example.test", "a long password 1", hash_fn=cheap)
    return database


def status(db, local, domain):
    return db.run_sync(aliases.recipient_status, local, domain)


def test_create_spool_ids_returns_the_spooled_recipient_ids(example):
    queue_id, ids = example.run_sync(
        spool.create_spool_ids, kind="inbound", mail_from="a@remote.test",
        recipients=[("a@example.test", "deliver", None, None),
                    ("b@example.test", "deliver", None, None),
                    ("a@example.test", "deliver", None, None)], message=BODY)
    info = example.run_sync(spool.get_spool, queue_id)
    assert ids == [r.id for r in info.recipients]
    assert [r.address for r in info.recipients] == ["a@example.test", "b@example.test"]


def test_recipient_status_of_an_account_is_ok(example):
    assert status(example, "Alice", "EXAMPLE.test") == ("ok", "alice@example.test")


def test_recipient_status_of_a_foreign_domain_is_relay(example):
    assert status(example, "alice", "remote.test") == ("relay", None)


def test_recipient_status_of_a_missing_account_is_unknown(example):
    assert status(example, "ghost", "example.test") == ("unknown", "ghost@example.test")


def test_recipient_status_of_an_invalid_local_address_is_unknown(example):
    assert status(example, "a b", "example.test")[0] == "unknown"


def test_recipient_status_follows_plus_addresses_and_aliases(example):
    example.run_sync(aliases.add_alias, "team@example.test", "alice@example.test")
    assert status(example, "alice+x", "example.test") == ("ok", "alice+x@example.test")
    assert status(example, "team", "example.test") == ("ok", "team@example.test")


def test_recipient_status_of_an_alias_to_nobody_is_unknown(example):
    example.run_sync(aliases.add_alias, "gone@example.test", "ghost@example.test")
    assert status(example, "gone", "example.test") == ("unknown", "gone@example.test")


def test_alias_over_an_account_wins_over_the_account(example):
    example.run_sync(aliases.add_alias, "alice@example.test", "carol@remote.test")
    found = example.run_sync(aliases.resolve_address, "alice@example.test")
    assert [(t.address, t.user_id) for t in found] == [("carol@remote.test", None)]


def test_inactive_account_does_not_resolve(example):
    example.run_sync(users.set_user_active, "alice@example.test", False)
    assert example.run_sync(aliases.resolve_address, "alice@example.test") == []
