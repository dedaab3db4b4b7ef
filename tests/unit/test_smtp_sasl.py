"""Server SASL mechanisms: PLAIN, LOGIN and SCRAM-SHA-256 with the RFC 7677 test vector."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from postroom.auth.sasl import (
    Challenge,
    LoginMechanism,
    NeedSecrets,
    Outcome,
    PasswordCredentials,
    PlainMechanism,
    SASLMalformed,
    ScramSha256Mechanism,
    VerifiedCredentials,
    decode_response,
    new_mechanism,
    scram_secrets,
)

# RFC 7677 section 3
CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")


def rfc7677_exchange() -> ScramSha256Mechanism:
    mechanism = ScramSha256Mechanism(nonce_factory=lambda: SERVER_NONCE)
    assert mechanism.start(CLIENT_FIRST) == NeedSecrets("user")
    assert mechanism.provide_secrets(scram_secrets("pencil", SALT, 4096)) == Challenge(SERVER_FIRST)
    return mechanism


def test_plain_with_initial_response() -> None:
    step = PlainMechanism().start(b"\0alice\0secret")
    assert step == Outcome(PasswordCredentials("alice", "secret", "", "PLAIN"))


def test_plain_without_initial_response_sends_empty_challenge() -> None:
    mechanism = PlainMechanism()
    assert mechanism.start(None) == Challenge(b"")
    assert isinstance(mechanism.respond(b"admin\0alice\0pw"), Outcome)


def test_plain_with_missing_parts_is_malformed() -> None:
    with pytest.raises(SASLMalformed):
        PlainMechanism().start(b"alice\0secret")


def test_plain_with_invalid_utf8_is_malformed() -> None:
    with pytest.raises(SASLMalformed):
        PlainMechanism().start(b"\0al\xffice\0pw")


def test_password_never_appears_in_repr() -> None:
    assert "secret" not in repr(PasswordCredentials("alice", "secret", "", "PLAIN"))


def test_login_asks_username_then_password() -> None:
    mechanism = LoginMechanism()
    assert mechanism.start(None) == Challenge(b"Username:")
    assert mechanism.respond(b"alice") == Challenge(b"Password:")
    assert mechanism.respond(b"pw") == Outcome(PasswordCredentials("alice", "pw", "", "LOGIN"))


def test_login_with_initial_username() -> None:
    assert LoginMechanism().start(b"alice") == Challenge(b"Password:")


def test_decode_response_rejects_bad_base64() -> None:
    with pytest.raises(SASLMalformed):
        decode_response("not base64!")


def test_decode_response_equals_sign_is_empty() -> None:
    assert decode_response("=") == b""


def test_scram_secrets_match_rfc5802_definitions() -> None:
    secrets = scram_secrets("pencil", SALT, 4096)
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", SALT, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert secrets.stored_key == hashlib.sha256(client_key).digest()


def test_scram_rfc7677_server_first_message() -> None:
    rfc7677_exchange()


def test_scram_rfc7677_server_final_message() -> None:
    mechanism = rfc7677_exchange()
    assert mechanism.respond(CLIENT_FINAL) == Challenge(SERVER_FINAL)


def test_scram_rfc7677_success_after_empty_response() -> None:
    mechanism = rfc7677_exchange()
    mechanism.respond(CLIENT_FINAL)
    assert mechanism.respond(b"") == Outcome(VerifiedCredentials("user", "", "SCRAM-SHA-256", True))


def test_scram_wrong_proof_is_not_verified() -> None:
    mechanism = rfc7677_exchange()
    bad = CLIENT_FINAL[:-10] + b"AAAAAAAAA="
    step = mechanism.respond(bad)
    assert isinstance(step, Outcome) and isinstance(step.credentials, VerifiedCredentials)
    assert step.credentials.verified is False


def test_scram_wrong_nonce_is_not_verified() -> None:
    mechanism = rfc7677_exchange()
    step = mechanism.respond(CLIENT_FINAL.replace(b"k0,p=", b"k1,p="))
    assert isinstance(step, Outcome) and not step.credentials.verified  # type: ignore[union-attr]


def test_scram_unknown_user_gets_a_fake_salt_and_fails() -> None:
    mechanism = ScramSha256Mechanism(nonce_factory=lambda: SERVER_NONCE)
    mechanism.start(CLIENT_FIRST)
    challenge = mechanism.provide_secrets(None)
    assert isinstance(challenge, Challenge) and b",s=" in challenge.data
    step = mechanism.respond(CLIENT_FINAL)
    assert isinstance(step, Outcome) and not step.credentials.verified  # type: ignore[union-attr]


def test_scram_channel_binding_request_is_malformed() -> None:
    with pytest.raises(SASLMalformed):
        ScramSha256Mechanism().start(b"p=tls-unique,,n=user,r=abc")


def test_scram_mandatory_extension_is_malformed() -> None:
    with pytest.raises(SASLMalformed):
        ScramSha256Mechanism().start(b"n,,m=ext,n=user,r=abc")


def test_scram_username_escapes_are_decoded() -> None:
    assert ScramSha256Mechanism().start(b"n,,n=a=2Cb=3Dc,r=abc") == NeedSecrets("a,b=c")


def test_new_mechanism_knows_the_three_mechanisms() -> None:
    assert {new_mechanism(n).name for n in ("PLAIN", "LOGIN", "SCRAM-SHA-256")} == {
        "PLAIN", "LOGIN", "SCRAM-SHA-256"}
