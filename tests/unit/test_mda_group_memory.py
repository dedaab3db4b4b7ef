"""A group delivery keeps no blob past its analysis (issue 23: the mda's default concurrency).

A group holds a plan per member until its stores run; a plan keeps the blob's
metadata and text, never the blob itself, so a group of many large messages holds
one blob at a time, not one per member (docs/decisions/0022, "The default
concurrency").
"""

from __future__ import annotations

from datetime import UTC, datetime

from postroom.store.delivery import FastFacts
from postroom_mda.delivery import Options, _fast_plan

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
BLOB = (b"From: a@remote.test\r\nTo: u@local.test\r\nSubject: big\r\n\r\n"
        + b"some words to index " * 5000)


def _facts(**changes: object) -> FastFacts:
    values: dict[str, object] = dict(
        recipient_id=1, state="pending", stream="deliver", attempts=0, next_attempt_at=NOW,
        parent_id=None, address="u@local.test", queue_id="Q1", mail_from="a@remote.test",
        disposition="deliver", message_id=7, size=len(BLOB), received_at=NOW,
        meta_missing=True, text_missing=True, blob=BLOB, local_domain=True, aliased=False,
        user_id=3, quota_bytes=None, quota_messages=None, rules=False, inbox_id=11,
        junk_id=None, junk_name=None)
    values.update(changes)
    return FastFacts(**values)  # type: ignore[arg-type]


def test_a_plan_keeps_the_blobs_analysis_not_the_blob() -> None:
    plan = _fast_plan(_facts(), Options(), NOW, True)
    assert plan is not None
    assert plan.facts.blob is None
    assert plan.meta is not None and '"subject":"big"' in plan.meta
    assert plan.doc is not None and plan.doc.body.startswith("some words to index")
    assert (plan.facts.message_id, plan.facts.size, plan.mailbox_id) == (7, len(BLOB), 11)


def test_a_second_member_of_the_same_blob_keeps_nothing_of_it() -> None:
    plan = _fast_plan(_facts(recipient_id=2), Options(), NOW, True, parse=False)
    assert plan is not None
    assert (plan.facts.blob, plan.meta, plan.doc) == (None, None, None)
