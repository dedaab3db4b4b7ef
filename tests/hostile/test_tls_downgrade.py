"""TLS downgrade: TLS 1.0/1.1 and weak ciphers are refused on every TLS port."""

from __future__ import annotations

import ssl

import pytest

from tests.support.hostile import LEDGER, Conn, Suite, unverified

IMPLICIT = ["smtps-465", "pop3s-995", "imaps-993"]
STARTTLS = ["smtp-25", "smtp-587", "pop3-110", "imap-143"]
OLD = {"tls1.0": ssl.TLSVersion.TLSv1, "tls1.1": ssl.TLSVersion.TLSv1_1}
# no forward secrecy, CBC with RSA key exchange, 3DES, RC4, NULL, export, anonymous
WEAK_CIPHERS = ["AES128-SHA:AES256-SHA:AES128-SHA256", "DES-CBC3-SHA", "RC4-SHA:RC4-MD5",
                "NULL-SHA:NULL-MD5", "EXP-RC4-MD5:EXP-DES-CBC-SHA", "ADH-AES128-SHA:aNULL"]


def open_tls(suite: Suite, listener: str, context: ssl.SSLContext) -> str:
    """The negotiated version (the handshake raises when the server refuses)."""
    conn = Conn(suite.ports[listener])
    try:
        if listener in IMPLICIT:
            conn.sock = context.wrap_socket(conn.sock)
        else:
            banner = conn.line()
            verb = {b"2": b"STARTTLS", b"+": b"STLS", b"*": b"a STARTTLS"}[banner[:1]]
            if verb == b"STARTTLS":
                conn.send(b"EHLO client.example\r\n")
                while conn.line()[3:4] == b"-":
                    pass
            conn.send(verb + b"\r\n")
            conn.line()
            conn.starttls(context)
        return str(conn.sock.version())  # type: ignore[attr-defined]
    finally:
        conn.close()


def refused(suite: Suite, listener: str, context: ssl.SSLContext) -> bool:
    try:
        version = open_tls(suite, listener, context)
    except (ssl.SSLError, OSError):
        return True
    return version in ("", "None")


@pytest.mark.parametrize("listener", IMPLICIT + STARTTLS)
@pytest.mark.parametrize("old", sorted(OLD))
def test_old_tls_versions_are_refused(hostile_suite: Suite, listener: str, old: str) -> None:
    context = unverified(maximum=OLD[old], minimum=ssl.TLSVersion.TLSv1)
    LEDGER.tried_on(listener)
    LEDGER.check(listener, refused(hostile_suite, listener, context), f"{old} accepted")


@pytest.mark.parametrize("listener", IMPLICIT + STARTTLS)
def test_weak_cipher_suites_are_refused(hostile_suite: Suite, listener: str) -> None:
    for ciphers in WEAK_CIPHERS:
        try:
            context = unverified(maximum=ssl.TLSVersion.TLSv1_2, ciphers=ciphers + ":@SECLEVEL=0")
        except ssl.SSLError:
            continue  # this OpenSSL cannot even offer them
        LEDGER.tried_on(listener)
        LEDGER.check(listener, refused(hostile_suite, listener, context),
                     f"weak cipher {ciphers} accepted")


@pytest.mark.parametrize("listener", IMPLICIT + STARTTLS)
def test_tls_1_2_with_a_forward_secret_aead_suite_works(hostile_suite: Suite,
                                                        listener: str) -> None:
    context = unverified(maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE+AESGCM")
    assert open_tls(hostile_suite, listener, context) == "TLSv1.2"
