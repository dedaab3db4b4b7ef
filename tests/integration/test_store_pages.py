"""Pages of domains, users and aliases for the web console and REST API (real PostgreSQL)."""

from __future__ import annotations

import functools
import time

import pytest
from sqlalchemy import text

from postroom.auth.passwords import hash_password
from postroom.store import aliases, domains, users, webaccess

cheap = functools.partial(hash_password, ln=4)


@pytest.fixture
def db(database, clean_db):
    for name in ("a.test", "b.test", "c.test"):
        database.run_sync(domains.add_domain, name)
    return database


def add_user(db, address, **kw):
    return db.run_sync(users.add_user, address, "pw", hash_fn=cheap, **kw)


def test_domains_page_filters_searches_and_counts(db):
    add_user(db, "x@b.test")
    rows, total = db.run_sync(domains.list_domains_page, names=None, offset=1, limit=1,
                              search=None)
    assert total == 3 and [(r.name, r.users, r.aliases) for r in rows] == [("b.test", 1, 2)]
    rows, total = db.run_sync(domains.list_domains_page, names={"A.TEST", "c.test", "bad..x"},
                              offset=0, limit=10, search=None)
    assert (total, [r.name for r in rows]) == (2, ["a.test", "c.test"])
    rows, total = db.run_sync(domains.list_domains_page, names={"a.test", "c.test"},
                              offset=0, limit=10, search="C.")
    assert (total, [r.name for r in rows]) == (1, ["c.test"])
    assert db.run_sync(domains.list_domains_page, names=set(), offset=0, limit=10,
                       search=None) == ([], 0)


def test_search_wildcards_are_taken_literally(db):
    add_user(db, "a_b@a.test")
    add_user(db, "axb@a.test")
    rows, total = db.run_sync(users.list_users_page, domains=None, offset=0, limit=10,
                              search="a_b")
    assert (total, [r.address for r in rows]) == (1, ["a_b@a.test"])
    assert db.run_sync(domains.list_domains_page, names=None, offset=0, limit=10,
                       search="%") == ([], 0)


@pytest.mark.parametrize(("offset", "limit", "search"),
                         [(-1, 10, None), (0, 0, None), (0, 1001, None), (0, 10, "x" * 255)])
def test_bad_pages_are_refused(db, offset, limit, search):
    with pytest.raises(ValueError):
        db.run_sync(users.list_users_page, domains=None, offset=offset, limit=limit,
                    search=search)


def test_users_page_rows_carry_domain_quota_usage_admin(db):
    add_user(db, "boss@a.test", is_admin=True, quota_bytes=1000)
    add_user(db, "x@b.test")
    rows, total = db.run_sync(users.list_users_page, domains=None, offset=0, limit=10,
                              search=None, with_usage=True)
    assert total == 2
    boss, x = rows
    assert (boss.address, boss.domain, boss.quota_bytes, boss.used_bytes, boss.active,
            boss.is_admin) == ("boss@a.test", "a.test", 1000, 0, True, True)
    assert (x.domain, x.is_admin, x.quota_bytes) == ("b.test", False, None)
    rows, _ = db.run_sync(users.list_users_page, domains={"b.test"}, offset=0, limit=10,
                          search=None)
    assert [(r.address, r.used_bytes) for r in rows] == [("x@b.test", None)]


def test_users_page_of_ten_thousand_users_is_one_cheap_page(db):
    db.run_sync(lambda s: s.execute(text(
        "INSERT INTO users (domain_id, localpart, address, password_hash) "
        "SELECT d.id, 'u' || lpad(g::text, 5, '0'), 'u' || lpad(g::text, 5, '0') || '@' || d.name,"
        " 'x' FROM generate_series(1, 10000) g, domains d WHERE d.name = 'a.test'")))
    db.run_sync(lambda s: s.execute(text("ANALYZE users")))
    started = time.monotonic()
    rows, total = db.run_sync(users.list_users_page, domains={"a.test"}, offset=9950,
                              limit=50, search=None)
    elapsed = time.monotonic() - started
    assert total == 10000 and len(rows) == 50
    assert rows[0].address == "u09951@a.test" and rows[-1].address == "u10000@a.test"
    rows, total = db.run_sync(users.list_users_page, domains=None, offset=0, limit=50,
                              search="u0999")
    assert total == 10 and rows[0].address == "u09990@a.test"
    assert elapsed < 1.0


def test_set_user_active_disables_and_ends_sessions(db):
    info = add_user(db, "x@a.test")
    secret, _ = db.run_sync(webaccess.create_web_session, info.id, 3600)
    db.run_sync(users.set_user_active, "x@a.test", False)
    [row], _ = db.run_sync(users.list_users_page, domains=None, offset=0, limit=10,
                           search=None)
    assert row.active is False
    assert db.run_sync(webaccess.web_session, secret, 600) is None
    db.run_sync(users.set_user_active, "x@a.test", True)
    assert db.run_sync(webaccess.web_session, secret, 600) is None


def test_set_password_ends_sessions(db):
    info = add_user(db, "x@a.test")
    secret, _ = db.run_sync(webaccess.create_web_session, info.id, 3600)
    db.run_sync(users.set_password, "x@a.test", "new", hash_fn=cheap)
    assert db.run_sync(webaccess.web_session, secret, 600) is None


def test_aliases_page_filters_by_domain_and_searches_both_sides(db):
    add_user(db, "x@a.test")
    db.run_sync(aliases.add_alias, "sales@a.test", "x@a.test")
    db.run_sync(aliases.add_alias, "info@b.test", "someone@remote.example")
    rows, total = db.run_sync(aliases.list_aliases_page, domains=None, offset=0, limit=2,
                              search=None)
    # abuse@ and postmaster@ came with a.test's first user
    assert total == 4 and [r.source for r in rows] == ["abuse@a.test", "info@b.test"]
    rows, total = db.run_sync(aliases.list_aliases_page, domains={"b.test"}, offset=0,
                              limit=10, search=None)
    assert (total, [r.source for r in rows]) == (1, ["info@b.test"])
    rows, total = db.run_sync(aliases.list_aliases_page, domains=None, offset=0, limit=10,
                              search="REMOTE")
    assert (total, [r.destination for r in rows]) == (1, ["someone@remote.example"])
