"""The stored form of message metadata: one function, the same value as text or as plain data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.mime import MessageMeta, analyze, jsonb_safe, metadata_dict, metadata_json

MAIL = sorted((Path(__file__).parent.parent / "data" / "mail").glob("*.eml"))


def jsonb_refuses(text: str) -> bool:
    """What PostgreSQL's jsonb input refuses: a NUL escape or a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return "\\u0000" in text


@pytest.mark.parametrize("path", MAIL, ids=lambda p: p.name)
def test_the_text_and_the_plain_data_are_the_same_value(path: Path) -> None:
    meta = analyze(path.read_bytes())
    text = metadata_json(meta)
    assert json.loads(text) == metadata_dict(meta)
    assert not jsonb_refuses(text)
    assert metadata_dict(MessageMeta.from_dict(json.loads(text))) == metadata_dict(meta)


def test_nul_and_lone_surrogates_are_replaced_for_jsonb() -> None:
    raw = b"Subject: a\x00b\r\nFrom: =?utf-8?b?7aCA?= <x@example.test>\r\n\r\nbody\r\n"
    meta = analyze(raw)
    text = metadata_json(meta)
    assert not jsonb_refuses(text)
    assert json.loads(text) == metadata_dict(meta)
    assert "\x00" not in json.dumps(metadata_dict(meta), ensure_ascii=False)


def test_jsonb_safe_keeps_what_jsonb_accepts() -> None:
    value = {"a": ["x", ("y", 1)], "b": None, "c": "\u00e9\U0001f600"}
    assert jsonb_safe(value) == {"a": ["x", ["y", 1]], "b": None, "c": "\u00e9\U0001f600"}
    assert jsonb_safe("a\x00\ud800b") == "a\ufffd?b"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_give_metadata_jsonb_accepts(raw: bytes) -> None:
    meta = analyze(b"Subject: " + raw + b"\r\n\r\n" + raw)
    text = metadata_json(meta)
    assert not jsonb_refuses(text)
    assert json.loads(text) == metadata_dict(meta)
