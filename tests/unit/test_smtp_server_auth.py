"""SMTP AUTH (RFC 4954) on the server: TLS requirement, PLAIN, LOGIN, SCRAM-SHA-256, failures."""

from __future__ import annotations

import base64
import hashlib
import hmac

from tests.unit.test_smtp_support import USERS, Harness, RecordingPolicy


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def tls_harness(policy: RecordingPolicy | None = None) -> Harness:
    """A session that has done STARTTLS and EHLO again."""
    harness = Harness(policy)
    harness.greet()
    harness.send(b"STARTTLS\r\n")
    harness.greet()
    return harness


def test_auth_before_tls_is_538() -> None:
    harness = Harness()
    harness.greet()
    harness.send(b"AUTH PLAIN " + b64(b"\0alice\0correct horse") + b"\r\n")
    assert harness.replies() == [
        "538 5.7.11 Encryption required for requested authentication mechanism"]
    assert harness.policy.auth_attempts == []


def test_auth_plain_after_starttls_succeeds() -> None:
    harness = tls_harness()
    harness.send(b"AUTH PLAIN " + b64(b"\0alice\0correct horse") + b"\r\n")
    assert harness.replies() == ["235 2.7.0 Authentication successful"]
    assert harness.protocol.session.identity == "alice"


def test_auth_plain_with_empty_initial_response_challenge() -> None:
    harness = tls_harness()
    harness.send(b"AUTH PLAIN\r\n")
    assert harness.take() == b"334 \r\n"
    harness.send(b64(b"\0bob\0hunter2") + b"\r\n")
    assert harness.codes() == [235]


def test_auth_login_flow() -> None:
    harness = tls_harness()
    harness.send(b"AUTH LOGIN\r\n")
    assert harness.take() == b"334 VXNlcm5hbWU6\r\n"
    harness.send(b64(b"alice") + b"\r\n")
    assert harness.take() == b"334 UGFzc3dvcmQ6\r\n"
    harness.send(b64(b"correct horse") + b"\r\n")
    assert harness.codes() == [235]


def test_wrong_password_is_535() -> None:
    harness = tls_harness()
    harness.send(b"AUTH PLAIN " + b64(b"\0alice\0wrong") + b"\r\n")
    assert harness.replies() == ["535 5.7.8 Authentication credentials invalid"]
    assert harness.protocol.session.identity is None


def test_malformed_base64_is_501_and_the_session_continues() -> None:
    harness = tls_harness()
    harness.send(b"AUTH LOGIN\r\n")
    harness.take()
    harness.send(b"!!!not-base64!!!\r\nNOOP\r\n")
    assert harness.replies() == ["501 5.5.2 Cannot decode authentication response",
                                 "250 2.0.0 OK"]


def test_malformed_initial_response_is_501() -> None:
    harness = tls_harness()
    harness.send(b"AUTH PLAIN ###\r\n")
    assert harness.codes() == [501]


def test_malformed_plain_message_is_501() -> None:
    harness = tls_harness()
    harness.send(b"AUTH PLAIN " + b64(b"no-nuls-here") + b"\r\n")
    assert harness.codes() == [501]


def test_star_cancels_the_exchange_with_501() -> None:
    harness = tls_harness()
    harness.send(b"AUTH LOGIN\r\n*\r\n")
    assert harness.replies()[-1] == "501 5.0.0 Authentication cancelled"


def test_rate_limited_login_gets_the_policy_reply_454() -> None:
    policy = RecordingPolicy()
    policy.locked.add("alice")
    harness = tls_harness(policy)
    harness.send(b"AUTH PLAIN " + b64(b"\0alice\0correct horse") + b"\r\n")
    assert harness.replies() == ["454 4.7.0 Temporary authentication failure"]


def test_unknown_mechanism_is_504() -> None:
    harness = tls_harness()
    harness.send(b"AUTH CRAM-MD5\r\n")
    assert harness.codes() == [504]


def test_second_auth_is_503() -> None:
    harness = tls_harness()
    harness.send(b"AUTH PLAIN " + b64(b"\0alice\0correct horse") + b"\r\n")
    harness.send(b"AUTH PLAIN " + b64(b"\0bob\0hunter2") + b"\r\n")
    assert harness.codes() == [235, 503]


def test_auth_during_a_transaction_is_503() -> None:
    harness = tls_harness()
    harness.send(b"MAIL FROM:<a@example.org>\r\nAUTH PLAIN " + b64(b"\0bob\0hunter2") + b"\r\n")
    assert harness.codes() == [250, 503]


def test_mail_requires_auth_when_the_policy_says_so() -> None:
    harness = tls_harness(RecordingPolicy(require_auth=True))
    harness.send(b"MAIL FROM:<a@example.org>\r\n")
    assert harness.replies() == ["530 5.7.0 Authentication required"]
    harness.send(b"AUTH PLAIN " + b64(b"\0alice\0correct horse") + b"\r\n"
                 b"MAIL FROM:<a@example.org>\r\n")
    assert harness.codes() == [235, 250]


def test_ehlo_after_auth_no_longer_advertises_auth() -> None:
    harness = tls_harness()
    harness.send(b"AUTH PLAIN " + b64(b"\0alice\0correct horse") + b"\r\n")
    harness.take()
    assert not any("AUTH" in line for line in harness.greet())


def test_scram_is_not_offered_when_the_policy_has_no_scram_keys() -> None:
    policy = RecordingPolicy()
    policy.offer_scram = False
    harness = tls_harness(policy)
    harness.send(b"EHLO c.test\r\nAUTH SCRAM-SHA-256\r\n")
    reply = harness.take()
    assert b"250 AUTH PLAIN LOGIN\r\n" in reply and reply.endswith(b"504 5.5.4 "
                                                                   b"Unrecognized authentication "
                                                                   b"type\r\n")


def _scram_client(harness: Harness, user: str, password: str) -> bytes:
    """Run a SCRAM-SHA-256 client exchange; return the final reply bytes."""
    client_first_bare = f"n={user},r=clientnonce123".encode()
    harness.send(b"AUTH SCRAM-SHA-256 " + b64(b"n,," + client_first_bare) + b"\r\n")
    line = harness.take()
    assert line.startswith(b"334 ")
    server_first = base64.b64decode(line[4:].strip())
    attrs = dict(part.split(b"=", 1) for part in server_first.split(b","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs[b"s"]),
                                 int(attrs[b"i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = b"c=biws,r=" + attrs[b"r"]
    auth_message = client_first_bare + b"," + server_first + b"," + without_proof
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    harness.send(b64(without_proof + b",p=" + b64(proof)) + b"\r\n")
    reply = harness.take()
    if not reply.startswith(b"334 "):
        return reply
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    expected = b"v=" + b64(hmac.new(server_key, auth_message, hashlib.sha256).digest())
    assert base64.b64decode(reply[4:].strip()) == expected
    harness.send(b"\r\n")
    return harness.take()


def test_scram_sha_256_exchange_succeeds() -> None:
    harness = tls_harness()
    reply = _scram_client(harness, "alice", USERS["alice"])
    assert reply == b"235 2.7.0 Authentication successful\r\n"
    assert harness.protocol.session.auth_mechanism == "SCRAM-SHA-256"


def test_scram_sha_256_wrong_password_is_535() -> None:
    harness = tls_harness()
    assert _scram_client(harness, "alice", "nope").startswith(b"535 5.7.8")
    assert harness.policy.auth_attempts[-1].verified is False  # type: ignore[union-attr]


def test_scram_with_a_policy_that_answers_later() -> None:
    harness = Harness(RecordingPolicy(delay=0.5))
    for line in (b"EHLO c.test\r\n", b"STARTTLS\r\n", b"EHLO c.test\r\n"):
        harness.send(line)
        harness.clock.advance(0.5)
    harness.take()
    harness.send(b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=alice,r=abc") + b"\r\n")
    assert harness.take() == b""
    harness.clock.advance(0.5)
    assert harness.take().startswith(b"334 ")
