"""The fault campaign: every service killed, Redis emptied, PostgreSQL and dmarc down, under load.

One campaign runs per module (about two minutes); each test asserts one
promise on its result. The table is printed (``pytest -s``) and kept in
docs/resilience.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.resilience.campaign import FAULTS, Result, run_campaign
from tests.resilience.report import render, render_reasons
from tests.support.dns import DNSServer
from tests.support.faults import FaultInstance

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def campaign(dns_server_session: DNSServer) -> Iterator[Result]:
    # no records at all: remote.test has no SPF or DMARC, so the verdict is none -> INBOX
    dns_server_session.clear()
    instance = FaultInstance(dns_server_session.env)
    try:
        instance.start()
        result = run_campaign(instance)
        print("\n" + render(result.rows) + "\n" + render_reasons(result.rows))
        print(f"drained: {result.drained} in {result.drain_after_load:.1f}s after the load; "
              f"spool states {instance.recipient_states()}; outage refusals "
              f"{result.outage_refusals}; mailbox checks {result.mailbox_checks}; recovery events "
              f"{result.events}; error events {result.errors}")
        yield result
    finally:
        instance.close()


def test_no_accepted_message_is_lost(campaign: Result) -> None:
    total = campaign.total
    assert total.accepted > 500
    assert total.lost == 0, f"lost: {total.lost_tokens[:20]}"


def test_no_message_is_stored_twice(campaign: Result) -> None:
    assert campaign.total.duplicates == 0, f"duplicated: {campaign.total.duplicate_tokens[:20]}"


def test_queues_drain_after_the_load(campaign: Result) -> None:
    assert campaign.drained, f"{campaign.pending_left} spool recipients still pending"


def test_clients_never_see_a_5xx(campaign: Result) -> None:
    refused = [(m.token, m.attempts[-1].detail) for m in campaign.messages if m.refused]
    assert refused == []


def test_refused_messages_are_retried_until_accepted(campaign: Result) -> None:
    retried = [m for m in campaign.messages if m.temp_failures]
    assert retried, "no fault made a client retry: the campaign injected nothing"
    assert campaign.clients_settled
    assert [m.token for m in campaign.messages if m.accepted_at is None] == []


def test_clients_see_4xx_while_a_dependency_is_down(campaign: Result) -> None:
    expected = {name for name, _inject, must_refuse in FAULTS if must_refuse}
    assert set(campaign.outage_refusals) == expected
    assert all(n > 0 for n in campaign.outage_refusals.values()), campaign.outage_refusals


def test_services_recover_without_manual_action(campaign: Result) -> None:
    assert campaign.exits == dict.fromkeys(campaign.exits)  # all still running
    assert campaign.health == dict.fromkeys(campaign.health, 200)


def test_imap_and_pop3_show_what_was_delivered(campaign: Result) -> None:
    mismatched = {k: v for k, v in campaign.mailbox_checks.items() if v[0] != v[1]}
    assert campaign.mailbox_checks and mismatched == {}
