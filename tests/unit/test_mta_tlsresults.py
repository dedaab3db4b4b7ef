"""What one delivery attempt means for TLS reports (postroom_mta.tlsresults.classify)."""

from __future__ import annotations

import pytest

from postroom.net.tls import TLSInfo
from postroom.smtp.replies import Reply
from postroom_mta.smtpclient import (
    TLS_FAILED,
    TLS_REQUIRED,
    DeliveryResult,
    Outcome,
    RecipientResult,
)
from postroom_mta.tlsresults import classify


def _result(reply: Reply, stage: str, *, remote: bool = False,
            tls: TLSInfo | None = None) -> DeliveryResult:
    outcome = Outcome.DELIVERED if reply.code < 300 else Outcome.DEFERRED
    return DeliveryResult((RecipientResult("a@example.net", outcome, reply.code, reply.enhanced,
                                           reply.text, stage, "mx.example.net", "192.0.2.9",
                                           remote),), tls=tls)


OK = Reply(250, "2.0.0", "OK")


def test_a_session_that_negotiated_tls_is_a_success():
    assert classify(_result(OK, "data-end", remote=True,
                            tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)),
                    "no-policy-found") == (None, None)


def test_mail_sent_in_clear_is_starttls_not_supported():
    assert classify(_result(OK, "data-end", remote=True), "no-policy-found")[0] == \
        "starttls-not-supported"


def test_a_policy_that_requires_tls_from_a_server_without_it_is_starttls_not_supported():
    assert classify(_result(TLS_REQUIRED, "ehlo"), "sts")[0] == "starttls-not-supported"


@pytest.mark.parametrize("text,policy,kind", [
    ("TLS negotiation failed: [('SSL routines', '', 'certificate verify failed')]", "sts",
     "certificate-not-trusted"),
    ("TLS negotiation failed: VerificationError(errors=[DNSMismatch(...)])", "sts",
     "certificate-host-mismatch"),
    ("TLS negotiation failed: certificate has expired", "sts", "certificate-expired"),
    ("TLS negotiation failed: [('SSL routines', '', 'certificate verify failed')]", "tlsa",
     "tlsa-invalid"),
    ("STARTTLS refused: 454 4.7.0 not now", "sts", "starttls-not-supported"),
    ("TLS negotiation timed out", "no-policy-found", "validation-failure"),
])
def test_a_failed_negotiation_is_named_by_its_cause(text, policy, kind):
    assert classify(_result(TLS_FAILED.with_text(text), "starttls"), policy)[0] == kind


@pytest.mark.parametrize("stage", ["connect", "greeting"])
def test_no_tls_question_asked_is_not_recorded(stage):
    assert classify(_result(Reply(451, "4.4.1", "Connection refused"), stage),
                    "no-policy-found") is None
