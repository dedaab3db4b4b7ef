"""SCRAM-SHA-256 (RFC 7677) against real msa and imap processes, over real TLS sockets.

smtplib and imaplib carry the exchange (tests/support/scram.py computes the
proofs); the store side is a suite database whose accounts were added with
``users.add_user``. Tests that fail logins use accounts and loopback source
addresses of their own so the per-account and per-IP limits stay apart.
"""

from __future__ import annotations

import imaplib
import secrets
import smtplib
import socket
import ssl
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from postroom.auth.passwords import hash_password
from postroom.store import users
from postroom.store.models import User
from tests.support.scram import imap_scram_sasl_ir, imaplib_scram, smtp_scram
from tests.support.suite import PASSWORD, Running, Suite

AUTH_FAIL_LIMIT = 3


@pytest.fixture(scope="module")
def suite_and_services(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Suite, Running, Running]]:
    """One suite for the module with an msa and an imap process (limit: 3 failures)."""
    with Suite(redis_url, Path(tmp_path_factory.mktemp("scram"))) as suite:
        limit = {"POSTROOM_AUTH_FAIL_LIMIT": str(AUTH_FAIL_LIMIT),
                 "POSTROOM_AUTH_DELAY_MAX": "0"}
        msa = suite.start("msa", wait=False, **limit)
        imap = suite.start("imap", wait=False, **limit)
        for running in (msa, imap):
            running.process.wait_healthy(timeout=60)
        yield suite, msa, imap


@pytest.fixture
def suite(suite_and_services: tuple[Suite, Running, Running]) -> Suite:
    return suite_and_services[0]


@pytest.fixture
def msa(suite_and_services: tuple[Suite, Running, Running]) -> Running:
    return suite_and_services[1]


@pytest.fixture
def imap(suite_and_services: tuple[Suite, Running, Running]) -> Running:
    return suite_and_services[2]


def new_account(suite: Suite) -> str:
    address = f"s{secrets.token_hex(4)}@scram.example"
    suite.add_user(address)
    return address


def legacy_account(suite: Suite) -> str:
    """An account as one created before SCRAM secrets were stored: no secrets column value."""
    address = new_account(suite)

    def forget(session: Any) -> None:
        session.execute(update(User).where(User.address == address).values(scram_secrets=None))
    suite.db.run_sync(forget)
    return address


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def submission(msa: Running, source: str = "127.0.0.1") -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", msa.port, timeout=20, source_address=(source, 0))
    client.ehlo("client.test")
    client.starttls(context=unverified())
    client.ehlo("client.test")
    return client


def imaps(imap: Running, source: str = "127.0.0.1") -> imaplib.IMAP4_SSL:
    class FromSource(imaplib.IMAP4_SSL):
        # imaplib has no source address parameter; the per-IP limiter needs one
        def _create_socket(self, timeout: float | None) -> Any:
            sock = socket.create_connection((self.host, self.port), timeout,
                                            source_address=(source, 0))
            return self.ssl_context.wrap_socket(sock, server_hostname="localhost")

    return FromSource("127.0.0.1", imap.tls_port, ssl_context=unverified(), timeout=20)


def message(sender: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "friend@remote.example"
    msg["Subject"] = "scram"
    msg.set_content("sent after SCRAM-SHA-256\n")
    return msg.as_bytes().replace(b"\n", b"\r\n")


# --- MSA


def test_msa_offers_scram_only_after_starttls(msa: Running) -> None:
    with smtplib.SMTP("127.0.0.1", msa.port, timeout=20) as client:
        client.ehlo("client.test")
        assert "auth" not in client.esmtp_features
        client.starttls(context=unverified())
        client.ehlo("client.test")
        assert "SCRAM-SHA-256" in client.esmtp_features["auth"].split()


def test_msa_scram_login_then_submission_is_accepted(suite: Suite, msa: Running) -> None:
    address = new_account(suite)
    with submission(msa) as client:
        code, text, _ = smtp_scram(client, address, PASSWORD)
        assert (code, text[:5]) == (235, b"2.7.0")
        refused = client.sendmail(address, ["friend@remote.example"], message(address))
        assert refused == {}


def test_msa_scram_without_initial_response_on_implicit_tls(suite: Suite,
                                                             msa: Running) -> None:
    address = new_account(suite)
    with smtplib.SMTP_SSL("127.0.0.1", msa.tls_port, timeout=20,
                          context=unverified()) as client:
        client.ehlo("client.test")
        code, _, _ = smtp_scram(client, address, PASSWORD, initial=False)
        assert code == 235


def test_msa_scram_wrong_password_is_535(suite: Suite, msa: Running) -> None:
    address = new_account(suite)
    with submission(msa, "127.0.0.2") as client:
        code, text, _ = smtp_scram(client, address, "wrong password")
    assert (code, text[:5]) == (535, b"5.7.8")


def test_msa_scram_failures_trip_the_limiter_and_hide_the_right_password(
        suite: Suite, msa: Running) -> None:
    address = new_account(suite)
    for _ in range(AUTH_FAIL_LIMIT):
        with submission(msa, "127.0.0.3") as client:
            assert smtp_scram(client, address, "guess")[0] == 535
    with submission(msa, "127.0.0.3") as client:
        # the right password gets no server signature and no login once locked out
        code, text, _ = smtp_scram(client, address, PASSWORD)
    assert (code, text[:5]) == (454, b"4.7.0")


def test_msa_account_without_secrets_fails_scram_but_plain_works(suite: Suite,
                                                                 msa: Running) -> None:
    address = legacy_account(suite)
    with submission(msa, "127.0.0.4") as client:
        assert smtp_scram(client, address, PASSWORD)[0] == 535
        assert client.login(address, PASSWORD)[0] == 235


def test_msa_setting_the_password_again_enables_scram(suite: Suite, msa: Running) -> None:
    address = legacy_account(suite)
    suite.db.run_sync(users.set_password, address, "a new password",
                      hash_fn=lambda p: hash_password(p, ln=4))
    with submission(msa) as client:
        assert smtp_scram(client, address, "a new password")[0] == 235


# --- IMAP


def test_imap_advertises_scram_under_tls_only(imap: Running) -> None:
    plain = imaplib.IMAP4("127.0.0.1", imap.port, timeout=20)
    try:
        assert "AUTH=SCRAM-SHA-256" not in plain.capabilities
        plain.starttls(unverified())
        assert "AUTH=SCRAM-SHA-256" in plain.capabilities
    finally:
        plain.logout()


def test_imap_scram_with_continuations_logs_in(suite: Suite, imap: Running) -> None:
    address = new_account(suite)
    client = imaps(imap)
    try:
        imaplib_scram(client, address, PASSWORD)
        assert client.state == "AUTH"
        assert client.select("INBOX")[0] == "OK"
    finally:
        client.logout()


def test_imap_scram_with_sasl_ir_logs_in(suite: Suite, imap: Running) -> None:
    address = new_account(suite)
    lines = imap_scram_sasl_ir(imap.tls_port, address, PASSWORD, unverified())
    assert [line[:2] for line in lines] == [b"+ ", b"+ ", b"a "]
    assert lines[-1].startswith(b"a OK")


def test_imap_scram_wrong_password_is_authenticationfailed(suite: Suite,
                                                           imap: Running) -> None:
    address = new_account(suite)
    client = imaps(imap, "127.0.0.5")
    try:
        with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
            imaplib_scram(client, address, "wrong password")
    finally:
        client.logout()


def test_imap_scram_failures_trip_the_limiter(suite: Suite, imap: Running) -> None:
    address = new_account(suite)
    for _ in range(AUTH_FAIL_LIMIT):
        lines = imap_scram_sasl_ir(imap.tls_port, address, "guess", unverified(),
                                   source="127.0.0.6")
        assert lines[-1].startswith(b"a NO [AUTHENTICATIONFAILED]")
    lines = imap_scram_sasl_ir(imap.tls_port, address, PASSWORD, unverified(),
                               source="127.0.0.6")
    # no server signature for a locked-out client, then a temporary refusal
    assert len(lines) == 2 and lines[-1].startswith(b"a NO [UNAVAILABLE]")


def test_imap_account_without_secrets_fails_scram_but_login_works(suite: Suite,
                                                                  imap: Running) -> None:
    address = legacy_account(suite)
    lines = imap_scram_sasl_ir(imap.tls_port, address, PASSWORD, unverified(),
                               source="127.0.0.7")
    assert lines[-1].startswith(b"a NO [AUTHENTICATIONFAILED]")
    client = imaps(imap, "127.0.0.7")
    try:
        assert client.login(address, PASSWORD)[0] == "OK"
    finally:
        client.logout()
