"""Inbound RCPT answers: remembered for the SMTP session; across sessions only existing
recipients, and only for KNOWN_SECONDS."""

from __future__ import annotations

import smtplib

import pytest

from postroom.store import users
from tests.integration.test_mta_inbound_support import InboundServer, add_accounts
from tests.support.ports import free_port


@pytest.fixture
def mx(database, clean_db, database_url, redis_url, redis_prefix, dns_server,
       twisted_reactor):
    add_accounts(database)
    # RCPT never reaches the dmarc service: nothing needs to listen there
    env = {"POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
           "POSTROOM_REDIS_PREFIX": redis_prefix,
           "POSTROOM_DMARC_URL": f"http://127.0.0.1:{free_port()}", **dns_server.env}
    server = InboundServer(database, env).start()
    yield server
    server.stop()


def open_session(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=20)
    client.ehlo("mail.example.com")
    client.mail("alice@example.com")
    return client


def test_recipient_answer_is_reused_within_a_session(mx):
    client = open_session(mx.port)
    try:
        assert client.rcpt("bob@receiver.test")[0] == 250
        mx.database.run_sync(users.remove_user, "bob@receiver.test")
        assert client.rcpt("bob@receiver.test")[0] == 250
    finally:
        client.close()


def test_an_existing_recipient_is_shared_between_sessions_only_briefly(mx, monkeypatch):
    from postroom_mta import inbound

    first = open_session(mx.port)
    try:
        assert first.rcpt("bob@receiver.test")[0] == 250
    finally:
        first.close()
    mx.database.run_sync(users.remove_user, "bob@receiver.test")
    second = open_session(mx.port)
    try:
        # within KNOWN_SECONDS another session gets the remembered answer (the mda still
        # resolves the address again at delivery)
        assert second.rcpt("bob@receiver.test")[0] == 250
    finally:
        second.close()
    monkeypatch.setattr(inbound, "KNOWN_SECONDS", 0.0)
    third = open_session(mx.port)
    try:
        assert third.rcpt("bob@receiver.test")[0] == 550
    finally:
        third.close()


def test_an_unknown_recipient_is_never_shared_between_sessions(mx):
    first = open_session(mx.port)
    try:
        assert first.rcpt("carol@receiver.test")[0] == 550
    finally:
        first.close()
    mx.database.run_sync(users.add_user, "carol@receiver.test", "a long enough password")
    second = open_session(mx.port)
    try:
        assert second.rcpt("carol@receiver.test")[0] == 250
    finally:
        second.close()
