"""Inbound port 25: the pure parts (relay decisions on parsed paths, headers, verdicts, keys)."""

from __future__ import annotations

import json

import pytest

from postroom.queue.greylist import client_network, triplet_key
from postroom.smtp import grammar
from postroom_mta.dmarcclient import parse_verdict, request_body
from postroom_mta.dnsbl import is_listing, query_name
from postroom_mta.inbound import (
    RelayDenied,
    authentication_results_field,
    recipient_parts,
    unquote_local_part,
)


def rcpt(path: str) -> grammar.Address:
    command = grammar.parse_command(f"RCPT TO:{path}".encode(), smtputf8=False)
    assert isinstance(command, grammar.Rcpt)
    return command.path


@pytest.mark.parametrize("path", [
    "<user%remote.example@local.test>",      # percent hack
    '<"user@remote.example"@local.test>',    # quoted local part hiding an address
    '<"user%remote.example"@local.test>',
    "<remote.example!user@local.test>",      # bang path
    "<user@[127.0.0.1]>",                    # address literal
    "<user@[IPv6:::1]>",
])
def test_routing_tricks_are_relay_denied_before_any_lookup(path):
    with pytest.raises(RelayDenied):
        recipient_parts(rcpt(path), "mx.local.test")


def test_source_route_is_dropped_by_the_grammar_leaving_the_final_mailbox():
    assert recipient_parts(rcpt("<@relay.example:bob@local.test>"), "mx") == ("bob", "local.test")


def test_quoted_plain_local_part_is_unquoted():
    assert recipient_parts(rcpt('<"bob"@local.test>'), "mx") == ("bob", "local.test")


def test_bare_postmaster_is_postmaster_at_our_hostname():
    assert recipient_parts(rcpt("<Postmaster>"), "mx.local.test") == ("postmaster",
                                                                      "mx.local.test")


@pytest.mark.parametrize("path", ["<user@local.test.>", "<user@other.example@local.test>"])
def test_malformed_paths_never_reach_the_policy(path):
    with pytest.raises(grammar.ParseError):
        rcpt(path)


def test_unquote_removes_backslash_escapes():
    assert unquote_local_part(r'"a\"b\\c"') == 'a"b\\c'


def test_authentication_results_field_is_folded_with_indented_continuations():
    field = authentication_results_field("mx.test;\r\n\tspf=pass;\r\ndkim=none", "mx.test")
    assert field == b"Authentication-Results: mx.test;\r\n\tspf=pass;\r\n\tdkim=none\r\n"


def test_empty_authentication_results_says_none():
    assert authentication_results_field("", "mx.test") == \
        b"Authentication-Results: mx.test; none\r\n"


def test_verdict_is_parsed_from_the_documented_body():
    verdict = parse_verdict(json.dumps({
        "disposition": "junk", "reason": "quarantine", "authentication_results": "mx; none",
        "dmarc": {"result": "fail"}}).encode())
    assert (verdict.disposition, verdict.reason, verdict.dmarc_result) == ("junk", "quarantine",
                                                                            "fail")


@pytest.mark.parametrize("body", [b"[]", b'{"disposition": "accept"}', b"not json",
                                  b'{"disposition": "inbox", "reason": 5}'])
def test_anything_but_a_verdict_is_refused(body):
    with pytest.raises(ValueError):
        parse_verdict(body)


def test_request_body_carries_the_envelope_base64_message_and_asks_for_the_short_verdict():
    body = json.loads(request_body(client_ip="192.0.2.1", helo=None, mail_from="",
                                   recipients=["a@b"], message=b"x", queue_id="Q"))
    assert body == {"client_ip": "192.0.2.1", "helo": "", "mail_from": "", "recipients": ["a@b"],
                    "queue_id": "Q", "message_b64": "eA==", "verdict": "mta"}


def test_greylist_keys_on_the_client_network():
    assert client_network("192.0.2.77") == "192.0.2.0/24"
    assert client_network("2001:db8::1") == "2001:db8::/64"
    assert triplet_key("p:", "192.0.2.1", "a@x", "b@y") == triplet_key("p:", "192.0.2.200",
                                                                       "A@X", "b@y")
    assert triplet_key("p:", "192.0.2.1", "a@x", "b@y") != triplet_key("p:", "192.0.3.1",
                                                                       "a@x", "b@y")


def test_dnsbl_query_names_reverse_the_address():
    assert query_name("192.0.2.1", "bl.test") == "1.2.0.192.bl.test"
    assert query_name("2001:db8::1", "bl.test").startswith("1.0.0.0.0.0.0.0.")
    assert query_name("junk", "bl.test") is None


def test_dnsbl_error_codes_do_not_list():
    assert is_listing("127.0.0.2")
    assert not is_listing("127.255.255.254")
    assert not is_listing("192.0.2.1")
