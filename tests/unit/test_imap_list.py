"""LIST/LSUB: linear, capped wildcard matching, its answers, large listings off the reactor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred, succeed

from postroom import glob
from postroom_imap.handlers_mailbox import (
    INLINE_LIST_WORK,
    MAX_LIST_PATTERN,
    MAX_LIST_PATTERNS,
    MAX_LIST_WILDCARDS,
    list_lines,
    list_matcher,
    list_matchers,
)
from postroom_imap.policy import MailboxRow
from tests.unit.test_imap_protocol import FakeStore, Harness

NAMES = ["INBOX", "INBOX/Receipts", "Sent", "Lists/postroom", "Lists/postroom/2026", "Archive"]


def listed(reference: str, *patterns: str) -> list[str]:
    rows = [MailboxRow(n, None, True) for n in NAMES]
    lines = list_lines(rows, list_matchers(reference, patterns), lsub=False)
    return [line.rsplit(b" ", 1)[1].strip().decode() for line in lines]


def test_star_percent_reference_and_inbox_case() -> None:
    assert listed("", "*") == ["INBOX", "Archive", "INBOX/Receipts", "Lists", "Lists/postroom",
                               "Lists/postroom/2026", "Sent"]
    assert listed("", "%") == ["INBOX", "Archive", "Lists", "Sent"]
    assert listed("Lists/", "%") == ["Lists/postroom"]
    assert listed("", "inbox/%") == ["INBOX/Receipts"]
    assert listed("", "iNbOx") == ["INBOX"]
    assert listed("", "sent") == []  # only INBOX is case-insensitive
    assert listed("", "*s*o*m", "%n%") == ["Lists/postroom", "Sent"]


def test_runs_of_wildcards_count_as_one() -> None:
    assert listed("", "*" * 500) == listed("", "*")
    assert listed("", "%" * 500 + "/" + "%*" * 200) == listed("", "%/*")


def test_caps_on_patterns() -> None:
    list_matcher("", "a*" * MAX_LIST_WILDCARDS)
    with pytest.raises(glob.PatternTooComplex, match=f"more than {MAX_LIST_WILDCARDS} wildcards"):
        list_matcher("", "a*" * (MAX_LIST_WILDCARDS + 1))
    with pytest.raises(glob.PatternTooComplex, match=f"longer than {MAX_LIST_PATTERN}"):
        list_matcher("x" * MAX_LIST_PATTERN, "*")
    with pytest.raises(glob.PatternTooComplex, match=f"more than {MAX_LIST_WILDCARDS} wildcards"):
        list_matcher("INBOX", "/a%" * (MAX_LIST_WILDCARDS + 1))
    list_matchers("", tuple(f"p{i}" for i in range(MAX_LIST_PATTERNS)) * 3)  # duplicates: once
    with pytest.raises(glob.PatternTooComplex, match=f"more than {MAX_LIST_PATTERNS} patterns"):
        list_matchers("", tuple(f"p{i}" for i in range(MAX_LIST_PATTERNS + 1)))


def test_a_pattern_over_the_cap_gets_no_limit_and_the_session_goes_on() -> None:
    h = Harness(tls=True)
    h.login()
    reply = h.send(b"x LIST \"\" " + b"a*" * (MAX_LIST_WILDCARDS + 1) + b"\r\n")
    assert reply == (b"x NO [LIMIT] LIST refused: pattern has more than "
                     b"%d wildcards\r\n" % MAX_LIST_WILDCARDS)
    assert h.send(b"y NOOP\r\n") == b"y OK NOOP completed\r\n"


@pytest.mark.timeout(5)
def test_pathological_patterns_are_answered_at_once() -> None:
    h = Harness(tls=True)
    h.login()
    for pattern in (b"*" * 50 + b"x", b"*%" * 50 + b"x", b"%" * 100 + b"/" + b"%" * 100 + b"x"):
        assert h.send(b"x LIST \"\" " + pattern + b"\r\n") == b"x OK LIST completed\r\n"
    assert h.send(b"x LSUB \"\" " + b"*" * 50 + b"\r\n").startswith(b"* LSUB ")


class ManyMailboxes(FakeStore):
    """A user with thousands of mailboxes; ``offload`` records that it was asked."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.rows = [MailboxRow(f"Folder-{i:05d}/Sub", None, True) for i in range(count)]
        self.offloaded = 0

    def list_mailboxes(self) -> Deferred[list[MailboxRow]]:
        return succeed(self.rows)

    def offload(self, fn: Callable[[], Any]) -> Deferred[Any]:
        self.offloaded += 1
        return maybeDeferred(fn)


@pytest.mark.parametrize(("count", "offloaded"), [(10, 0), (INLINE_LIST_WORK // 10, 1)])
def test_large_listings_run_off_the_reactor(count: int, offloaded: int) -> None:
    h = Harness(tls=True)
    store = h.store = h.accounts.store = ManyMailboxes(count)
    h.login()
    reply = h.send(b"x LIST \"\" %/Sub\r\n")
    assert reply.count(b"* LIST ") == count and reply.endswith(b"x OK LIST completed\r\n")
    assert store.offloaded == offloaded
