"""postmaster@ (RFC 5321) and abuse@ (RFC 2142) exist for every domain (docs/mda.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from postroom.auth.passwords import hash_password
from postroom.store import aliases, domains, users


def cheap(password: str) -> str:
    return hash_password(password, ln=4)


@pytest.fixture
def db(database, clean_db):
    return database


def _aliases(db, domain):
    return sorted((a.source, a.destination) for a in db.run_sync(aliases.list_aliases, domain))


def _resolve(db, address):
    return [t.address for t in db.run_sync(aliases.resolve_address, address)]


def test_first_user_receives_postmaster_and_abuse(db):
    db.run_sync(domains.add_domain, "new.test")
    assert _aliases(db, "new.test") == []
    assert db.run_sync(aliases.recipient_status, "postmaster", "new.test")[0] == "unknown"
    db.run_sync(users.add_user, "boss@new.test", "pw", hash_fn=cheap)
    db.run_sync(users.add_user, "second@new.test", "pw", hash_fn=cheap)
    assert _aliases(db, "new.test") == [("abuse@new.test", "boss@new.test"),
                                        ("postmaster@new.test", "boss@new.test")]
    assert _resolve(db, "Postmaster@NEW.test") == ["boss@new.test"]
    assert db.run_sync(aliases.recipient_status, "POSTMASTER", "new.test") == (
        "ok", "postmaster@new.test")


def test_an_imported_first_user_receives_them_too(db):
    """`postroom import dovecot` makes accounts through the same path as `user add`."""
    db.run_sync(domains.add_domain, "moved.test")
    db.run_sync(users.import_user, "boss@moved.test", "{PLAIN}an-old-password", hash_fn=cheap)
    assert _aliases(db, "moved.test") == [("abuse@moved.test", "boss@moved.test"),
                                          ("postmaster@moved.test", "boss@moved.test")]


def test_a_configured_target_gets_them_when_the_domain_is_added(db):
    db.run_sync(domains.add_domain, "other.test")
    db.run_sync(domains.add_domain, "new.test", role_target="Hostmaster@Other.test")
    assert _aliases(db, "new.test") == [("abuse@new.test", "hostmaster@other.test"),
                                        ("postmaster@new.test", "hostmaster@other.test")]
    # the first user does not take them over
    db.run_sync(users.add_user, "boss@new.test", "pw", hash_fn=cheap)
    assert {d for _s, d in _aliases(db, "new.test")} == {"hostmaster@other.test"}


def test_the_operator_changes_them_and_later_users_leave_them_alone(db):
    db.run_sync(domains.add_domain, "new.test")
    db.run_sync(users.add_user, "boss@new.test", "pw", hash_fn=cheap)
    db.run_sync(aliases.remove_alias, "abuse@new.test")
    db.run_sync(aliases.add_alias, "abuse@new.test", "security@elsewhere.test")
    db.run_sync(users.add_user, "later@new.test", "pw", hash_fn=cheap)
    assert _aliases(db, "new.test") == [("abuse@new.test", "security@elsewhere.test"),
                                        ("postmaster@new.test", "boss@new.test")]


def test_an_account_named_postmaster_receives_its_own_mail(db):
    db.run_sync(domains.add_domain, "new.test")
    db.run_sync(users.add_user, "boss@new.test", "pw", hash_fn=cheap)
    db.run_sync(users.add_user, "postmaster@new.test", "pw", hash_fn=cheap)
    assert _resolve(db, "postmaster@new.test") == ["postmaster@new.test"]
    assert _aliases(db, "new.test") == [("abuse@new.test", "boss@new.test")]


def test_first_user_postmaster_gets_abuse_too(db):
    db.run_sync(domains.add_domain, "new.test")
    db.run_sync(users.add_user, "postmaster@new.test", "pw", hash_fn=cheap)
    assert _aliases(db, "new.test") == [("abuse@new.test", "postmaster@new.test")]
    assert _resolve(db, "abuse@new.test") == ["postmaster@new.test"]


def _cli(url, *args, stdin=None, env=None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    environ["POSTROOM_DATABASE_URL"] = url
    environ.update(env or {})
    done = subprocess.run([sys.executable, "-m", "postroom.ops.cli", *args], input=stdin,
                          capture_output=True, text=True, env=environ, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_domain_add_with_target_and_ensure_for_existing_domains(db, clean_db):
    env = {"POSTROOM_ROLE_ADDRESS_TARGET": "ops@example.net"}
    out = _cli(clean_db, "domain", "add", "fresh.test", env=env)
    assert "aliases of ops@example.net" in out
    assert _aliases(db, "fresh.test") == [("abuse@fresh.test", "ops@example.net"),
                                          ("postmaster@fresh.test", "ops@example.net")]
    # domains from before: made with a bare store call, roles removed by hand
    db.run_sync(domains.add_domain, "old.test")
    db.run_sync(users.add_user, "alice@old.test", "pw", hash_fn=cheap)
    db.run_sync(aliases.remove_alias, "postmaster@old.test")
    db.run_sync(aliases.remove_alias, "abuse@old.test")
    db.run_sync(domains.add_domain, "empty.test")
    out = _cli(clean_db, "domain", "ensure-role-addresses")
    assert "alias postmaster@old.test -> alice@old.test added" in out
    assert "empty.test: no user yet" in out
    assert "fresh.test: nothing to add" in out
    assert _resolve(db, "abuse@old.test") == ["alice@old.test"]
    out = _cli(clean_db, "domain", "ensure-role-addresses", "empty.test",
               "--target", "alice@old.test")
    assert "alias abuse@empty.test -> alice@old.test added" in out


def test_cli_user_add_says_where_the_role_addresses_go(db, clean_db):
    _cli(clean_db, "domain", "add", "new.test")
    out = _cli(clean_db, "user", "add", "boss@new.test", stdin="a long enough password\n")
    assert "postmaster@new.test and abuse@new.test go to boss@new.test" in out
    out = _cli(clean_db, "user", "add", "second@new.test", stdin="a long enough password\n")
    assert "postmaster" not in out
