"""The learn stream's pure parts: what a move teaches, and strict entries."""

from __future__ import annotations

import pytest

from postroom.queue.learning import BadLearnRequest, LearnRequest, decode, encode
from postroom.store.learning import learn_class


@pytest.mark.parametrize(("source", "dest", "klass"), [
    ("INBOX", "Junk", "spam"), ("Archive", "junk", "spam"), ("Junk", "INBOX", "ham"),
    ("Junk", "Archive", "ham"), ("Junk", "Trash", None), ("Junk", "Junk", None),
    ("INBOX", "Archive", None), ("", "Junk", "spam"),
])
def test_what_a_move_teaches(source: str, dest: str, klass: str | None) -> None:
    assert learn_class(source, dest) == klass


def test_entries_round_trip() -> None:
    request = LearnRequest(7, 42, "ham", attempt=3)
    assert decode(encode(request)) == request
    tracked = LearnRequest(7, 42, "spam", attempt=1, tracked=True)
    assert encode(tracked)["t"] == "1"
    assert decode(encode(tracked)) == tracked


@pytest.mark.parametrize("fields", [
    {"u": "1", "m": "2", "c": "eggs", "a": "0"}, {"u": "1", "m": "2", "c": "spam"},
    {"u": "-1", "m": "2", "c": "spam", "a": "0"}, {"u": "0", "m": "2", "c": "spam", "a": "0"},
    {"u": "1", "m": "2", "c": "spam", "a": "0", "x": "1"},
    {"u": "1", "m": "2", "c": "spam", "a": "0", "t": "yes"}, {"u": "1e3", "m": "2", "c": "spam",
                                                            "a": "0"},
])
def test_anything_else_in_the_stream_is_refused(fields: dict[str, str]) -> None:
    with pytest.raises(BadLearnRequest):
        decode(fields)
