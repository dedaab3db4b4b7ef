"""Vacation replies: RFC 3834 / RFC 5230 rules on when not to answer, and the reply itself."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email.policy import default

import pytest

from postroom.rules import Vacation, facts_from_message
from postroom_mda.vacation import build_reply, skip_reason

ACCOUNT = "alice@example.test"
AWAY = Vacation(reason="I am away until Monday.")


def facts(headers: str, sender: str = "bob@remote.test"):
    raw = headers.replace("\n", "\r\n").encode() + b"\r\nbody\r\n"
    return facts_from_message(raw, len(raw), sender, ACCOUNT)


PERSONAL = "From: bob@remote.test\nTo: Alice <alice@example.test>\nSubject: lunch?\n" \
           "Message-ID: <abc@remote.test>\n"


def test_personal_mail_gets_a_reply():
    assert skip_reason(facts(PERSONAL), ACCOUNT, AWAY) is None


@pytest.mark.parametrize(("extra", "sender", "reason"), [
    ("", "", "null sender"),
    ("", "MAILER-DAEMON@remote.test", "sender is a program"),
    ("", "owner-dev@lists.test", "sender is a program"),
    ("", "dev-request@lists.test", "sender is a program"),
    ("", ACCOUNT, "sender is the account"),
    ("Auto-Submitted: auto-replied\n", "bob@remote.test", "auto-submitted"),
    ("List-Id: <dev.lists.test>\n", "bob@remote.test", "mailing list"),
    ("List-Unsubscribe: <mailto:x@y>\n", "bob@remote.test", "mailing list"),
    ("Precedence: bulk\n", "bob@remote.test", "bulk precedence"),
])
def test_no_reply_to_robots_lists_and_bulk(extra, sender, reason):
    assert skip_reason(facts(PERSONAL + extra, sender), ACCOUNT, AWAY) == reason


def test_auto_submitted_no_still_gets_a_reply():
    assert skip_reason(facts(PERSONAL + "Auto-Submitted: no\n"), ACCOUNT, AWAY) is None


def test_no_reply_when_not_named_in_recipient_headers():
    headers = "From: bob@remote.test\nTo: undisclosed-recipients:;\nSubject: hi\n"
    assert skip_reason(facts(headers), ACCOUNT, AWAY) == "not addressed to the account"


def test_extra_addresses_count_as_the_account():
    headers = "From: bob@remote.test\nTo: info@example.test\nSubject: hi\n"
    vacation = Vacation(reason="away", addresses=("info@example.test",))
    assert skip_reason(facts(headers), ACCOUNT, vacation) is None


def test_reply_is_auto_submitted_and_threads_to_the_original():
    raw = build_reply(facts(PERSONAL), ACCOUNT, AWAY, hostname="mx.example.test",
                      now=datetime(2026, 1, 2, tzinfo=UTC))
    reply = email.message_from_bytes(raw, policy=default)
    assert reply["Auto-Submitted"].startswith("auto-replied")
    assert reply["To"] == "bob@remote.test"
    assert reply["From"] == ACCOUNT
    assert reply["Subject"] == "Auto: lunch?"
    assert reply["In-Reply-To"] == "<abc@remote.test>"
    assert "I am away until Monday." in reply.get_content()


def test_reply_subject_cannot_inject_headers():
    headers = ("From: bob@remote.test\nTo: alice@example.test\n"
               "Subject: =?utf-8?q?hi=0D=0ABcc=3A_victim@x.test?=\n")
    raw = build_reply(facts(headers), ACCOUNT, AWAY, hostname="mx.example.test",
                      now=datetime(2026, 1, 2, tzinfo=UTC))
    reply = email.message_from_bytes(raw, policy=default)
    assert reply["Bcc"] is None
    assert "\n" not in reply["Subject"]
