"""Console and REST API access in a real PostgreSQL: tokens, admins, managers, web sessions."""

from __future__ import annotations

import functools
import hashlib
import re

import pytest
from sqlalchemy import select, text, update

from postroom.auth.passwords import hash_password
from postroom.store import domains, users, webaccess
from postroom.store.errors import AlreadyExists, NotFound
from postroom.store.models import api_tokens, web_sessions

cheap = functools.partial(hash_password, ln=4)


@pytest.fixture
def db(database, clean_db):
    database.run_sync(domains.add_domain, "example.test")
    database.run_sync(domains.add_domain, "other.test")
    return database


def add_user(db, address):
    return db.run_sync(users.add_user, address, "pw", hash_fn=cheap)


def sql(db, statement, **params):
    return db.run_sync(lambda s: s.execute(text(statement), params).all())


# --- tokens

def test_a_token_secret_is_prefixed_and_only_its_hash_is_stored(db):
    secret = db.run_sync(webaccess.create_token, "ci", None)
    assert re.fullmatch(r"prt_[A-Za-z0-9_-]{43}", secret)
    [(stored,)] = sql(db, "SELECT token_sha256 FROM api_tokens")
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(sql(db, "SELECT * FROM api_tokens"))


def test_an_admin_token_manages_every_domain(db):
    secret = db.run_sync(webaccess.create_token, "ci", None)
    principal = db.run_sync(webaccess.principal_for_token, secret)
    assert principal == webaccess.Principal(kind="token", name="ci", user_id=None,
                                            is_admin=True, domains=frozenset())
    assert principal.can_manage("anything.test") and principal.is_console_user


def test_a_domain_token_manages_only_its_domain(db):
    secret = db.run_sync(webaccess.create_token, "shop", "Example.TEST")
    principal = db.run_sync(webaccess.principal_for_token, secret)
    assert principal.kind == "token" and not principal.is_admin
    assert principal.domains == {"example.test"}
    assert principal.can_manage("EXAMPLE.test") and not principal.can_manage("other.test")
    assert principal.is_console_user


def test_a_token_for_an_unknown_domain_is_refused(db):
    with pytest.raises(NotFound):
        db.run_sync(webaccess.create_token, "x", "nowhere.test")


def test_a_token_name_is_taken_once(db):
    db.run_sync(webaccess.create_token, "ci", None)
    with pytest.raises(AlreadyExists):
        db.run_sync(webaccess.create_token, "ci", "example.test")


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "naïve", "a/b"])
def test_a_token_name_must_be_plain(db, name):
    with pytest.raises(ValueError):
        db.run_sync(webaccess.create_token, name, None)


@pytest.mark.parametrize("secret", ["", "prt_wrong", "x" * 10000, "prt_ünïcode"])
def test_an_unknown_token_is_no_one(db, secret):
    db.run_sync(webaccess.create_token, "ci", None)
    assert db.run_sync(webaccess.principal_for_token, secret) is None


def test_a_revoked_token_is_no_one_and_stays_listed(db):
    secret = db.run_sync(webaccess.create_token, "ci", None)
    assert db.run_sync(webaccess.revoke_token, "ci") is True
    assert db.run_sync(webaccess.principal_for_token, secret) is None
    assert db.run_sync(webaccess.revoke_token, "ci") is False
    assert db.run_sync(webaccess.revoke_token, "nope") is False
    [info] = db.run_sync(webaccess.list_tokens)
    assert info.name == "ci" and info.revoked_at is not None


def test_list_tokens_gives_names_domains_and_use(db):
    secret = db.run_sync(webaccess.create_token, "b", "example.test")
    db.run_sync(webaccess.create_token, "a", None)
    db.run_sync(webaccess.principal_for_token, secret)
    a, b = db.run_sync(webaccess.list_tokens)
    assert (a.name, a.domain, a.last_used_at) == ("a", None, None)
    assert (b.name, b.domain) == ("b", "example.test") and b.last_used_at is not None


def test_last_used_is_written_at_most_once_a_minute(db):
    secret = db.run_sync(webaccess.create_token, "ci", None)
    db.run_sync(webaccess.principal_for_token, secret)
    old = "2020-01-01T00:00:00+00:00"
    db.run_sync(lambda s: s.execute(update(api_tokens).values(last_used_at=text(
        "now() - interval '30 seconds'"))))
    [(recent,)] = sql(db, "SELECT last_used_at FROM api_tokens")
    db.run_sync(webaccess.principal_for_token, secret)
    assert sql(db, "SELECT last_used_at FROM api_tokens") == [(recent,)]
    sql(db, "UPDATE api_tokens SET last_used_at = :old RETURNING 1", old=old)
    db.run_sync(webaccess.principal_for_token, secret)
    [(now,)] = sql(db, "SELECT last_used_at FROM api_tokens")
    assert now > recent


def test_a_domain_token_goes_with_its_domain(db):
    secret = db.run_sync(webaccess.create_token, "shop", "other.test")
    db.run_sync(domains.remove_domain, "other.test")
    assert db.run_sync(webaccess.principal_for_token, secret) is None
    assert db.run_sync(webaccess.list_tokens) == []


# --- admins and managers

def test_a_plain_user_is_no_console_user(db):
    info = add_user(db, "a@example.test")
    principal = db.run_sync(webaccess.principal_for_user, info.id)
    assert principal == webaccess.Principal(kind="user", name="a@example.test",
                                            user_id=info.id, is_admin=False,
                                            domains=frozenset())
    assert not principal.is_console_user and not principal.can_manage("example.test")


def test_set_admin_makes_and_unmakes_a_global_admin(db):
    info = add_user(db, "a@example.test")
    db.run_sync(webaccess.set_admin, "A@Example.test", True)
    principal = db.run_sync(webaccess.principal_for_user, info.id)
    assert principal.is_admin and principal.can_manage("other.test")
    assert db.run_sync(users.get_user, "a@example.test").is_admin
    db.run_sync(webaccess.set_admin, "a@example.test", False)
    assert not db.run_sync(webaccess.principal_for_user, info.id).is_admin


def test_set_admin_of_an_unknown_user_is_refused(db):
    with pytest.raises(NotFound):
        db.run_sync(webaccess.set_admin, "nobody@example.test", True)


def test_a_manager_manages_only_their_domains(db):
    info = add_user(db, "a@example.test")
    db.run_sync(webaccess.add_manager, "a@example.test", "Other.Test")
    db.run_sync(webaccess.add_manager, "a@example.test", "other.test")  # again: no change
    principal = db.run_sync(webaccess.principal_for_user, info.id)
    assert principal.domains == {"other.test"} and principal.is_console_user
    assert principal.can_manage("other.test") and not principal.can_manage("example.test")


def test_add_manager_refuses_unknown_users_and_domains(db):
    add_user(db, "a@example.test")
    with pytest.raises(NotFound):
        db.run_sync(webaccess.add_manager, "b@example.test", "example.test")
    with pytest.raises(NotFound):
        db.run_sync(webaccess.add_manager, "a@example.test", "nowhere.test")


def test_managers_lists_and_remove_manager_removes(db):
    add_user(db, "b@example.test")
    add_user(db, "a@other.test")
    db.run_sync(webaccess.add_manager, "b@example.test", "other.test")
    db.run_sync(webaccess.add_manager, "a@other.test", "other.test")
    db.run_sync(webaccess.add_manager, "b@example.test", "example.test")
    assert db.run_sync(webaccess.managers) == [
        ("b@example.test", "example.test"), ("a@other.test", "other.test"),
        ("b@example.test", "other.test")]
    assert db.run_sync(webaccess.managers, "OTHER.test") == [
        ("a@other.test", "other.test"), ("b@example.test", "other.test")]
    assert db.run_sync(webaccess.remove_manager, "b@example.test", "other.test") is True
    assert db.run_sync(webaccess.remove_manager, "b@example.test", "other.test") is False
    assert db.run_sync(webaccess.remove_manager, "nobody@x.test", "other.test") is False
    assert db.run_sync(webaccess.managers, "other.test") == [("a@other.test", "other.test")]


def test_an_inactive_user_is_no_one(db):
    info = add_user(db, "a@example.test")
    db.run_sync(webaccess.set_admin, "a@example.test", True)
    db.run_sync(users.set_user_active, "a@example.test", False)
    assert db.run_sync(webaccess.principal_for_user, info.id) is None
    assert db.run_sync(webaccess.principal_for_user, 999999) is None


# --- web sessions

def test_a_web_session_gives_the_principal_and_csrf_token(db):
    info = add_user(db, "a@example.test")
    db.run_sync(webaccess.add_manager, "a@example.test", "example.test")
    secret, csrf = db.run_sync(webaccess.create_web_session, info.id, 3600)
    assert len(secret) >= 43 and len(csrf) >= 43 and secret != csrf
    principal, found_csrf = db.run_sync(webaccess.web_session, secret, 600)
    assert found_csrf == csrf
    assert principal.user_id == info.id and principal.domains == {"example.test"}
    [(stored,)] = sql(db, "SELECT id_sha256 FROM web_sessions")
    assert stored == hashlib.sha256(secret.encode()).hexdigest()


def test_an_unknown_cookie_is_no_session(db):
    info = add_user(db, "a@example.test")
    db.run_sync(webaccess.create_web_session, info.id, 3600)
    for secret in ("", "nope", "x" * 5000):
        assert db.run_sync(webaccess.web_session, secret, 600) is None


def test_a_session_for_an_unknown_user_is_refused(db):
    with pytest.raises(NotFound):
        db.run_sync(webaccess.create_web_session, 424242, 3600)


def test_an_expired_session_is_none_and_is_purged(db):
    info = add_user(db, "a@example.test")
    secret, _ = db.run_sync(webaccess.create_web_session, info.id, 3600)
    kept, _ = db.run_sync(webaccess.create_web_session, info.id, 3600)
    sql(db, "UPDATE web_sessions SET expires_at = now() - interval '1 second' "
            "WHERE id_sha256 = :h RETURNING 1", h=hashlib.sha256(secret.encode()).hexdigest())
    assert db.run_sync(webaccess.web_session, secret, 600) is None
    assert db.run_sync(webaccess.purge_web_sessions) == 1
    assert db.run_sync(webaccess.web_session, kept, 600) is not None


def test_a_session_idle_too_long_is_none(db):
    info = add_user(db, "a@example.test")
    secret, _ = db.run_sync(webaccess.create_web_session, info.id, 3600)
    sql(db, "UPDATE web_sessions SET last_seen_at = now() - interval '11 minutes' RETURNING 1")
    assert db.run_sync(webaccess.web_session, secret, 600) is None
    assert db.run_sync(webaccess.web_session, secret, 3600) is not None


def test_last_seen_is_refreshed_at_most_once_a_minute(db):
    info = add_user(db, "a@example.test")
    secret, _ = db.run_sync(webaccess.create_web_session, info.id, 3600)
    sql(db, "UPDATE web_sessions SET last_seen_at = now() - interval '30 seconds' RETURNING 1")
    [(recent,)] = sql(db, "SELECT last_seen_at FROM web_sessions")
    db.run_sync(webaccess.web_session, secret, 600)
    assert sql(db, "SELECT last_seen_at FROM web_sessions") == [(recent,)]
    sql(db, "UPDATE web_sessions SET last_seen_at = now() - interval '5 minutes' RETURNING 1")
    db.run_sync(webaccess.web_session, secret, 600)
    [(now,)] = sql(db, "SELECT last_seen_at FROM web_sessions")
    assert now > recent


def test_a_disabled_users_session_is_none(db):
    info = add_user(db, "a@example.test")
    secret, _ = db.run_sync(webaccess.create_web_session, info.id, 3600)
    db.run_sync(users.set_user_active, "a@example.test", False)
    assert db.run_sync(webaccess.web_session, secret, 600) is None


def test_logout_and_deleting_a_users_sessions(db):
    a = add_user(db, "a@example.test")
    b = add_user(db, "b@example.test")
    first, _ = db.run_sync(webaccess.create_web_session, a.id, 3600)
    db.run_sync(webaccess.create_web_session, a.id, 3600)
    other, _ = db.run_sync(webaccess.create_web_session, b.id, 3600)
    db.run_sync(webaccess.delete_web_session, first)
    db.run_sync(webaccess.delete_web_session, "never-issued")
    assert db.run_sync(webaccess.web_session, first, 600) is None
    assert db.run_sync(webaccess.delete_user_web_sessions, a.id) == 1
    assert db.run_sync(webaccess.web_session, other, 600) is not None


def test_removing_a_user_removes_their_sessions_and_managed_domains(db):
    info = add_user(db, "a@example.test")
    db.run_sync(webaccess.add_manager, "a@example.test", "other.test")
    db.run_sync(webaccess.create_web_session, info.id, 3600)
    db.run_sync(users.remove_user, "a@example.test")
    assert db.run_sync(webaccess.managers) == []
    assert db.run_sync(lambda s: s.execute(select(web_sessions)).all()) == []
