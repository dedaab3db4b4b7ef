"""A refused smarthost login keeps mail queued, unless POSTROOM_RELAY_AUTH_FAILURE=bounce."""

from __future__ import annotations

from dataclasses import replace

from postroom.smtp.replies import Reply
from postroom_mta.smarthost import login_failure
from postroom_mta.smtpclient import AUTH_NOT_OFFERED, DeliveryResult, Envelope, Outcome

ENVELOPE = Envelope.of("alice@one.test", ["bob@two.test", "carol@three.test"])
REFUSED = Reply(535, "5.7.8", "authentication failed")


def _at_auth(reply: Reply, remote: bool) -> DeliveryResult:
    """What the client reports: a session failure, every recipient deferred."""
    result = DeliveryResult.uniform(ENVELOPE, reply, "auth", remote=remote,
                                    host="mx.two.test", address="127.0.0.3",
                                    session_failure=True)
    return replace(result, recipients=tuple(replace(r, outcome=Outcome.DEFERRED)
                                            for r in result.recipients))


def test_by_default_a_refused_login_stays_deferred():
    result = _at_auth(REFUSED, remote=True)
    first, after = login_failure(result, "defer")
    assert first is not None and first.code == 535
    assert [r.outcome for r in after.recipients] == [Outcome.DEFERRED] * 2


def test_bounce_fails_the_recipients_of_a_refused_login():
    result = _at_auth(REFUSED, remote=True)
    _first, after = login_failure(result, "bounce")
    assert [r.outcome for r in after.recipients] == [Outcome.FAILED] * 2


def test_our_own_refusal_to_log_in_is_never_bounced():
    result = _at_auth(AUTH_NOT_OFFERED, remote=False)
    first, after = login_failure(result, "bounce")
    assert first is not None
    assert [r.outcome for r in after.recipients] == [Outcome.DEFERRED] * 2


def test_other_failures_are_not_login_failures():
    result = DeliveryResult.uniform(ENVELOPE, Reply(451, "4.4.1", "refused"), "connect")
    assert login_failure(result, "bounce") == (None, result)
