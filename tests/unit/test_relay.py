"""The relay's pure parts: domains of addresses, result mapping, delay-notice timing, options."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from postroom.config import load_settings
from postroom_mta.relay import DELAY_NOTICE, RelayOptions, _results
from postroom_mta.smtpclient import DeliveryResult, Outcome, RecipientResult
from postroom_mta.worker_store import (
    DEFERRED,
    DELIVERED,
    FAILED,
    Policy,
    RemoteRecipient,
    _delay_notice_due,
    domain_of,
)

T0 = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.mark.parametrize(("address", "domain"), [
    ("bob@Two.Test", "two.test"), ("bob@two.test.", "two.test"),
    ('"a@b"@two.test', "two.test"), ("postmaster", ""),
])
def test_domain_of(address, domain):
    assert domain_of(address) == domain


def rcpt(rid, address):
    return RemoteRecipient(rid, address, "two.test", None, None, 0)


def reply(address, outcome, code, text, remote=True):
    return RecipientResult(address, outcome, code, None, text, "rcpt", "mx.two.test",
                           "127.0.0.1", remote)


def test_results_keep_every_remote_reply_with_its_host():
    result = DeliveryResult((
        reply("a@two.test", Outcome.DELIVERED, 250, "250 ok"),
        reply("b@two.test", Outcome.DEFERRED, 451, "451 4.7.1 later"),
        reply("c@two.test", Outcome.FAILED, 550, "550 5.1.1 unknown"),
    ))
    out = _results([rcpt(1, "a@two.test"), rcpt(2, "b@two.test"), rcpt(3, "c@two.test")], result)
    assert [(r.recipient_id, r.outcome) for r in out] == [(1, DELIVERED), (2, DEFERRED),
                                                          (3, FAILED)]
    # a delivery's 250 is kept too: it goes into the attempt history that trace prints
    assert out[0].error == "host mx.two.test[127.0.0.1] said: 250 ok (in reply to RCPT TO command)"
    assert out[2].error == ("host mx.two.test[127.0.0.1] said: 550 5.1.1 unknown "
                            "(in reply to RCPT TO command)")


def test_results_of_local_errors_name_no_host():
    result = DeliveryResult((reply("a@two.test", Outcome.FAILED, 556, "556 5.1.10 null MX",
                                   remote=False),))
    assert _results([rcpt(1, "a@two.test")], result)[0].error == "556 5.1.10 null MX"


POLICY = Policy("mx.one.test", 300, 3600, 86400, delay_notice=4 * 3600)


def test_delay_notice_is_due_on_the_deferral_that_crosses_the_threshold():
    assert _delay_notice_due(POLICY, T0, T0 + timedelta(hours=3), T0 + timedelta(hours=4))


def test_delay_notice_is_not_due_again_after_the_threshold():
    assert not _delay_notice_due(POLICY, T0, T0 + timedelta(hours=4, minutes=5),
                                 T0 + timedelta(hours=5))


def test_delay_notice_is_not_due_before_the_threshold():
    assert not _delay_notice_due(POLICY, T0, T0, T0 + timedelta(hours=3))


def test_options_follow_the_settings():
    settings = load_settings({"POSTROOM_HOSTNAME": "mx.one.test",
                              "POSTROOM_SMTP_OUTBOUND_PORT": "2525",
                              "POSTROOM_RETRY_INITIAL": "1m", "POSTROOM_QUEUE_LIFETIME": "2d"})
    options = RelayOptions.from_settings(settings)
    assert options.port == 2525 and options.policy.hostname == "mx.one.test"
    assert (options.policy.retry_initial, options.policy.queue_lifetime) == (60, 172800)
    assert options.policy.delay_notice == DELAY_NOTICE


def test_options_take_the_allowed_networks_and_refuse_internal_ones_by_default():
    assert RelayOptions.from_settings(load_settings({})).allowed_networks == ()
    settings = load_settings({"POSTROOM_RELAY_ALLOWED_NETWORKS": "10.20.0.0/16, fd00:1::/64"})
    assert RelayOptions.from_settings(settings).allowed_networks == ("10.20.0.0/16",
                                                                     "fd00:1::/64")
