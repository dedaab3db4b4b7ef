"""Smarthost logins in the SMTP client: AUTH PLAIN or LOGIN, only inside TLS, never in clear."""

from __future__ import annotations

import base64

from postroom_mta.smtpclient import Credentials, Outcome, TLSPolicy
from tests.unit.test_smtpclient import TLSTransport, outcomes, session

LOGIN = Credentials("relay@two.test", "pa55 word")
SMARTHOST = TLSPolicy(required=True, auth=LOGIN)


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def _into_tls(s, ehlo: bytes) -> None:
    s.greet_and_ehlo(b"250-smarthost\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n")
    assert s.lines() == [b"STARTTLS"]
    s.server(b"220 2.0.0 go\r\n")
    assert s.transport.tls_started_with is not None
    assert s.lines() == [b"EHLO one.test"]
    s.server(ehlo)


def test_auth_plain_is_sent_inside_tls_then_the_transaction():
    s = session(tls=SMARTHOST, transport=TLSTransport())
    _into_tls(s, b"250-smarthost\r\n250-PIPELINING\r\n250 AUTH LOGIN PLAIN\r\n")
    assert s.lines() == [b"AUTH PLAIN " + _b64("\0relay@two.test\0pa55 word")]
    s.server(b"235 2.7.0 ok\r\n")
    assert s.lines() == [b"MAIL FROM:<alice@one.test>", b"RCPT TO:<bob@two.test>"]


def test_auth_login_when_plain_is_not_offered():
    s = session(tls=SMARTHOST, transport=TLSTransport())
    _into_tls(s, b"250-smarthost\r\n250 AUTH LOGIN\r\n")
    assert s.lines() == [b"AUTH LOGIN"]
    s.server(b"334 VXNlcm5hbWU6\r\n")
    assert s.lines() == [_b64("relay@two.test")]
    s.server(b"334 UGFzc3dvcmQ6\r\n")
    assert s.lines() == [_b64("pa55 word")]
    s.server(b"235 2.7.0 ok\r\n")
    assert s.lines() == [b"MAIL FROM:<alice@one.test>"]


def test_refused_login_defers_and_sends_no_mail():
    s = session(tls=SMARTHOST, transport=TLSTransport())
    _into_tls(s, b"250-smarthost\r\n250 AUTH PLAIN\r\n")
    s.sent()
    s.server(b"535 5.7.8 authentication failed\r\n")
    assert s.lines() == [b"QUIT"]
    result = s.close()
    assert result.session_failure
    assert outcomes(result) == [("bob@two.test", Outcome.DEFERRED, 535)]
    assert result.recipients[0].stage == "auth"


def test_no_login_without_starttls_even_when_auth_is_offered():
    s = session(tls=SMARTHOST, transport=TLSTransport())
    s.greet_and_ehlo(b"250-smarthost\r\n250 AUTH PLAIN LOGIN\r\n")
    assert s.lines() == [b"QUIT"]  # neither AUTH nor MAIL went out in clear
    result = s.close()
    assert outcomes(result) == [("bob@two.test", Outcome.DEFERRED, 451)]
    assert result.recipients[0].enhanced == "4.7.4"


def test_no_login_in_clear_even_under_a_policy_that_does_not_require_tls():
    s = session(tls=TLSPolicy(auth=LOGIN), transport=TLSTransport())
    s.greet_and_ehlo(b"250-smarthost\r\n250 AUTH PLAIN\r\n")
    assert s.lines() == [b"QUIT"]
    assert outcomes(s.close()) == [("bob@two.test", Outcome.DEFERRED, 451)]


def test_no_usable_mechanism_defers():
    s = session(tls=SMARTHOST, transport=TLSTransport())
    _into_tls(s, b"250-smarthost\r\n250 AUTH CRAM-MD5 XOAUTH2\r\n")
    assert s.lines() == [b"QUIT"]
    result = s.close()
    assert outcomes(result) == [("bob@two.test", Outcome.DEFERRED, 451)]
    assert "no PLAIN or LOGIN" in result.recipients[0].text


def test_implicit_tls_sends_ehlo_and_auth_without_starttls():
    s = session(tls=TLSPolicy(required=True, implicit=True, auth=LOGIN),
                transport=TLSTransport())
    s.greet_and_ehlo(b"250-smarthost\r\n250 AUTH PLAIN\r\n")
    assert s.lines()[0].startswith(b"AUTH PLAIN ")
    assert s.transport.tls_started_with is None  # the endpoint did the handshake


def test_the_password_is_not_in_the_policy_repr():
    assert "pa55" not in repr(SMARTHOST)


def test_an_unanswerable_challenge_is_cancelled_once_then_the_session_ends():
    s = session(tls=SMARTHOST, transport=TLSTransport())
    _into_tls(s, b"250-smarthost\r\n250 AUTH LOGIN\r\n")
    s.sent()
    s.server(b"334 VXNlcm5hbWU6\r\n")
    s.sent()
    s.server(b"334 UGFzc3dvcmQ6\r\n")
    s.sent()
    s.server(b"334 bW9yZT8=\r\n")  # a third challenge: LOGIN has none
    assert s.lines() == [b"*"]
    s.server(b"334 bW9yZT8=\r\n")
    assert s.lines() == []  # no second cancel, no loop
    assert s.transport.disconnecting
    assert outcomes(s.close()) == [("bob@two.test", Outcome.DEFERRED, 451)]
