"""Least-privilege PostgreSQL roles for the services: what each may read and write, as SQL.

One NOLOGIN role per service (``postroom_msa``, ...) holds exactly the table,
column and sequence privileges that service's store statements need;
operators give it a password and LOGIN (or make login roles members of it)
and point that service's POSTROOM_DATABASE_URL at it (docs/operations.md).
The owner of the schema (the role `postroom db upgrade` runs as) keeps every
right: migrations and the operator CLI use it.

What matters most is what a role cannot do: only the services that send mail
read DKIM private keys (the msa signs submissions; the mta, mda and dmarc sign
the bounces, replies and reports they write, and the mda ARC-seals forwards:
postroom.outgoing), only the login services (msa, pop3, imap, managesieve) read password
hashes, SCRAM secrets and app-password hashes, no service reads TOTP secrets or
recovery codes, the access services (pop3, imap) never write the spool, and no
service changes accounts, domains, aliases, keys or the schema. Foreign-key
checks and ON DELETE actions run as the table owner, so a role needs no rights
on the tables they reach. The table is checked against real PostgreSQL by
tests/integration/test_db_roles.py, which runs each service's store work as
its role.

:func:`statements` is idempotent: re-running it revokes what a role had and
grants the table anew, so `postroom db upgrade` refreshes the roles that
exist after a migration adds a table (a new table is granted to no one until
it is listed here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

ROLE_PREFIX = "postroom_"
SCHEMA = "public"

# users without the login secrets (password_hash, scram_secrets)
_USERS_PUBLIC = "SELECT (id, domain_id, localpart, address, quota_bytes, quota_messages, active, " \
    "created_at, is_admin)"
# what a login needs: its columns, and rewriting an old or imported password hash (with the
# SCRAM secrets an imported account lacks; users.authenticate); never the TOTP secret, which
# only the web console (the schema owner) reads
_USERS_LOGIN = ("SELECT (id, domain_id, localpart, address, password_hash, scram_secrets, "
                "quota_bytes, quota_messages, active, created_at, is_admin, totp_enabled)",
                "UPDATE (password_hash, scram_secrets)")
# a login checks app passwords and notes their last use (postroom.store.apppasswords)
_APP_PASSWORDS_LOGIN = ("SELECT", "UPDATE (last_used_at, last_used_ip)")
# the content-addressed blob store, without reading other people's mail
_BLOBS_WRITE_ONLY = ("SELECT (id, sha256, size)", "INSERT")
# delete_orphans asks whether a queued message (or a mailbox entry) still refers to a blob
_SPOOL_REFERENCES = ("SELECT (message_id)",)

# service -> table -> privileges (a privilege may name columns: "SELECT (a, b)")
GRANTS: dict[str, dict[str, tuple[str, ...]]] = {
    "msa": {
        "domains": ("SELECT",),
        "aliases": ("SELECT",),
        "users": _USERS_LOGIN,
        "app_passwords": _APP_PASSWORDS_LOGIN,
        "dkim_keys": ("SELECT",),
        "messages": _BLOBS_WRITE_ONLY,
        "spool_messages": ("SELECT", "INSERT"),
        "spool_recipients": ("SELECT", "INSERT"),
        # the certificate by ACME, loaded into the TLS listeners (migration 0017)
        "tls_certificates": ("SELECT",),
    },
    "mta": {
        "domains": ("SELECT",),
        # DSN bounces and delay notices are signed (postroom.outgoing)
        "dkim_keys": ("SELECT",),
        "aliases": ("SELECT",),
        "users": (_USERS_PUBLIC,),
        "messages": ("SELECT", "INSERT", "DELETE"),
        "spool_messages": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "spool_recipients": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "spool_attempts": ("SELECT", "INSERT"),
        # the retention job deletes a blob only when no mailbox holds it
        "mailbox_entries": ("SELECT (message_id)",),
        # smarthost routes per recipient domain (written only by `postroom relay`)
        "relay_transports": ("SELECT",),
        # one row per outbound TLS session (RFC 8460), read by the dmarc service's report
        "tls_results": ("INSERT",),
        # the certificate by ACME, loaded into the TLS listeners (migration 0017)
        "tls_certificates": ("SELECT",),
    },
    "dmarc": {
        "domains": ("SELECT",),
        # aggregate reports are signed (postroom.outgoing)
        "dkim_keys": ("SELECT",),
        "users": (_USERS_PUBLIC,),
        "dmarc_results": ("SELECT", "INSERT", "DELETE"),
        "dmarc_incoming_reports": ("SELECT", "INSERT"),
        # TLS reports (RFC 8460): ours built from the relay's results (purged after), others'
        # read from the report mailbox
        "tls_results": ("SELECT", "DELETE"),
        "tls_incoming_reports": ("SELECT", "INSERT"),
        # incoming aggregate reports are read from an account's mailbox
        "mailboxes": ("SELECT",),
        "mailbox_entries": ("SELECT",),
        "messages": ("SELECT", "INSERT"),
        # outgoing aggregate reports are spooled as local mail
        "spool_messages": ("SELECT", "INSERT"),
        "spool_recipients": ("SELECT", "INSERT"),
        # the rspamd learn worker: done, retried and re-signalled requests
        "learn_requests": ("SELECT", "UPDATE", "DELETE"),
    },
    "mda": {
        "domains": ("SELECT",),
        # vacation replies are signed, forwards ARC-sealed (postroom.outgoing)
        "dkim_keys": ("SELECT",),
        "aliases": ("SELECT",),
        "users": (_USERS_PUBLIC,),
        "mail_rules": ("SELECT",),
        # the account's active Sieve script, run at delivery (migration 0014)
        "sieve_scripts": ("SELECT",),
        "vacation_replies": ("SELECT", "INSERT", "UPDATE"),
        # INSERT: Sieve's fileinto :create (RFC 5490) makes the mailbox it names
        "mailboxes": ("SELECT", "INSERT", "UPDATE"),
        "mailbox_entries": ("SELECT", "INSERT"),
        "messages": ("SELECT", "INSERT", "UPDATE"),
        "spool_messages": ("SELECT", "INSERT"),
        "spool_recipients": ("SELECT", "INSERT", "UPDATE"),
        "spool_attempts": ("SELECT", "INSERT"),
        "message_texts": ("SELECT", "INSERT"),
    },
    "pop3": {
        "domains": ("SELECT",),
        "users": _USERS_LOGIN,
        "app_passwords": _APP_PASSWORDS_LOGIN,
        "mailboxes": ("SELECT", "UPDATE"),
        "mailbox_entries": ("SELECT", "DELETE"),
        "expunged_entries": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "messages": ("SELECT", "DELETE"),
        "spool_messages": _SPOOL_REFERENCES,
        # the certificate by ACME, loaded into the TLS listeners (migration 0017)
        "tls_certificates": ("SELECT",),
    },
    "managesieve": {
        "domains": ("SELECT",),
        "users": _USERS_LOGIN,
        "app_passwords": _APP_PASSWORDS_LOGIN,
        # the one service that writes scripts (RFC 5804; `postroom sieve` runs as the owner)
        "sieve_scripts": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    },
    "imap": {
        "domains": ("SELECT",),
        "users": _USERS_LOGIN,
        "app_passwords": _APP_PASSWORDS_LOGIN,
        "mailboxes": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "mailbox_entries": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "expunged_entries": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "server_annotations": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "mailbox_annotations": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "messages": ("SELECT", "INSERT", "DELETE"),
        "spool_messages": _SPOOL_REFERENCES,
        "message_texts": ("SELECT", "INSERT"),
        # SEARCH HEADER's pre-tests (0019; a trigger, as the owner, writes it)
        "message_headers": ("SELECT",),
        # a COPY/MOVE into or out of Junk records its learning requests (never reads them)
        "learn_requests": ("INSERT",),
        # the certificate by ACME, loaded into the TLS listeners (migration 0017)
        "tls_certificates": ("SELECT",),
    },
}
SERVICES: tuple[str, ...] = tuple(GRANTS)
# tables no service role gets: only the schema owner uses them, i.e. the operator CLI and the
# web console and REST API, which change accounts and domains anyway (0013), TOTP recovery
# codes (0016), and the ACME account key and HTTP-01 answers, which only the web service's
# renewer and the CLI use (0017)
OWNER_ONLY: frozenset[str] = frozenset({"domain_managers", "api_tokens", "web_sessions",
                                        "totp_recovery_codes", "acme_account",
                                        "acme_challenges"})
# every service checks the schema revision (and the compatibility window) at start-up
COMMON: dict[str, tuple[str, ...]] = {"alembic_version": ("SELECT",),
                                      "schema_compat": ("SELECT",)}
# sequences beyond the id of each table a role inserts into: setval/nextval of CREATE mailbox
# (imap) and of Sieve's fileinto :create (mda)
EXTRA_SEQUENCES: dict[str, dict[str, str]] = {
    "imap": {"mailbox_uidvalidity_seq": "USAGE, UPDATE"},
    "mda": {"mailbox_uidvalidity_seq": "USAGE, UPDATE"},
}


def role_name(service: str, prefix: str = ROLE_PREFIX) -> str:
    return prefix + service


def _check_prefix(prefix: str) -> str:
    # role names are written into SQL (GRANT cannot take them as parameters)
    if not prefix or not all(c.isascii() and (c.isalnum() or c == "_") for c in prefix) \
            or not prefix[0].isalpha() or prefix.lower() != prefix:
        raise ValueError(f"role prefix {prefix!r}: lowercase letters, digits and _ only")
    return prefix


def _serial_tables() -> set[str]:
    """Tables whose ``id`` comes from a sequence named ``<table>_id_seq`` (SERIAL)."""
    from postroom.store.models import Base

    return {name for name, table in Base.metadata.tables.items()
            if "id" in table.c and table.c.id.primary_key and table.c.id.autoincrement in (
                True, "auto")}


def statements(services: Iterable[str] = SERVICES, *, prefix: str = ROLE_PREFIX,
               create: bool = True) -> list[str]:
    """The SQL that gives each service's role (``prefix`` + service) exactly its privileges
    (run in one transaction as the schema owner); ``create`` adds missing NOLOGIN roles."""
    serial = _serial_tables()
    prefix = _check_prefix(prefix)
    sql = []
    for service in services:
        grants: Mapping[str, tuple[str, ...]] = {**COMMON, **GRANTS[service]}
        role = role_name(service, prefix)
        if create:
            sql.append(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                       f"'{role}') THEN CREATE ROLE {role} NOLOGIN; END IF; END $$")
        # revoking a table's privileges revokes its column privileges too
        sql.append(f"REVOKE ALL ON ALL TABLES IN SCHEMA {SCHEMA} FROM {role}")
        sql.append(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {SCHEMA} FROM {role}")
        sql.append(f"REVOKE CREATE ON SCHEMA {SCHEMA} FROM {role}")
        sql.append(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {role}")
        for table, privileges in grants.items():
            for privilege in privileges:
                verb, _, columns = privilege.partition(" ")
                sql.append(f"GRANT {verb} {columns} ON TABLE {table} TO {role}".replace("  ", " "))
            if table in serial and any(p.startswith("INSERT") for p in privileges):
                sql.append(f"GRANT USAGE ON SEQUENCE {table}_id_seq TO {role}")
        for sequence, rights in EXTRA_SEQUENCES.get(service, {}).items():
            sql.append(f"GRANT {rights} ON SEQUENCE {sequence} TO {role}")
    return sql


def script(services: Iterable[str] = SERVICES, *, prefix: str = ROLE_PREFIX) -> str:
    """:func:`statements` as a psql script (`postroom db roles` prints it)."""
    lines = ["-- Postroom: least-privilege roles for the services (docs/operations.md).",
             "-- Run as the owner of the schema; then, per service:",
             f"--   ALTER ROLE {prefix}msa WITH LOGIN PASSWORD '...';",
             "BEGIN;"]
    lines += [s + ";" for s in statements(services, prefix=prefix)]
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


# every service role, whatever its prefix, can read alembic_version in this database
_GRANTEES = text(
    "SELECT r.rolname FROM pg_class c, aclexplode(c.relacl) a JOIN pg_roles r"
    " ON r.oid = a.grantee WHERE c.oid = CAST('alembic_version' AS regclass)"
    " AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner")


def existing(connection: Connection) -> list[tuple[str, str]]:
    """(service, prefix) of every service role granted in this database."""
    found = []
    for name in connection.execute(_GRANTEES).scalars():
        for service in SERVICES:
            prefix = str(name)[:-len(service)]
            if str(name).endswith(service) and prefix:
                try:
                    found.append((service, _check_prefix(prefix)))
                except ValueError:
                    continue
    return sorted(found)


def apply(connection: Connection, services: Iterable[str] = SERVICES, *,
          prefix: str = ROLE_PREFIX, create: bool = True) -> None:
    """Run :func:`statements` on ``connection`` (the caller commits)."""
    for statement in statements(services, prefix=prefix, create=create):
        connection.execute(text(statement))


def apply_url(url: str, services: Iterable[str] = SERVICES, *,
              prefix: str = ROLE_PREFIX) -> list[str]:
    """Create the missing roles and grant each its privileges, in one transaction on the
    database at ``url`` (as the schema owner); the role names."""
    done = list(services)
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            apply(connection, done, prefix=prefix)
    finally:
        engine.dispose()
    return [role_name(s, prefix) for s in done]


def refresh_url(url: str) -> list[str]:
    """Re-grant the service roles already granted in this database (after a migration: a
    new table, a changed grant); creates none. The role names."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            found = existing(connection)
            for service, prefix in found:
                apply(connection, [service], prefix=prefix, create=False)
    finally:
        engine.dispose()
    return [role_name(s, p) for s, p in found]
