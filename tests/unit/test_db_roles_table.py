"""The service roles' privilege table (postroom.store.roles) against the schema it grants on."""

from __future__ import annotations

import re

import pytest

from postroom.store import roles
from postroom.store.models import Base

TABLES = Base.metadata.tables
SECRETS = {"dkim_keys": {"private_key_pem"},
           "users": {"password_hash", "scram_secrets", "totp_secret"},
           "app_passwords": {"hash"}}


def _columns(privilege: str, table: str) -> set[str]:
    """The columns a privilege covers (all of them when it names none)."""
    named = re.search(r"\((.*)\)", privilege)
    if named is None:
        return {c.name for c in TABLES[table].c}
    return {c.strip() for c in named.group(1).split(",")}


def _readers(table: str, column: str) -> set[str]:
    return {service for service, grants in roles.GRANTS.items()
            for privilege in grants.get(table, ())
            if privilege.startswith("SELECT") and column in _columns(privilege, table)}


def test_every_granted_table_and_column_exists():
    for grants in roles.GRANTS.values():
        for table, privileges in grants.items():
            assert table in TABLES, table
            for privilege in privileges:
                assert privilege.split(" ")[0] in ("SELECT", "INSERT", "UPDATE", "DELETE")
                assert _columns(privilege, table) <= {c.name for c in TABLES[table].c}


def test_every_table_is_someones_decision():
    """A migration that adds a table must say which services get it (else none can use it)."""
    granted = {t for grants in roles.GRANTS.values() for t in grants} | set(roles.COMMON)
    # alembic_version is Alembic's own table, not a model
    assert set(TABLES) == (granted | roles.OWNER_ONLY) - {"alembic_version"}


def test_no_service_role_gets_an_owner_only_table():
    """Console access (tokens, sessions, managers) is for the schema owner alone."""
    granted = {t for grants in roles.GRANTS.values() for t in grants} | set(roles.COMMON)
    assert not granted & roles.OWNER_ONLY


def test_only_the_services_that_send_mail_read_dkim_private_keys():
    # the msa signs submissions; mta, mda and dmarc sign what they write (postroom.outgoing)
    assert _readers("dkim_keys", "private_key_pem") == {"msa", "mta", "mda", "dmarc"}


@pytest.mark.parametrize("column", ["password_hash", "scram_secrets"])
def test_only_the_login_services_read_password_secrets(column):
    assert _readers("users", column) == {"msa", "pop3", "imap", "managesieve"}


def test_no_service_writes_accounts_domains_aliases_or_keys():
    for service, grants in roles.GRANTS.items():
        for table in ("domains", "aliases", "dkim_keys", "mail_rules"):
            assert all(p.startswith("SELECT") for p in grants.get(table, ())), (service, table)
        if service != "managesieve":  # the one service that writes scripts (RFC 5804)
            assert all(p.startswith("SELECT") for p in grants.get("sieve_scripts", ())), service
        # a login rewrites an old or imported hash (and adds the SCRAM secrets it lacked)
        assert set(grants.get("users", ())) <= {*roles._USERS_LOGIN, roles._USERS_PUBLIC}, service


def test_only_the_login_services_read_app_password_hashes_and_note_their_use():
    assert _readers("app_passwords", "hash") == {"msa", "pop3", "imap", "managesieve"}
    for service in ("msa", "pop3", "imap", "managesieve"):
        assert roles.GRANTS[service]["app_passwords"] == ("SELECT",
                                                          "UPDATE (last_used_at, last_used_ip)")


def test_no_service_reads_totp_secrets_or_recovery_codes():
    assert _readers("users", "totp_secret") == set()
    assert _readers("users", "totp_last_step") == set()
    assert "totp_recovery_codes" in roles.OWNER_ONLY


@pytest.mark.parametrize("service", ["pop3", "imap", "managesieve"])
def test_the_access_services_never_write_the_spool(service):
    for table in ("spool_messages", "spool_recipients", "spool_attempts"):
        assert all(p.startswith("SELECT") for p in roles.GRANTS[service].get(table, ()))


def test_the_script_is_one_transaction_and_names_every_role():
    script = roles.script()
    assert script.count("BEGIN;") == 1 and script.rstrip().endswith("COMMIT;")
    for service in roles.SERVICES:
        assert f"CREATE ROLE postroom_{service} NOLOGIN" in script


@pytest.mark.parametrize("prefix", ["", "Postroom_", "a;drop role x;", "1abc_", "pré_"])
def test_a_prefix_that_is_not_a_plain_name_is_refused(prefix):
    with pytest.raises(ValueError, match="role prefix"):
        roles.statements(prefix=prefix)


def test_only_the_tls_services_read_the_acme_certificate_key():
    assert _readers("tls_certificates", "key_pem") == {"msa", "mta", "pop3", "imap"}


def test_the_acme_account_key_and_challenges_are_the_owners_alone():
    assert {"acme_account", "acme_challenges"} <= roles.OWNER_ONLY
