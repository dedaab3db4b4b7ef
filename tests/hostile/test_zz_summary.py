"""The campaign's verdict, run last: every service alive and serving, logs intact, the table.

`pytest tests/hostile -s` prints the table: inputs tried per listener,
crashes, messages lost and checks bypassed (all three must be 0).
"""

from __future__ import annotations

from tests.support.hostile import LEDGER, Suite, still_serves

LISTENERS = ["smtp-25", "smtp-587", "smtps-465", "pop3-110", "pop3s-995", "imap-143",
             "imaps-993", "dmarc-http"]


def test_every_service_survived_and_still_serves(hostile_suite: Suite) -> None:
    for listener in LISTENERS:
        still_serves(hostile_suite, listener)
    assert all(code is None for code in hostile_suite.alive().values()), hostile_suite.alive()


def test_logs_stayed_one_json_object_per_line(hostile_suite: Suite) -> None:
    assert hostile_suite.non_json_lines() == []


def test_no_input_reached_an_internal_error(hostile_suite: Suite) -> None:
    errors = [(e.get("service"), e.get("event"), e.get("error")) for e in
              hostile_suite.internal_errors()]
    assert errors == []


def test_print_the_campaign_table(hostile_suite: Suite) -> None:
    print("\n\nhostile-input campaign (service start-up, s: "
          + ", ".join(f"{k} {v}" for k, v in hostile_suite.startup.items()) + ")\n")
    print(LEDGER.table())
    assert sum(LEDGER.crashes.values()) == 0
    assert sum(LEDGER.lost.values()) == 0
    assert sum(LEDGER.bypassed.values()) == 0
