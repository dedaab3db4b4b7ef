"""The verdict's JSON, written out field by field, is exactly dataclasses.asdict; ARC shortcut."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import asdict, fields

import pytest

from postroom.mailauth.dmarcrecord import DMARCRecord, json_copy, parse
from postroom_dmarc import dkimcheck
from postroom_dmarc.dkimcheck import ARCResult, DKIMResult, parse_headers, verify_arc
from postroom_dmarc.spfcheck import SPFResult
from postroom_dmarc.verdict import DMARCResult

Pair = namedtuple("Pair", "a b")


def test_spf_and_dkim_results():
    spf = SPFResult("pass", "mailfrom", "example.com", "a@example.com", "ok")
    dkim = DKIMResult("pass", "example.com", "s1", "rsa-sha256", "abc", "verified", 2048)
    assert spf.to_json() == asdict(spf) and list(spf.to_json()) == [f.name for f in fields(spf)]
    assert dkim.to_json() == asdict(dkim)
    assert list(dkim.to_json()) == [f.name for f in fields(dkim)]


def test_arc_sets_are_copied():
    arc = ARCResult("pass", "success", [{"instance": 1, "sealer": "x.test", "cv": "none"}])
    data = arc.to_json()
    assert data == asdict(arc) and list(data) == [f.name for f in fields(arc)]
    data["sets"][0]["sealer"] = "changed"
    assert arc.sets[0]["sealer"] == "x.test"


def test_record_without_raw():
    record = parse("v=DMARC1; p=reject; sp=none; pct=50; fo=1:d; rua=mailto:a@x.test; t=y")
    expected = asdict(record)
    expected.pop("raw")
    assert record.to_json() == expected and list(record.to_json()) == list(expected)
    assert DMARCRecord().to_json() == {k: v for k, v in asdict(DMARCRecord()).items()
                                       if k != "raw"}


@pytest.mark.parametrize("record", [None, parse("v=DMARC1; p=none").to_json(),
                                    {"nested": [{"a": (1, [2])}], "pair": Pair(1, [2])}])
def test_dmarc_result(record):
    result = DMARCResult("fail", "example.com", "example.com", "example.com", "reject",
                         "quarantine", "sampled_out", True, False, "why", record)
    data = result.to_json()
    assert data == asdict(result) and list(data) == [f.name for f in fields(result)]
    if record is not None:
        assert data["record"] is not record


def test_json_copy_is_asdicts_copy():
    value = {"a": [1, (2, {"b": None})], "c": Pair([1], "x"), "d": 1.5, "e": True}
    copied = json_copy(value)
    assert copied == value and type(copied["c"]) is Pair
    assert copied["a"] is not value["a"] and copied["c"].a is not value["c"].a


class _NoDNS:
    timeout = 1.0

    def time_left(self) -> float:
        return self.timeout

    def txt_bytes(self, name: str) -> list[bytes]:
        raise AssertionError(f"looked up {name}")


MESSAGES = [
    b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n",
    b"From: a@example.com\nSubject: x\n\nbody\n",
    b"From a@example.com Thu Nov 26\r\nFrom: a@example.com\r\n\r\n",
    b"Subject: no body",
    b"",
]


@pytest.mark.parametrize("msg", MESSAGES)
def test_unsealed_message_answers_as_dkimpy_does(msg):
    headers = parse_headers(msg)
    assert headers is not None
    assert verify_arc(msg, _NoDNS(), headers=headers) == verify_arc(msg, _NoDNS())  # type: ignore[arg-type]


def test_unparseable_or_sealed_message_goes_through_dkimpy(monkeypatch):
    bad = b"\x01bad header\r\n\r\n"
    assert parse_headers(bad) is None
    assert verify_arc(bad, _NoDNS()).result == "fail"  # type: ignore[arg-type]
    sealed = b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=x.test; s=s; b=abc\r\n" \
        b"From: a@example.com\r\n\r\nbody\r\n"
    calls = []
    real = dkimcheck.dkim.arc_verify
    monkeypatch.setattr(dkimcheck.dkim, "arc_verify",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    verify_arc(sealed, _NoDNS(), headers=parse_headers(sealed))  # type: ignore[arg-type]
    assert calls == [1]
