"""SCRAM-SHA-256 secrets in the store: kept with every password set, never the password."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from postroom.auth.passwords import hash_password
from postroom.auth.sasl import scram_secrets
from postroom.store import domains, users
from postroom.store.db import Database
from postroom.store.models import User

PASSWORD = "correct horse battery"


def fast_hash(password: str) -> str:
    return hash_password(password, ln=4)


@pytest.fixture
def address(database: Database) -> str:
    domain = f"scram{secrets.token_hex(4)}.example"
    database.run_sync(domains.add_domain, domain)
    return f"u@{domain}"


def stored_text(database: Database, address: str) -> str | None:
    return database.run_sync(lambda s: s.execute(
        select(User.scram_secrets).where(User.address == address)).scalar_one())


def test_add_user_stores_secrets_derived_from_the_password(database: Database,
                                                           address: str) -> None:
    database.run_sync(users.add_user, address, PASSWORD, hash_fn=fast_hash)
    found = database.run_sync(users.scram_secrets_for, address)
    assert found is not None
    assert found == scram_secrets(PASSWORD, found.salt, found.iterations)


def test_default_iterations_exceed_the_rfc_minimum(database: Database, address: str) -> None:
    database.run_sync(users.add_user, address, PASSWORD, hash_fn=fast_hash)
    found = database.run_sync(users.scram_secrets_for, address)
    assert found is not None and found.iterations == users.DEFAULT_SCRAM_ITERATIONS >= 4096


def test_iterations_are_configurable(database: Database, address: str) -> None:
    database.run_sync(users.add_user, address, PASSWORD, hash_fn=fast_hash,
                      scram_iterations=5000)
    found = database.run_sync(users.scram_secrets_for, address)
    assert found is not None and found.iterations == 5000


def test_fewer_iterations_than_rfc_7677_are_refused(database: Database, address: str) -> None:
    with pytest.raises(ValueError):
        database.run_sync(users.add_user, address, PASSWORD, hash_fn=fast_hash,
                          scram_iterations=1000)
    assert database.run_sync(users.get_user, address) is None


def test_stored_column_holds_no_password(database: Database, address: str) -> None:
    database.run_sync(users.add_user, address, PASSWORD, hash_fn=fast_hash)
    text = stored_text(database, address)
    assert text is not None and text.startswith("SCRAM-SHA-256$10000:")
    assert PASSWORD not in text


def test_set_password_replaces_the_secrets(database: Database, address: str) -> None:
    database.run_sync(users.add_user, address, PASSWORD, hash_fn=fast_hash)
    before = stored_text(database, address)
    database.run_sync(users.set_password, address, "another one", hash_fn=fast_hash)
    found = database.run_sync(users.scram_secrets_for, address)
    assert stored_text(database, address) != before
    assert found == scram_secrets("another one", found.salt, found.iterations)


def test_inactive_account_has_no_secrets_to_offer(database: Database, address: str) -> None:
    database.run_sync(users.add_user, address, PASSWORD, hash_fn=fast_hash)
    database.run_sync(users.set_user_active, address, False)
    assert database.run_sync(users.scram_secrets_for, address) is None
    assert database.run_sync(users.get_active_user, address) is None


def test_unknown_address_has_no_secrets(database: Database, address: str) -> None:
    assert database.run_sync(users.scram_secrets_for, address) is None
    assert database.run_sync(users.scram_secrets_for, "not an address") is None


def test_damaged_stored_value_means_no_scram(database: Database, address: str) -> None:
    database.run_sync(users.add_user, address, PASSWORD, hash_fn=fast_hash)

    def damage(session: Session) -> None:
        row = session.execute(select(User).where(User.address == address)).scalar_one()
        row.scram_secrets = "SCRAM-SHA-256$garbage"
    database.run_sync(damage)
    assert database.run_sync(users.scram_secrets_for, address) is None
