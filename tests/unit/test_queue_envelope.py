"""Stream entry envelopes: encode/decode round trips and strict rejection of garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom.queue.envelope import BadEnvelope, Envelope, decode, encode
from postroom.queue.reconciler import envelopes_for

GOOD = Envelope(queue_id="01JDX3K9QZ7M2F4H", recipient_ids=(3, 1, 2), stream="deliver",
                disposition="junk", attempt=4)


def test_envelope_round_trips_through_its_fields():
    assert decode(encode(GOOD)) == GOOD


def test_encoded_fields_are_all_strings():
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in encode(GOOD).items())


def test_decode_accepts_bytes_fields_from_a_raw_client():
    raw = {k.encode(): v.encode() for k, v in encode(GOOD).items()}
    assert decode(raw) == GOOD


def test_decode_ignores_unknown_fields_from_a_newer_producer():
    assert decode({**encode(GOOD), "trace": "x"}) == GOOD


@pytest.mark.parametrize("change", [
    {"v": "2"},
    {"queue_id": ""},
    {"queue_id": "bad id\r\n"},
    {"rcpt": ""},
    {"rcpt": "1,,2"},
    {"rcpt": "-1"},
    {"rcpt": "0"},
    {"rcpt": "1,1"},
    {"rcpt": "99999999999999999999"},
    {"stream": "elsewhere"},
    {"disposition": "trash"},
    {"attempt": "-1"},
    {"attempt": "x"},
])
def test_decode_rejects_a_malformed_field(change):
    with pytest.raises(BadEnvelope):
        decode({**encode(GOOD), **change})


def test_decode_rejects_a_missing_field():
    fields = encode(GOOD)
    del fields["queue_id"]
    with pytest.raises(BadEnvelope):
        decode(fields)


def test_decode_rejects_an_entry_without_fields():
    with pytest.raises(BadEnvelope):
        decode({})


def test_envelope_refuses_to_be_built_invalid():
    with pytest.raises(BadEnvelope):
        Envelope(queue_id="Q1", recipient_ids=(), stream="deliver")


@given(st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=8))
def test_decode_of_arbitrary_text_fields_raises_only_bad_envelope(fields):
    try:
        decode(fields)
    except BadEnvelope:
        pass


@given(st.dictionaries(st.binary(max_size=12), st.binary(max_size=40), max_size=8))
def test_decode_of_arbitrary_bytes_fields_raises_only_bad_envelope(fields):
    try:
        decode(fields)
    except BadEnvelope:
        pass


def test_reconciler_groups_recipients_of_one_message_into_one_envelope():
    rows = [
        {"recipient_id": 1, "queue_id": "QA", "stream": "deliver", "attempts": 0},
        {"recipient_id": 2, "queue_id": "QB", "stream": "outbound", "attempts": 2},
        {"recipient_id": 3, "queue_id": "QA", "stream": "deliver", "attempts": 1},
        {"recipient_id": 4, "queue_id": "QA", "stream": "outbound", "attempts": 0},
    ]
    assert envelopes_for(rows) == [
        Envelope("QA", (1, 3), "deliver", "inbox", 1),
        Envelope("QB", (2,), "outbound", "inbox", 2),
        Envelope("QA", (4,), "outbound", "inbox", 0),
    ]
