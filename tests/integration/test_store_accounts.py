"""Domains, users, aliases and DKIM keys in a real PostgreSQL."""

from __future__ import annotations

import functools
import re

import pytest
from sqlalchemy import select

from postroom.auth.passwords import hash_password, verify_password
from postroom.store import aliases, dkim, domains, mailboxes, users
from postroom.store.errors import AliasLoop, AlreadyExists, InUse, InvalidAddress, NotFound
from postroom.store.models import Domain, User

cheap = functools.partial(hash_password, ln=4)


@pytest.fixture
def db(database, clean_db):
    return database


@pytest.fixture
def example(db):
    db.run_sync(domains.add_domain, "Example.TEST")
    return db


def add_user(db, address, password="pw", **kw):
    return db.run_sync(users.add_user, address, password, hash_fn=cheap, **kw)


# --- domains

def test_domain_is_stored_lowercase(db):
    assert db.run_sync(domains.add_domain, "Example.TEST").name == "example.test"


def test_international_domain_is_stored_as_a_label(db):
    assert db.run_sync(domains.add_domain, "bücher.test").name == "xn--bcher-kva.test"


def test_duplicate_domain_is_rejected(example):
    with pytest.raises(AlreadyExists):
        example.run_sync(domains.add_domain, "example.test")


def test_invalid_domain_is_rejected(db):
    with pytest.raises(InvalidAddress):
        db.run_sync(domains.add_domain, "bad_domain..test")


def test_list_domains_counts_users_and_aliases(example):
    add_user(example, "a@example.test")
    example.run_sync(aliases.add_alias, "b@example.test", "a@example.test")
    [info] = example.run_sync(domains.list_domains)
    # b@, and postmaster@ and abuse@ that came with the first user
    assert (info.name, info.users, info.aliases) == ("example.test", 1, 3)


def test_remove_domain_with_users_is_refused(example):
    add_user(example, "a@example.test")
    with pytest.raises(InUse):
        example.run_sync(domains.remove_domain, "example.test")


def test_remove_empty_domain(example):
    example.run_sync(domains.remove_domain, "example.test")
    assert example.run_sync(domains.list_domains) == []


def test_remove_unknown_domain_is_not_found(db):
    with pytest.raises(NotFound):
        db.run_sync(domains.remove_domain, "nowhere.test")


def test_is_local_domain(example):
    assert example.run_sync(domains.is_local_domain, "EXAMPLE.test")
    assert not example.run_sync(domains.is_local_domain, "other.test")


# --- users

def test_add_user_normalises_address(example):
    info = add_user(example, "Alice@Example.Test")
    assert (info.address, info.localpart, info.domain) == ("alice@example.test", "alice",
                                                           "example.test")


def test_add_user_creates_special_use_mailboxes(example):
    info = add_user(example, "alice@example.test")
    boxes = example.run_sync(mailboxes.list_mailboxes, info.id)
    assert [(b.name, b.special_use) for b in boxes] == [
        ("INBOX", None), ("Archive", "\\Archive"), ("Drafts", "\\Drafts"), ("Junk", "\\Junk"),
        ("Sent", "\\Sent"), ("Trash", "\\Trash")]
    assert all(b.uidnext == 1 and b.uidvalidity > 0 for b in boxes)


def test_password_is_stored_hashed(example):
    add_user(example, "alice@example.test", "hunter2")

    def stored(session):
        return session.query(User.password_hash).scalar()

    hashed = example.run_sync(stored)
    assert hashed.startswith("$scrypt$") and "hunter2" not in hashed
    assert verify_password("hunter2", hashed)


def test_user_in_unknown_domain_is_rejected(example):
    with pytest.raises(NotFound):
        add_user(example, "bob@elsewhere.test")


@pytest.mark.parametrize("address", ["no-at-sign", "@example.test", "a b@example.test",
                                     "a..b@example.test", "x" * 65 + "@example.test"])
def test_bad_address_is_rejected(example, address):
    with pytest.raises(InvalidAddress):
        add_user(example, address)


def test_duplicate_user_is_rejected(example):
    add_user(example, "alice@example.test")
    with pytest.raises(AlreadyExists):
        add_user(example, "ALICE@example.test")


def test_list_users_of_a_domain(example):
    example.run_sync(domains.add_domain, "other.test")
    add_user(example, "b@example.test")
    add_user(example, "a@example.test")
    add_user(example, "c@other.test")
    assert [u.address for u in example.run_sync(users.list_users, "example.test")] == [
        "a@example.test", "b@example.test"]


def test_authenticate_right_password_returns_user(example):
    add_user(example, "alice@example.test", "pw")
    info = example.run_sync(users.authenticate, "Alice@example.test", "pw", hash_fn=cheap)
    assert info is not None and info.address == "alice@example.test"


def test_authenticate_wrong_password_returns_none(example):
    add_user(example, "alice@example.test", "pw")
    assert example.run_sync(users.authenticate, "alice@example.test", "nope") is None


def test_authenticate_unknown_user_returns_none(example):
    assert example.run_sync(users.authenticate, "ghost@example.test", "pw") is None


def test_authenticate_inactive_user_returns_none(example):
    add_user(example, "alice@example.test", "pw")
    example.run_sync(users.set_user_active, "alice@example.test", False)
    assert example.run_sync(users.authenticate, "alice@example.test", "pw") is None


def test_set_password_replaces_old_one(example):
    add_user(example, "alice@example.test", "old")
    example.run_sync(users.set_password, "alice@example.test", "new", hash_fn=cheap)
    assert example.run_sync(users.authenticate, "alice@example.test", "old") is None
    assert example.run_sync(users.authenticate, "alice@example.test", "new",
                            hash_fn=cheap) is not None


def test_remove_user_removes_mailboxes(example):
    info = add_user(example, "alice@example.test")
    example.run_sync(users.remove_user, "alice@example.test")
    assert example.run_sync(users.get_user, "alice@example.test") is None
    assert example.run_sync(mailboxes.list_mailboxes, info.id) == []


# --- aliases and resolution

def test_duplicate_alias_is_rejected(example):
    example.run_sync(aliases.add_alias, "info@example.test", "a@example.test")
    with pytest.raises(AlreadyExists):
        example.run_sync(aliases.add_alias, "INFO@example.test", "a@example.test")


def test_alias_in_unknown_domain_is_rejected(example):
    with pytest.raises(NotFound):
        example.run_sync(aliases.add_alias, "info@other.test", "a@example.test")


def test_remove_every_destination_of_alias(example):
    example.run_sync(aliases.add_alias, "info@example.test", "a@example.test")
    example.run_sync(aliases.add_alias, "info@example.test", "b@example.test")
    assert example.run_sync(aliases.remove_alias, "info@example.test") == 2
    assert example.run_sync(aliases.list_aliases) == []


def resolve(db, address):
    return sorted((t.address, t.user_id is not None, t.detail)
                  for t in db.run_sync(aliases.resolve_address, address))


def test_resolve_user(example):
    add_user(example, "alice@example.test")
    assert resolve(example, "ALICE@example.test") == [("alice@example.test", True, None)]


def test_resolve_unknown_is_empty(example):
    assert resolve(example, "ghost@example.test") == []


def test_resolve_alias_to_local_and_remote(example):
    add_user(example, "alice@example.test")
    example.run_sync(aliases.add_alias, "team@example.test", "alice@example.test")
    example.run_sync(aliases.add_alias, "team@example.test", "bob@remote.test")
    assert resolve(example, "team@example.test") == [
        ("alice@example.test", True, None), ("bob@remote.test", False, None)]


def test_resolve_plus_address_keeps_detail(example):
    add_user(example, "alice@example.test")
    assert resolve(example, "alice+lists@example.test") == [
        ("alice@example.test", True, "lists")]


def test_resolve_with_other_delimiter(example):
    add_user(example, "alice@example.test")
    found = example.run_sync(aliases.resolve_address, "alice-x@example.test", delimiter="-")
    assert [t.address for t in found] == ["alice@example.test"]


def test_resolve_catch_all_only_for_unknown_addresses(example):
    add_user(example, "alice@example.test")
    add_user(example, "postmaster@example.test")
    example.run_sync(aliases.add_alias, "@example.test", "postmaster@example.test")
    assert resolve(example, "whatever@example.test") == [("postmaster@example.test", True, None)]
    assert resolve(example, "alice@example.test") == [("alice@example.test", True, None)]


def test_resolve_alias_loop_terminates(example):
    # made behind add_alias's back (rows from before the loop check): resolution still ends
    from postroom.store.models import Alias

    def loop(session):
        ident = session.execute(select(Domain.id)).scalar_one()
        session.add_all([Alias(domain_id=ident, source="a@example.test",
                               destination="b@example.test"),
                         Alias(domain_id=ident, source="b@example.test",
                               destination="a@example.test")])
    example.run_sync(loop)
    assert resolve(example, "a@example.test") == []


def test_alias_to_itself_is_refused_unless_it_keeps_an_account_copy(example):
    with pytest.raises(AliasLoop, match=re.escape("loop: a@example.test -> a@example.test")):
        example.run_sync(aliases.add_alias, "a@example.test", "A@example.test")


def test_two_alias_loop_is_refused(example):
    example.run_sync(aliases.add_alias, "a@example.test", "b@example.test")
    with pytest.raises(AliasLoop, match=re.escape("b@example.test -> a@example.test -> b@")):
        example.run_sync(aliases.add_alias, "b@example.test", "a@example.test")
    assert [a.source for a in example.run_sync(aliases.list_aliases)] == ["a@example.test"]


def test_longer_loop_through_other_aliases_is_refused(example):
    add_user(example, "alice@example.test")
    example.run_sync(aliases.add_alias, "a@example.test", "b@example.test")
    example.run_sync(aliases.add_alias, "b@example.test", "c@example.test")
    example.run_sync(aliases.add_alias, "c@example.test", "alice@example.test")
    example.run_sync(aliases.add_alias, "c@example.test", "d@example.test")
    with pytest.raises(AliasLoop, match=re.escape("d@example.test -> a@example.test -> b@")):
        example.run_sync(aliases.add_alias, "d@example.test", "a@example.test")
    # an account in the chain does not break the loop: its alias wins over its mailbox
    with pytest.raises(AliasLoop):
        example.run_sync(aliases.add_alias, "alice@example.test", "a@example.test")


def test_loop_through_plus_address_and_catch_all_is_refused(example):
    with pytest.raises(AliasLoop):
        example.run_sync(aliases.add_alias, "x@example.test", "x+copy@example.test")
    # nobody is postmaster: mail to it would fall to the catch-all again
    with pytest.raises(AliasLoop, match=re.escape("@example.test -> postmaster@example.test")):
        example.run_sync(aliases.add_alias, "@example.test", "postmaster@example.test")


def test_chains_that_end_somewhere_are_accepted(example):
    add_user(example, "alice@example.test")
    add_user(example, "postmaster@example.test")
    example.run_sync(aliases.add_alias, "a@example.test", "b@example.test")
    example.run_sync(aliases.add_alias, "b@example.test", "alice@example.test")
    example.run_sync(aliases.add_alias, "b@example.test", "x@remote.test")
    example.run_sync(aliases.add_alias, "c@example.test", "a@example.test")
    example.run_sync(aliases.add_alias, "@example.test", "postmaster@example.test")
    assert resolve(example, "c@example.test") == [
        ("alice@example.test", True, None), ("x@remote.test", False, None)]
    # an account aliased to its own +detail would never reach its mailbox again
    with pytest.raises(AliasLoop):
        example.run_sync(aliases.add_alias, "alice@example.test", "alice+copy@example.test")


def test_alias_to_itself_keeps_local_copy(example):
    add_user(example, "alice@example.test")
    example.run_sync(aliases.add_alias, "alice@example.test", "alice@example.test")
    example.run_sync(aliases.add_alias, "alice@example.test", "carol@remote.test")
    assert resolve(example, "alice@example.test") == [
        ("alice@example.test", True, None), ("carol@remote.test", False, None)]


# --- DKIM

def test_generate_keys_of_both_algorithms(example):
    rsa = example.run_sync(dkim.generate_key, "example.test", "rsa-sha256", "r1")
    ed = example.run_sync(dkim.generate_key, "example.test", "ed25519-sha256", "e1")
    assert "PRIVATE KEY" in rsa.private_key and not rsa.encrypted  # no keyring: plaintext
    assert len(rsa.public_key_b64) > 300
    assert len(ed.public_key_b64) == 44  # 32 raw bytes in base64


def test_duplicate_selector_is_rejected(example):
    example.run_sync(dkim.generate_key, "example.test", "ed25519-sha256", "s1")
    with pytest.raises(AlreadyExists):
        example.run_sync(dkim.generate_key, "example.test", "ed25519-sha256", "s1")


def test_active_keys_leave_out_retired_ones(example):
    example.run_sync(dkim.generate_key, "example.test", "ed25519-sha256", "old")
    example.run_sync(dkim.generate_key, "example.test", "ed25519-sha256", "new")
    example.run_sync(dkim.set_key_active, "example.test", "old", False)
    assert [k.selector for k in example.run_sync(dkim.active_keys, "example.test")] == ["new"]
    assert len(example.run_sync(dkim.list_keys, "example.test")) == 2
