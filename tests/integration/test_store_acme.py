"""postroom.store.acme and .mtasts against PostgreSQL: sealed keys, challenges, the lock, modes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from postroom.secretbox import Keyring, new_key
from postroom.store import acme, domains, mtasts
from postroom.store.db import Database
from postroom.store.errors import NotFound


@pytest.fixture
def db(clean_db: str):
    database = Database(clean_db, pool_size=2)
    yield database
    database.dispose()


def test_keys_are_sealed_at_rest_with_a_keyring_and_opened_on_read(db: Database):
    keyring = Keyring(new_key())
    db.run_sync(acme.save_account, "https://ca.test/dir", "ACCOUNT PEM", None, keyring=keyring)
    db.run_sync(acme.save_certificate, "default", "CERT", "KEY PEM",
                datetime.now(UTC) + timedelta(days=90), ["a.test"], keyring=keyring)
    stored = db.run_sync(lambda s: s.execute(text(
        "SELECT (SELECT key_pem FROM acme_account), (SELECT key_pem FROM tls_certificates)"
    )).one())
    assert all(value.startswith("enc:v1:") for value in stored)
    assert db.run_sync(acme.get_account, "https://ca.test/dir",
                       keyring=keyring).key_pem == "ACCOUNT PEM"
    assert db.run_sync(acme.get_certificate, keyring=keyring).key_pem == "KEY PEM"


def test_the_first_account_key_written_wins_and_its_uri_is_kept(db: Database):
    db.run_sync(acme.save_account, "https://ca.test/dir", "FIRST", None)
    found = db.run_sync(acme.save_account, "https://ca.test/dir", "SECOND", "https://ca.test/a/1")
    assert (found.key_pem, found.uri) == ("FIRST", "https://ca.test/a/1")


def test_a_poll_reads_only_a_certificate_issued_after_the_one_it_has(db: Database):
    db.run_sync(acme.save_certificate, "default", "CERT", "KEY",
                datetime.now(UTC) + timedelta(days=90), ["a.test"])
    have = db.run_sync(acme.get_certificate)
    assert db.run_sync(acme.get_certificate, newer_than=have.issued_at) is None
    assert db.run_sync(acme.get_certificate, newer_than=have.issued_at - timedelta(seconds=1))


def test_challenges_are_answered_until_they_expire_or_are_deleted(db: Database):
    db.run_sync(acme.put_challenge, "tok1", "tok1.thumb")
    db.run_sync(acme.put_challenge, "old", "old.thumb", ttl=timedelta(seconds=-1))
    assert db.run_sync(acme.challenge_answer, "tok1") == "tok1.thumb"
    assert db.run_sync(acme.challenge_answer, "old") is None
    assert db.run_sync(acme.delete_challenges) == 1       # the expired one
    assert db.run_sync(acme.delete_challenges, ["tok1"]) == 1
    assert db.run_sync(acme.challenge_answer, "tok1") is None


def test_one_renewer_holds_the_lock_at_a_time(clean_db: str):
    with acme.renewer_lock(clean_db) as first:
        with acme.renewer_lock(clean_db) as second:
            assert (first, second) == (True, False)
    with acme.renewer_lock(clean_db) as again:
        assert again


def test_a_mode_change_makes_a_new_stamp(db: Database):
    db.run_sync(domains.add_domain, "Sts.Test")
    assert db.run_sync(mtasts.get_setting, "sts.test").mode == "none"
    first = db.run_sync(mtasts.set_mode, "sts.test", "testing")
    second = db.run_sync(mtasts.set_mode, "sts.test", "testing")
    assert first.stamp != second.stamp
    assert db.run_sync(mtasts.get_setting, "STS.test.") == second
    assert db.run_sync(mtasts.get_setting, "other.test") is None
    with pytest.raises(NotFound):
        db.run_sync(mtasts.set_mode, "other.test", "enforce")
    with pytest.raises(ValueError):
        db.run_sync(mtasts.set_mode, "sts.test", "strict")
