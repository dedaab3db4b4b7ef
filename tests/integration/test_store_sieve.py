"""Sieve scripts in a real PostgreSQL (postroom.store.sieve, migration 0014)."""

from __future__ import annotations

import functools

import pytest
from sqlalchemy.exc import IntegrityError

from postroom.auth.passwords import hash_password
from postroom.store import domains, sieve, users
from postroom.store.errors import AlreadyExists, InUse, InvalidName

cheap = functools.partial(hash_password, ln=4)


@pytest.fixture
def db(database, clean_db):
    database.run_sync(domains.add_domain, "example.test")
    return database


@pytest.fixture
def uid(db):
    return db.run_sync(users.add_user, "alice@example.test", "pw", hash_fn=cheap).id


def test_put_get_list_and_usage(db, uid):
    db.run_sync(sieve.put_script, uid, "main", "keep;\n")
    db.run_sync(sieve.put_script, uid, "été", "discard;")
    assert db.run_sync(sieve.get_script, uid, "main") == "keep;\n"
    assert db.run_sync(sieve.get_script, uid, "none") is None
    listed = db.run_sync(sieve.list_scripts, uid)
    assert [(s.name, s.active, s.size) for s in listed] == [("main", False, 6),
                                                            ("été", False, 8)]
    assert db.run_sync(sieve.scripts_usage, uid) == (2, 14)
    db.run_sync(sieve.put_script, uid, "main", "stop;")
    assert db.run_sync(sieve.get_script, uid, "main") == "stop;"
    assert db.run_sync(sieve.scripts_usage, uid) == (2, 13)


def test_one_active_script_and_the_active_one_cannot_be_deleted(db, uid):
    db.run_sync(sieve.put_script, uid, "a", "keep;")
    db.run_sync(sieve.put_script, uid, "b", "discard;")
    assert db.run_sync(sieve.active_script, uid) is None
    assert db.run_sync(sieve.set_active, uid, "a")
    assert db.run_sync(sieve.active_script, uid) == ("a", "keep;")
    assert db.run_sync(sieve.set_active, uid, "b")
    assert db.run_sync(sieve.active_script, uid) == ("b", "discard;")
    assert [s.active for s in db.run_sync(sieve.list_scripts, uid)] == [False, True]
    assert not db.run_sync(sieve.set_active, uid, "missing")
    assert db.run_sync(sieve.active_script, uid) == ("b", "discard;")
    with pytest.raises(InUse):
        db.run_sync(sieve.delete_script, uid, "b")
    # replacing the active script keeps it active
    db.run_sync(sieve.put_script, uid, "b", "stop;")
    assert db.run_sync(sieve.active_script, uid) == ("b", "stop;")
    assert db.run_sync(sieve.set_active, uid, None)
    assert db.run_sync(sieve.active_script, uid) is None
    assert db.run_sync(sieve.delete_script, uid, "b")
    assert not db.run_sync(sieve.delete_script, uid, "b")


def test_the_partial_index_refuses_a_second_active_script(db, uid):
    from sqlalchemy import update

    from postroom.store.models import sieve_scripts

    db.run_sync(sieve.put_script, uid, "a", "keep;")
    db.run_sync(sieve.put_script, uid, "b", "keep;")
    db.run_sync(sieve.set_active, uid, "a")
    with pytest.raises(IntegrityError):
        db.run_sync(lambda s: s.execute(update(sieve_scripts).values(active=True)))


def test_rename_keeps_active_and_refuses_a_taken_name(db, uid):
    db.run_sync(sieve.put_script, uid, "a", "keep;")
    db.run_sync(sieve.put_script, uid, "b", "discard;")
    db.run_sync(sieve.set_active, uid, "a")
    assert db.run_sync(sieve.rename_script, uid, "a", "c")
    assert db.run_sync(sieve.active_script, uid) == ("c", "keep;")
    assert not db.run_sync(sieve.rename_script, uid, "missing", "d")
    with pytest.raises(AlreadyExists):
        db.run_sync(sieve.rename_script, uid, "c", "b")
    assert db.run_sync(sieve.get_script, uid, "c") == "keep;"


@pytest.mark.parametrize("name", ["", "a\nb", "tab\there", "x" * 129, "nel\x85"])
def test_names_rfc_5804_refuses(db, uid, name):
    with pytest.raises(InvalidName):
        db.run_sync(sieve.put_script, uid, name, "keep;")


def test_scripts_go_with_their_account(db, uid):
    db.run_sync(sieve.put_script, uid, "a", "keep;")
    db.run_sync(users.remove_user, "alice@example.test")
    assert db.run_sync(sieve.scripts_usage, uid) == (0, 0)
