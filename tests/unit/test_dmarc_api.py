"""Parsing of /v1/check request bodies and the deadline's tempfail answer."""

from __future__ import annotations

import base64
import json

import pytest

from postroom_dmarc.api import BadRequest, parse_check, tempfail_verdict


def _body(**fields) -> bytes:
    data = {"client_ip": "192.0.2.1", "helo": "h.example", "mail_from": "a@example.com",
            "recipients": ["b@example.net"], "message_b64": base64.b64encode(b"From: a@x.y\r\n\r\n")
            .decode()}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


def test_valid_body_becomes_a_check_request():
    check = parse_check(_body(queue_id="Q1"))
    assert (check.client_ip, check.recipients, check.message, check.queue_id) == (
        "192.0.2.1", ("b@example.net",), b"From: a@x.y\r\n\r\n", "Q1")


def test_null_sender_may_be_omitted():
    assert parse_check(_body(mail_from=None)).mail_from == ""


@pytest.mark.parametrize(("fields", "error"), [
    ({"message_b64": "***"}, "message_b64 is not base64"),
    ({"client_ip": None}, "client_ip must be a string"),
    ({"recipients": "b@example.net"}, "recipients must be a list of strings"),
])
def test_bad_fields_are_named(fields, error):
    with pytest.raises(BadRequest, match=error):
        parse_check(_body(**fields))


def test_non_object_json_is_refused():
    with pytest.raises(BadRequest):
        parse_check(b"[1, 2]")


def test_tempfail_verdict_never_rejects():
    verdict = tempfail_verdict(parse_check(_body()), "mx.example.net", "too slow")
    assert verdict["disposition"] == "tempfail"
    assert verdict["authentication_results"].startswith("mx.example.net;")
