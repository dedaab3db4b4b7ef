"""Least-privilege database roles against real PostgreSQL: each service's store work runs as its
role (postroom.store.roles), and what a role must not do is refused by the server.

Roles belong to the whole PostgreSQL server, so the module's roles get a prefix of their own
and are dropped with its database at the end.
"""

from __future__ import annotations

import functools
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from postroom.auth.passwords import hash_password
from postroom.store import aliases, dkim, domains, roles, spool, users
from postroom.store import dmarc as dmarc_store
from postroom.store.db import Database
from postroom.store.migrate import upgrade
from postroom.store.queueid import new_queue_id
from tests.support.db import create_test_database, drop_test_database, server_url
from tests.support.procs import base_env

cheap = functools.partial(hash_password, ln=4)
MESSAGE = (b"From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\nSubject: hi\r\n"
           b"Message-ID: <m1@remote.test>\r\n\r\nHello Alice\r\n")


@dataclass
class RolesDB:
    url: str
    prefix: str
    owner: Database

    def role_url(self, service: str) -> str:
        return make_url(self.url).set(username=self.prefix + service).render_as_string(
            hide_password=False)

    def as_role(self, service: str) -> Database:
        return Database(self.role_url(service), pool_size=1)


def drop_roles(prefix: str) -> None:
    admin = create_engine(server_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for service in roles.SERVICES:
                conn.execute(text(f'DROP ROLE IF EXISTS "{prefix}{service}"'))
    finally:
        admin.dispose()


@pytest.fixture(scope="module")
def rdb() -> Iterator[RolesDB]:
    url = create_test_database("postroom_test_roles_")
    prefix = f"prtest_{secrets.token_hex(4)}_"
    owner = Database(url, pool_size=2)
    try:
        upgrade(url)
        assert roles.apply_url(url, prefix=prefix) == [prefix + s for s in roles.SERVICES]
        engine = create_engine(url)
        with engine.begin() as conn:
            for service in roles.SERVICES:
                # trust authentication on the test server: LOGIN is all a role needs here
                conn.execute(text(f"ALTER ROLE {prefix}{service} LOGIN"))
        engine.dispose()
        owner.run_sync(domains.add_domain, "example.test")
        for name in ("alice", "bob"):
            owner.run_sync(users.add_user, f"{name}@example.test", "pw", hash_fn=cheap)
        # postmaster@ -> alice@ is made by add_user: alice is the domain's first user
        for name in ("alice", "bob"):
            owner.run_sync(aliases.add_alias, "team@example.test", f"{name}@example.test")
        owner.run_sync(dkim.generate_key, "example.test", "ed25519-sha256", "e1")
        yield RolesDB(url, prefix, owner)
    finally:
        owner.dispose()
        drop_test_database(url)
        drop_roles(prefix)


def run_as(rdb: RolesDB, service: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    database = rdb.as_role(service)
    try:
        return database.run_sync(fn, *args, **kwargs)
    finally:
        database.dispose()


def spool_inbound(rdb: RolesDB, *addresses: str, message: bytes = MESSAGE) -> tuple[str, list[int]]:
    qid = rdb.owner.run_sync(spool.create_spool, kind="inbound", mail_from="bob@remote.test",
                             recipients=[(a, "deliver", None, None) for a in addresses],
                             message=message)
    return qid, [r.id for r in rdb.owner.run_sync(spool.get_spool, qid).recipients]


# --- each service's store work, as its role


def test_msa_role_logs_in_reads_its_signing_keys_and_spools(rdb):
    from postroom_msa import lookups

    assert run_as(rdb, "msa", users.authenticate, "alice@example.test", "pw").address == \
        "alice@example.test"
    keys = run_as(rdb, "msa", lookups.signing_keys, "example.test")
    assert [k.selector for k in keys] == ["e1"] and "PRIVATE KEY" in keys[0].private_key
    assert run_as(rdb, "msa", lookups.classify_recipient, "bob@example.test") == lookups.LOCAL
    assert run_as(rdb, "msa", lookups.not_owned, 1, "alice@example.test",
                  ["postmaster@example.test", "bob@example.test"]) == ["bob@example.test"]
    spooled = run_as(rdb, "msa", lookups.spool_submission, queue_id=new_queue_id(),
                     mail_from="alice@example.test",
                     recipients=[spool.NewRecipient("friend@remote.test", "outbound")],
                     message=MESSAGE + secrets.token_bytes(4).hex().encode(), size=None,
                     body=None, smtputf8=False, ret=None, envid=None, peer_ip="127.0.0.1",
                     helo="client", auth_user="alice@example.test",
                     enqueued_at=datetime.now(UTC))
    assert len(spooled.recipient_ids) == 1


def test_mta_role_spools_inbound_relays_records_and_purges(rdb):
    from postroom_mta import inbound, worker_store

    assert run_as(rdb, "mta", inbound.lookup_recipient, "alice", "example.test", "+") == \
        ("ok", "alice@example.test")
    qid = rdb.owner.run_sync(spool.create_spool, kind="submission",
                             mail_from="alice@example.test",
                             recipients=[("bob@example.test", "outbound", None, None),
                                         ("carol@remote.test", "outbound", None, None)],
                             message=MESSAGE + b"relay\r\n")
    ids = [r.id for r in rdb.owner.run_sync(spool.get_spool, qid).recipients]
    now = datetime.now(UTC)
    work = run_as(rdb, "mta", worker_store.load_work, qid, ids, now)
    assert [r.address for r in work.remote] == ["carol@remote.test"] and len(work.local) == 1
    policy = worker_store.Policy(hostname="mx.example.test", retry_initial=60, retry_max=600,
                                 queue_lifetime=86400)
    remote_id = work.remote[0].id
    run_as(rdb, "mta", worker_store.record_results, qid,
           [worker_store.Result(remote_id, "deferred", "451 4.3.0 later")], now, policy)
    run_as(rdb, "mta", worker_store.record_results, qid,
           [worker_store.Result(remote_id, "failed", "550 5.1.1 no such user")],
           now + timedelta(minutes=5), policy)
    # the bounce to alice is spooled by the mta role too (kind bounce)
    assert run_as(rdb, "mta", worker_store.failed_queue_ids) is not None
    # the reconciler's claim of lost work
    run_as(rdb, "mta", spool.due_recipients, now + timedelta(days=1), now + timedelta(days=1),
           10)
    # retention: finished messages, their recipients and history, and orphaned blobs go
    for rid in ids:
        rdb.owner.run_sync(spool.mark_delivered, rid)
    assert run_as(rdb, "mta", spool.purge_finished, datetime.now(UTC) + timedelta(days=1)) >= 1


def test_mda_role_delivers_into_a_mailbox(rdb):
    from postroom_mda.delivery import (
        DELIVERED,
        EXPANDED,
        Options,
        deliver_recipient,
        ensure_metadata,
    )

    qid, (rid,) = spool_inbound(rdb, "alice@example.test", message=MESSAGE + b"mda\r\n")
    run_as(rdb, "mda", ensure_metadata, qid)
    outcome = run_as(rdb, "mda", deliver_recipient, rid, Options(), datetime.now(UTC))
    assert outcome.result == DELIVERED and outcome.mailbox == "INBOX"
    # an alias of two accounts expands into new spool recipients (the general path)
    _qid, (rid,) = spool_inbound(rdb, "team@example.test", message=MESSAGE + b"alias\r\n")
    outcome = run_as(rdb, "mda", deliver_recipient, rid, Options(), datetime.now(UTC))
    assert outcome.result == EXPANDED and len(outcome.children) == 2
    for child in outcome.children:
        assert run_as(rdb, "mda", deliver_recipient, child, Options(),
                      datetime.now(UTC)).result == DELIVERED


@pytest.mark.parametrize("service", ["msa", "mta", "pop3", "imap"])
def test_tls_service_roles_read_the_certificate_by_acme(rdb, service):
    from postroom.store import acme

    rdb.owner.run_sync(acme.save_certificate, acme.DEFAULT_CERTIFICATE, "CERT", "KEY",
                       datetime.now(UTC), ["mx.example.test"])
    found = run_as(rdb, service, acme.get_certificate)
    assert (found.cert_pem, found.key_pem) == ("CERT", "KEY")


def test_mda_role_runs_a_sieve_script(rdb):
    from postroom.store import sieve
    from postroom_mda.delivery import DELIVERED, Options, deliver_recipient, ensure_metadata

    alice = rdb.owner.run_sync(users.get_user, "alice@example.test")
    rdb.owner.run_sync(sieve.put_script, alice.id, "main",
                       'require ["fileinto", "mailbox", "vacation", "copy", "imap4flags"];\n'
                       'fileinto :create :flags "\\\\Seen" "Made/Here";\n'
                       'redirect :copy "elsewhere@remote.test";\n'
                       'vacation "away";\n')
    rdb.owner.run_sync(sieve.set_active, alice.id, "main")
    qid, (rid,) = spool_inbound(rdb, "alice@example.test", message=MESSAGE + b"sieve\r\n")
    run_as(rdb, "mda", ensure_metadata, qid)
    outcome = run_as(rdb, "mda", deliver_recipient, rid, Options(), datetime.now(UTC))
    assert outcome.result == DELIVERED and outcome.mailbox == "Made/Here"
    assert len(outcome.envelopes) == 2  # the redirect and the vacation reply


def test_pop3_role_lists_retrieves_and_deletes(rdb):
    from postroom_mda.delivery import Options, deliver_recipient
    from postroom_pop3 import maildrop

    _qid, (rid,) = spool_inbound(rdb, "bob@example.test", message=MESSAGE + b"pop3\r\n")
    rdb.owner.run_sync(deliver_recipient, rid, Options(), datetime.now(UTC))
    bob = rdb.owner.run_sync(users.get_user, "bob@example.test")
    assert run_as(rdb, "pop3", users.authenticate, "bob@example.test", "pw") is not None
    snapshot = run_as(rdb, "pop3", maildrop.load_snapshot, bob.id)
    uid = snapshot.entries[-1][0]
    assert run_as(rdb, "pop3", maildrop.fetch_message, snapshot.mailbox_id, uid).endswith(
        b"pop3\r\n")
    removed, _modseq = run_as(rdb, "pop3", maildrop.expunge_uids, snapshot.mailbox_id, [uid])
    assert removed == [uid]


def test_managesieve_role_logs_in_and_manages_scripts(rdb):
    from postroom_managesieve import scripts

    bob = rdb.owner.run_sync(users.get_user, "bob@example.test")
    assert run_as(rdb, "managesieve", users.scram_secrets_for, "bob@example.test") is not None
    assert run_as(rdb, "managesieve", users.get_active_user, "bob@example.test") is not None
    run_as(rdb, "managesieve", scripts.put, bob.id, "roles", "keep;\r\n", 5, 4096)
    run_as(rdb, "managesieve", scripts.rename, bob.id, "roles", "roles2")
    run_as(rdb, "managesieve", scripts.set_active, bob.id, "roles2")
    assert ("roles2", True) in run_as(rdb, "managesieve", scripts.listing, bob.id)
    assert run_as(rdb, "managesieve", scripts.get, bob.id, "roles2") == "keep;\r\n"
    run_as(rdb, "managesieve", scripts.set_active, bob.id, None)
    run_as(rdb, "managesieve", scripts.delete, bob.id, "roles2")


def test_imap_role_creates_appends_stores_and_deletes(rdb):
    from postroom_imap import mailstore

    alice = rdb.owner.run_sync(users.get_user, "alice@example.test")
    run_as(rdb, "imap", mailstore.create, alice.id, "Projects", None)
    _validity, uid, _mbox, _modseq = run_as(rdb, "imap", mailstore.append, alice.id, "Projects",
                                            MESSAGE + b"imap\r\n", ["\\Seen"], None)
    assert uid == 1
    assert run_as(rdb, "imap", mailstore.status, alice.id, "Projects").messages == 1
    # SELECT takes the recent mark (compare-and-set); EXPUNGE's one statement removes the
    # entry, remembers it for QRESYNC and deletes the blob
    state = run_as(rdb, "imap", mailstore.select, alice.id, "Projects", True)
    assert state.recent_from == 1
    run_as(rdb, "imap", mailstore.store, state.mailbox_id, [uid], "+", ["\\Deleted"], None)
    assert run_as(rdb, "imap", mailstore.expunge, state.mailbox_id, None)[0] == [uid]
    run_as(rdb, "imap", mailstore.rename, alice.id, "Projects", "Old projects")
    run_as(rdb, "imap", mailstore.delete, alice.id, "Old projects")
    assert run_as(rdb, "imap", mailstore.quota, alice.id) is not None


def test_imap_role_records_learning_requests_and_dmarc_role_works_them(rdb):
    from postroom.store import learning as stored
    from postroom_imap import mailstore

    bob = rdb.owner.run_sync(users.get_user, "bob@example.test")
    _validity, uid, mbox, _modseq = run_as(rdb, "imap", mailstore.append, bob.id, "INBOX",
                                           MESSAGE + b"learn\r\n", [], None)
    result = run_as(rdb, "imap", mailstore.copy, bob.id, mbox, [uid], "Junk", True, True)
    assert result.learn_class == "spam"
    [message_id] = result.message_ids
    assert run_as(rdb, "dmarc", stored.pending, bob.id, message_id, "spam")
    now = datetime.now(UTC)
    run_as(rdb, "dmarc", stored.failed, bob.id, message_id, "spam", now)
    [due] = run_as(rdb, "dmarc", stored.due, now + timedelta(seconds=1),
                   now + timedelta(seconds=1), 10)
    assert (due.message_id, due.attempts) == (message_id, 1)
    assert run_as(rdb, "dmarc", stored.message_for_learning, bob.id, message_id) is not None
    run_as(rdb, "dmarc", stored.finish, bob.id, message_id, "spam")
    assert not run_as(rdb, "dmarc", stored.pending, bob.id, message_id, "spam")


def test_dmarc_role_records_reports_and_purges(rdb):
    from postroom_dmarc.reports import ReportConfig, Target, Targets, spool_report

    begin = datetime(2026, 1, 1, tzinfo=UTC)
    record = dmarc_store.DmarcRecord(
        source_ip="192.0.2.1", header_from="remote.test", spf_result="pass",
        dkim_result="none", dmarc_result="pass", disposition="none",
        reporting_domain="remote.test", received_at=begin + timedelta(hours=1))
    run_as(rdb, "dmarc", dmarc_store.record_results, [record])
    run_as(rdb, "dmarc", dmarc_store.record_result, record)
    config = ReportConfig(receiver="mx.example.test", org_name="example",
                          sender="dmarc-noreply@example.test", interval=86400)
    outcome = run_as(rdb, "dmarc", spool_report, "remote.test", begin,
                     begin + timedelta(days=1),
                     Targets(record=None, accepted=(Target("rua@remote.test"),)), config,
                     datetime.now(UTC))
    assert outcome.status == "spooled"
    assert run_as(rdb, "dmarc", dmarc_store.unscanned_report_messages,
                  "alice@example.test") is not None
    assert run_as(rdb, "dmarc", dmarc_store.store_incoming_report, "0" * 64, None,
                  "not a report") == "refused"
    assert run_as(rdb, "dmarc", dmarc_store.purge_results, begin + timedelta(days=2)) == 2


def test_mta_records_tls_results_and_dmarc_reports_reads_and_purges_them(rdb):
    from postroom.mailauth.tlsrpt import Record
    from postroom.outgoing import Outgoing
    from postroom.store import tlsreports
    from postroom_dmarc.tlsreports import TLSReportConfig
    from postroom_dmarc.tlsreports import spool_report as spool_tls_report

    begin = datetime(2026, 1, 1, tzinfo=UTC)
    run_as(rdb, "mta", tlsreports.record_results, [tlsreports.TLSResult(
        "remote.test", "sts", "mx.remote.test", "certificate-expired", ("version: STSv1",),
        "192.0.2.1", "192.0.2.2", "expired", begin + timedelta(hours=1))])
    config = TLSReportConfig(submitter="mx.example.test", org_name="example",
                             sender="tlsrpt-noreply@example.test",
                             contact="postmaster@example.test")
    outcome = run_as(rdb, "dmarc", spool_tls_report, "remote.test", begin,
                     begin + timedelta(days=1), Record(("mailto:tls@remote.test",)), config,
                     datetime.now(UTC), Outgoing("mx.example.test"))
    assert outcome.status == "spooled"
    assert run_as(rdb, "dmarc", tlsreports.store_incoming_report, "1" * 64, None,
                  "not a report") == "refused"
    assert run_as(rdb, "dmarc", tlsreports.incoming_reports, "example.test") == []
    assert run_as(rdb, "dmarc", tlsreports.purge_results, begin + timedelta(days=2)) == 1


# --- what each role must not do


FORBIDDEN = [
    # only the services that send mail read DKIM private keys (the access services never)
    *[(s, "SELECT private_key_pem FROM dkim_keys") for s in ("imap", "pop3", "managesieve")],
    # managesieve reads no mail and writes no queue; only it writes Sieve scripts
    ("managesieve", "SELECT blob FROM messages"),
    ("managesieve", "SELECT * FROM mailbox_entries"),
    ("managesieve", "DELETE FROM spool_recipients"),
    ("mda", "DELETE FROM sieve_scripts"),
    ("imap", "UPDATE sieve_scripts SET active = false"),
    # only the login services read password hashes and SCRAM secrets
    *[(s, "SELECT password_hash FROM users") for s in ("mda", "mta", "dmarc")],
    ("mta", "SELECT scram_secrets FROM users"),
    # the access services never write the spool
    ("pop3", "INSERT INTO spool_messages (queue_id, kind, mail_from, message_id) "
             "VALUES ('X', 'inbound', '', 1)"),
    ("imap", "UPDATE spool_recipients SET state = 'delivered'"),
    ("pop3", "DELETE FROM spool_recipients"),
    # the msa stores blobs but cannot read other people's mail, nor touch mailboxes
    ("msa", "SELECT blob FROM messages"),
    ("msa", "DELETE FROM mailbox_entries"),
    ("mta", "UPDATE mailbox_entries SET flags = '{}'"),
    ("dmarc", "DELETE FROM mailbox_entries"),
    # imap records learning requests, only the learn worker reads or removes them
    ("imap", "SELECT * FROM learn_requests"),
    ("imap", "DELETE FROM learn_requests"),
    ("dmarc", "INSERT INTO learn_requests (user_id, message_id, klass) VALUES (1, 1, 'spam')"),
    # nobody but the owner changes accounts, keys, domains, aliases or the schema
    *[(s, "UPDATE users SET active = false") for s in roles.SERVICES],
    *[(s, "UPDATE dkim_keys SET active = false") for s in roles.SERVICES],
    *[(s, "INSERT INTO domains (name) VALUES ('evil.test')") for s in roles.SERVICES],
    *[(s, "DELETE FROM aliases") for s in roles.SERVICES],
    *[(s, "DELETE FROM alembic_version") for s in roles.SERVICES],
    *[(s, "CREATE TABLE stolen (x text)") for s in roles.SERVICES],
    # TOTP secrets and recovery codes are the web console's (the owner's) alone; app passwords
    # are made and revoked by the owner, the login services only note their use
    *[(s, "SELECT totp_secret FROM users") for s in roles.SERVICES],
    *[(s, "SELECT * FROM totp_recovery_codes") for s in roles.SERVICES],
    *[(s, "UPDATE app_passwords SET revoked_at = NULL") for s in ("msa", "pop3", "imap")],
    *[(s, "SELECT hash FROM app_passwords") for s in ("mta", "mda", "dmarc")],
    # the ACME account key and challenge answers are the owner's (the web renewer, the CLI);
    # a TLS service reads the certificate and never writes it
    *[(s, "SELECT key_pem FROM acme_account") for s in roles.SERVICES],
    *[(s, "SELECT token FROM acme_challenges") for s in roles.SERVICES],
    *[(s, "DELETE FROM tls_certificates") for s in roles.SERVICES],
    ("dmarc", "SELECT key_pem FROM tls_certificates"),
    ("mda", "SELECT key_pem FROM tls_certificates"),
]


@pytest.mark.parametrize(("service", "sql"), FORBIDDEN,
                         ids=[f"{s}: {q.split(' (')[0]}" for s, q in FORBIDDEN])
def test_the_server_refuses(rdb, service, sql):
    engine = create_engine(rdb.role_url(service))
    try:
        with engine.connect() as conn, pytest.raises(ProgrammingError) as refused:
            conn.execute(text(sql))
    finally:
        engine.dispose()
    assert refused.value.orig is not None
    assert refused.value.orig.pgcode == "42501", refused.value  # insufficient_privilege


@pytest.mark.parametrize(("service", "protocol"), [("msa", "submission"), ("pop3", "pop3"),
                                                    ("imap", "imap"),
                                                    ("managesieve", "managesieve")])
def test_login_roles_log_in_with_an_app_password_and_note_its_use(rdb, service, protocol):
    from postroom.store import apppasswords

    name = f"device-{service}"
    secret = rdb.owner.run_sync(apppasswords.create, "bob@example.test", name, None,
                                hash_fn=cheap)
    login = run_as(rdb, service, apppasswords.authenticate, "bob@example.test", secret,
                   protocol=protocol, peer="192.0.2.1")
    assert login.user is not None and login.app_password == name
    found = {i.name: i for i in rdb.owner.run_sync(apppasswords.list_app_passwords,
                                                   "bob@example.test")}
    assert found[name].last_used_ip == "192.0.2.1"


# --- keeping the roles in step with the schema


def test_upgrade_refreshes_the_roles_granted_in_this_database(rdb):
    engine = create_engine(rdb.url)
    with engine.begin() as conn:
        conn.execute(text(f"REVOKE SELECT ON dkim_keys FROM {rdb.prefix}msa"))
    engine.dispose()
    with pytest.raises(ProgrammingError):
        run_as(rdb, "msa", dkim.list_keys, "example.test")
    done = subprocess.run([sys.executable, "-m", "postroom.ops.cli", "db", "upgrade"],
                          env=base_env({"POSTROOM_DATABASE_URL": rdb.url}), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"privileges of {rdb.prefix}dmarc" in done.stdout
    assert len(run_as(rdb, "msa", dkim.list_keys, "example.test")) == 1


def test_db_roles_prints_a_script_and_refuses_unknown_services():
    out = subprocess.run([sys.executable, "-m", "postroom.ops.cli", "db", "roles", "imap"],
                         env=base_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "CREATE ROLE postroom_imap NOLOGIN" in out.stdout and "dkim_keys" not in out.stdout
    bad = subprocess.run([sys.executable, "-m", "postroom.ops.cli", "db", "roles", "web"],
                         env=base_env(), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "unknown service 'web'" in bad.stderr
