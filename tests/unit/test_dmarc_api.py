"""Parsing of /v1/check request bodies and the deadline's tempfail answer."""

from __future__ import annotations

import base64
import json

import pytest

from postroom_dmarc.api import (
    MAX_RECIPIENTS,
    BadRequest,
    parse_check,
    parse_raw_check,
    tempfail_verdict,
)


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


def _raw(message: bytes = b"From: a@x.y\r\n\r\nbody\r\n", **fields) -> bytes:
    data = {"client_ip": "192.0.2.1", "helo": "h.example", "mail_from": "a@example.com",
            "recipients": ["b@example.net"], "queue_id": "Q1"}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode() + b"\n" + message


def test_raw_body_is_the_envelope_line_then_the_message_as_is():
    message = b"From: a@x.y\r\nSubject: {\"x\": 1}\n\r\n\r\nbody\x00\xff\r\n.\r\n"
    check = parse_raw_check(_raw(message, mail_from="line\nbreak@example.com"))
    assert (check.client_ip, check.recipients, check.queue_id) == (
        "192.0.2.1", ("b@example.net",), "Q1")
    assert check.message == message
    assert check.mail_from == "line\nbreak@example.com"  # escaped in the JSON line


def test_raw_and_json_bodies_give_the_same_request():
    assert parse_raw_check(_raw(b"From: a@x.y\r\n\r\n")) == parse_check(_body(queue_id="Q1"))


@pytest.mark.parametrize(("body", "error"), [
    (b'{"client_ip": "192.0.2.1"}', "no line break after the envelope"),
    (b"not json\nFrom: a@x.y\r\n", "body is not JSON"),
    (b"[1]\nFrom: a@x.y\r\n", "body must be a JSON object"),
    (_raw(client_ip=None), "client_ip must be a string"),
    (_raw(recipients=["x"] * (MAX_RECIPIENTS + 1)), "recipients must be a list of strings"),
])
def test_bad_raw_bodies_are_named(body, error):
    with pytest.raises(BadRequest, match=error):
        parse_raw_check(body)


@pytest.mark.parametrize("path", [b"/v1/check", b"/v1/check-raw", b"/v1/check/", b"/v1/other",
                                  b"/v1", b"/"])
def test_site_finds_what_the_resource_tree_finds(path):
    from twisted.web import resource
    from twisted.web.test.requesthelper import DummyRequest

    from postroom.net.dns import Resolver
    from postroom_dmarc.api import CheckResource, build_site
    from postroom_dmarc.verdict import Options

    check = CheckResource(Resolver(), Options(authserv_id="mx.test"), None, None,  # type: ignore[arg-type]
                          max_inflight=1, deadline=1.0)
    site = build_site(check, 1024)

    def request():
        req = DummyRequest(path[1:].split(b"/"))
        req.path = path
        return req

    fast, walked = request(), request()
    found = site.getResourceFor(fast)
    expected = resource.getChildForRequest(site.resource, walked)
    assert type(found) is type(expected)
    if isinstance(expected, resource.NoResource):
        return
    assert found is expected
    assert (fast.prepath, fast.postpath) == (walked.prepath, walked.postpath)
    assert fast.site is site and fast.sitepath == []
