"""The verdict's short form (``"verdict": "mta"``) reads in the mta as the full one does.

The mta asks for it on both endpoints; a dmarc service older than it ignores the field and
answers the full verdict, so either side may be upgraded first (issue 23).
"""

from __future__ import annotations

import base64
import json
from dataclasses import fields

import pytest

from postroom_dmarc.api import parse_check, parse_raw_check
from postroom_dmarc.content import ContentResult
from postroom_dmarc.dkimcheck import ARCResult, DKIMResult
from postroom_dmarc.spfcheck import SPFResult
from postroom_dmarc.verdict import DMARCResult, Verdict, with_content
from postroom_mta.dmarcclient import parse_verdict, raw_request_body, request_body

SPF = SPFResult("pass", "mailfrom", "example.com", "a@example.com", "ok")
DKIM = [DKIMResult("fail", "example.com", "s1", "rsa-sha256", "abc", "body hash", 2048)]
ARC = ARCResult("pass", "success", [{"instance": 1, "sealer": "x.test", "cv": "none"}])
DMARC = DMARCResult("fail", "example.com", "example.com", "example.com", "reject", "reject",
                    None, False, False, "neither aligned", {"p": "reject", "pct": 100})
BASE = Verdict(SPF, None, DKIM, ARC, DMARC, "reject", "DMARC policy rejects",
               "mx.example.net;\r\n\tdmarc=fail header.from=example.com")
INBOX = Verdict(SPF, SPF, [], ARCResult("none", "Message is not ARC signed"),
                DMARCResult("pass", "example.com", reason="aligned SPF"), "inbox", "",
                "mx.example.net; spf=pass")
CONTENT = with_content(INBOX, [
    ContentResult("rspamd", "quarantine", "spam", [("X-Spamd-Result", "default: True [9.1]"),
                                                   ("X-Spam", "Yes")], {"category": "spam"}),
    ContentResult("clamd", "accept", "", [], {})])
TEMPFAIL = with_content(INBOX, [ContentResult("clamd", "tempfail", "clamd unreachable")])


def _read(body: dict) -> dict:
    verdict = parse_verdict(json.dumps(body).encode())
    read = {f.name: getattr(verdict, f.name) for f in fields(verdict) if f.name != "raw"}
    # what inbound.py reads from the raw body besides: each content check's outcome
    read["content"] = [(c.get("check"), c.get("action")) for c in verdict.raw.get("content", [])]
    return read


@pytest.mark.parametrize("verdict", [BASE, INBOX, CONTENT, TEMPFAIL])
def test_the_short_verdict_reads_as_the_full_one(verdict: Verdict) -> None:
    full, short = verdict.to_json(), verdict.to_json(short=True)
    assert _read(short) == _read(full)
    assert len(json.dumps(short)) < len(json.dumps(full))
    # the fields the short form keeps are the full form's own
    for name in short:
        if name == "dmarc":
            assert short[name] == {"result": full["dmarc"]["result"]}
        elif name == "content":
            assert short[name] == [{"check": c["check"], "action": c["action"]}
                                   for c in full["content"]]
        else:
            assert short[name] == full[name]


def test_the_full_verdict_is_unchanged_without_the_field() -> None:
    assert set(BASE.to_json()) == {"spf", "spf_helo", "dkim", "arc", "dmarc", "disposition",
                                   "reason", "authentication_results"}


def _envelope(**extra) -> dict:
    return {"client_ip": "192.0.2.1", "helo": "h.example", "mail_from": "a@example.com",
            "recipients": ["b@example.net"], "queue_id": "Q1", **extra}


def test_the_mta_asks_for_the_short_form_on_both_endpoints() -> None:
    args = {"client_ip": "192.0.2.1", "helo": "h.example", "mail_from": "a@example.com",
            "recipients": ["b@example.net"], "message": b"From: a@x.y\r\n\r\nb\r\n",
            "queue_id": "Q1"}
    assert parse_raw_check(raw_request_body(**args)).short
    assert parse_check(request_body(**args)).short


@pytest.mark.parametrize("value", [None, "full", "MTA", 1, ["mta"]])
def test_any_other_request_gets_the_full_verdict(value: object) -> None:
    extra = {} if value is None else {"verdict": value}
    message = base64.b64encode(b"From: a@x.y\r\n\r\n").decode()
    assert not parse_check(json.dumps(_envelope(message_b64=message, **extra)).encode()).short
    assert not parse_raw_check(json.dumps(_envelope(**extra)).encode() + b"\nFrom: a@x.y\r\n\r\n"
                               ).short
