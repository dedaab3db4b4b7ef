"""Smarthost transport entries in a real PostgreSQL: set, replace, list, remove, look up."""

from __future__ import annotations

import pytest

from postroom.net.nexthop import NextHop, choose_route
from postroom.store import transports
from postroom.store.errors import InvalidRoute, NotFound


@pytest.fixture
def db(database, clean_db):
    return database


def test_an_entry_is_stored_normalised_and_listed(db):
    entry = db.run_sync(transports.set_transport, "Example.COM", "smtp:[Relay.Example]:587",
                        tls="tls", username="u@example.com", password_ref="/run/secrets/pw")
    assert (entry.domain, entry.nexthop, entry.tls) == ("example.com", "[relay.example]:587",
                                                        "tls")
    [listed] = db.run_sync(transports.list_transports)
    assert listed.password_ref == "/run/secrets/pw" and listed.username == "u@example.com"


def test_setting_again_replaces_the_entry(db):
    db.run_sync(transports.set_transport, "example.com", "[a.example]:587")
    db.run_sync(transports.set_transport, "example.com", "b.example:25", tls="none")
    [entry] = db.run_sync(transports.list_transports)
    assert (entry.nexthop, entry.tls, entry.username) == ("b.example:25", "none", None)


def test_routes_for_returns_exact_and_parent_entries_and_precedence_holds(db):
    db.run_sync(transports.set_transport, ".example.com", "[parent.example]:587")
    db.run_sync(transports.set_transport, "b.example.com", "[exact.example]:465", tls="tls")
    db.run_sync(transports.set_transport, "unrelated.test", "[x.example]:25")
    entries = db.run_sync(transports.routes_for, ["a.b.example.com", "b.example.com"])
    assert set(entries) == {".example.com", "b.example.com"}
    exact = choose_route("b.example.com", entries, None)
    assert exact is not None and exact.nexthop == NextHop("exact.example", 465, False)
    assert exact.source == "transport:b.example.com"
    parent = choose_route("a.b.example.com", entries, None)
    assert parent is not None and parent.nexthop.host == "parent.example"


@pytest.mark.parametrize(("args", "kwargs", "what"), [
    (("example.com", "[relay"), {}, "missing"),
    (("exa mple.com", "[relay]:25"), {}, "host name"),
    (("example.com", "[relay]:25"), {"tls": "ssl"}, "TLS mode"),
    (("example.com", "[relay]:25"), {"tls": "none", "username": "u",
                                      "password_ref": "/run/secrets/pw"}, "under TLS"),
    (("example.com", "[relay]:25"), {"username": "u", "password_ref": "hunter2 !"},
     "never the password"),
    (("example.com", "[relay]:25"), {"username": "u"}, "both"),
])
def test_a_bad_entry_is_refused_with_why(db, args, kwargs, what):
    with pytest.raises(InvalidRoute, match=what):
        db.run_sync(transports.set_transport, *args, **kwargs)
    assert db.run_sync(transports.list_transports) == []


def test_remove(db):
    db.run_sync(transports.set_transport, ".example.com", "[relay.example]:587")
    db.run_sync(transports.remove_transport, ".Example.com")
    assert db.run_sync(transports.list_transports) == []
    with pytest.raises(NotFound):
        db.run_sync(transports.remove_transport, ".example.com")


def test_a_secret_name_is_a_file_in_run_secrets():
    assert transports.password_path("relay-pw") == "/run/secrets/relay-pw"
    assert transports.password_path("/etc/postroom/pw") == "/etc/postroom/pw"
