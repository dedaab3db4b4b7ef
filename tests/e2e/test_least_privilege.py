"""A whole instance whose six services each connect as their own least-privilege role, with DKIM
keys encrypted at rest (issue 16). Real processes, real clients: submission, relay to a local
recipient, inbound SMTP with the DMARC check, delivery, POP3 and IMAP all work, and no service
meets a `permission denied` while doing it.

This runs the services as compose would run them with per-service database roles; a real
`docker compose` run of that set-up is left to the compose smoke tests of another issue.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from postroom.secretbox import write_key_file
from postroom.store import roles
from tests.support.db import server_url
from tests.support.dns import DNSServer
from tests.support.instance import (
    SERVICES,
    Instance,
    authentication_results,
    fresh_user,
    methods,
    queue_id_of,
    shared_free_port,
)
from tests.support.procs import ServiceProcess, cli_argv

pytestmark = pytest.mark.slow

ADDRESS = "127.0.0.9"
REFUSED = ("permission denied", "InsufficientPrivilege", "insufficient_privilege")


class RoleInstance(Instance):
    """An Instance whose services use ``PREFIX<service>`` roles instead of the owner."""

    role_prefix = ""

    def role_url(self, service: str) -> str:
        return make_url(self.database_url).set(
            username=self.role_prefix + service).render_as_string(hide_password=False)

    def spawn(self, names: object = SERVICES) -> RoleInstance:
        for name in names:  # type: ignore[attr-defined]
            env = {**self.env(), "POSTROOM_DATABASE_URL": self.role_url(name)}
            self.processes[name] = ServiceProcess(name, env, argv=cli_argv(name)).spawn()
        return self


@pytest.fixture(scope="module")
def inst(redis_url: str, dns_server_session: DNSServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoleInstance]:
    base = tmp_path_factory.mktemp("least-privilege")
    key_file = base / "secret.key"
    write_key_file(str(key_file))
    prefix = f"prtest_{secrets.token_hex(4)}_"
    try:
        with RoleInstance("roles.test", ADDRESS, redis_url, base / "inst",
                          smtp_port=shared_free_port(ADDRESS), dns=dns_server_session,
                          env={"POSTROOM_SECRET_KEY_FILE": str(key_file)}) as one:
            one.role_prefix = prefix
            roles.apply_url(one.database_url, prefix=prefix)
            engine = create_engine(one.database_url)
            with engine.begin() as conn:
                for service in roles.SERVICES:
                    conn.execute(text(f"ALTER ROLE {prefix}{service} LOGIN"))
            engine.dispose()
            one.setup_domain()  # the operator's CLI, as the owner: keys sealed with key_file
            one.spawn()
            one.wait()
            yield one
    finally:
        admin = create_engine(server_url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for service in roles.SERVICES:
                conn.execute(text(f'DROP ROLE IF EXISTS "{prefix}{service}"'))
        admin.dispose()


@pytest.fixture(autouse=True)
def zones(inst: RoleInstance, dns_server: DNSServer) -> RoleInstance:
    inst.publish("p=reject")
    return inst


def message(sender: str, to: str, subject: str) -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{secrets.token_hex(8)}@roles.test>\r\n\r\nHello.\r\n").encode()


def test_dkim_keys_are_encrypted_and_the_services_run_as_their_roles(inst: RoleInstance):
    rows = inst.query("SELECT private_key_pem FROM dkim_keys")
    assert len(rows) == 2 and all(r[0].startswith("enc:v1:") for r in rows)
    users = {r[0] for r in inst.query(
        "SELECT usename FROM pg_stat_activity WHERE datname = current_database()")}
    assert {inst.role_prefix + s for s in SERVICES} <= users


def test_mail_flows_through_every_service_under_its_role(inst: RoleInstance, tmp_path: Path):
    alice, bob = fresh_user(inst, "alice"), fresh_user(inst, "bob")
    # msa (signs with the encrypted keys) -> deliver -> mda -> imap (docs/decisions/0030)
    inst.submit(alice, [bob], message(alice, bob, "local"))
    (local,) = inst.wait_for_mail(bob)
    assert local.count(b"DKIM-Signature:") == 2
    # the signed mail again, from outside through mta:25 and the dmarc check: both signatures
    # made with the decrypted keys verify against the published records
    with inst.smtp(source=ADDRESS) as client:
        client.mail(alice)
        code, reply = client.rcpt(alice)
        assert code == 250, reply
        code, reply = client.data(local)
        assert code == 250, reply
        assert queue_id_of(reply.decode())
    (inbound,) = inst.wait_for_mail(alice)
    ours = [value for ident, value in authentication_results(inbound)
            if ident == inst.hostname]
    assert ours and set(methods(ours[0])["dkim"]) == {"pass"}, ours
    assert methods(ours[0])["dmarc"] == ["pass"], ours
    assert inst.query("SELECT count(*) FROM dmarc_results")[0][0] >= 1
    # pop3: list, retrieve, delete
    client = inst.pop3(bob)
    try:
        count, _size = client.stat()
        assert count == 1
        assert b"local" in b"\r\n".join(client.retr(1)[1])
        client.dele(1)
    finally:
        client.quit()
    # imap: create, append, flag, copy, expunge, delete
    session = inst.imap(alice)
    try:
        assert session.create("Projects")[0] == "OK"
        assert session.append("Projects", "\\Seen", None,
                              message(alice, alice, "appended"))[0] == "OK"
        assert session.select("INBOX")[0] == "OK"
        assert session.store("1", "+FLAGS", "\\Flagged")[0] == "OK"
        assert session.copy("1", "Projects")[0] == "OK"
        assert session.store("1", "+FLAGS", "\\Deleted")[0] == "OK"
        assert session.expunge()[0] == "OK"
        assert session.select("Projects")[0] == "OK"
        assert session.search(None, "ALL")[1][0].split() == [b"1", b"2"]
        assert session.close()[0] == "OK"
        assert session.delete("Projects")[0] == "OK"
    finally:
        session.logout()
    assert inst.fetch_all(bob) == []


def test_no_service_met_a_refusal(inst: RoleInstance):
    # a refused statement is logged with the server's message (log.exception's `error`)
    for name in SERVICES:
        refused = [e for e in inst.log_events(name) if any(w in str(e) for w in REFUSED)]
        assert not refused, (name, refused[:3])
