"""The pure parts of the content scanners: rspamd's answer, clamd's protocol, folding verdicts."""

from __future__ import annotations

import json
import struct

import pytest

from postroom.mailauth.authres import strip_fields
from postroom.net.clamd import ClamdError, instream_frames, parse_address, parse_reply
from postroom_dmarc.content import ContentResult, combine
from postroom_dmarc.content.rspamd import (
    RspamdError,
    ScanRequest,
    parse_answer,
    request_headers,
    result_headers,
)
from postroom_mta.dmarcclient import parse_verdict
from postroom_mta.inbound import added_field


def test_rspamd_answer_gives_action_scores_and_symbols_by_weight() -> None:
    body = json.dumps({"action": "add header", "score": 7.5, "required_score": 15,
                       "symbols": {"A": {"score": 0.1}, "B": {"score": 5.0},
                                   "C": {"score": -2}}}).encode()
    action, score, required, symbols = parse_answer(body)
    assert (action, score, required) == ("add header", 7.5, 15.0)
    assert [name for name, _ in symbols] == ["B", "C", "A"]


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"action": "explode"}',
                                  b'{"action": "reject", "score": "high"}'])
def test_rspamd_answer_that_is_not_one_is_an_error(body: bytes) -> None:
    with pytest.raises(RspamdError):
        parse_answer(body)


def test_result_headers_fold_one_symbol_a_line() -> None:
    headers = dict(result_headers("no action", 1.5, 15, [("A", 1.0), ("B", 0.5)]))
    assert headers["X-Spamd-Result"] == "default: False [1.50 / 15.00];\nA(1.00);\nB(0.50)"
    assert headers["X-Spam-Status"] == "No, score=1.50 required=15.00"
    assert headers["X-Spam-Score"] == "1.50"


def test_request_headers_carry_envelope_and_our_results_without_control_characters() -> None:
    scan = ScanRequest(message=b"", queue_id="Q1", client_ip="192.0.2.1",
                       helo="evil\r\nX-Injected: 1", mail_from="", user="alice",
                       spf="softfail", dkim=[("pass", "a.example"), ("temperror", "b.example")],
                       dmarc="quarantine")
    headers = request_headers(scan, "pw")
    assert headers["Helo"] == "evil??X-Injected: 1"
    assert headers["From"] == "<>" and headers["User"] == "alice"
    assert headers["Password"] == "pw" and headers["Queue-Id"] == "Q1"
    assert json.loads(headers["SPF"]) == {"result": "softfail"}
    assert json.loads(headers["DKIM"])["results"] == [
        {"result": "pass", "domain": "a.example"}, {"result": "tempfail", "domain": "b.example"}]
    assert json.loads(headers["DMARC"]) == {"result": "quarantine"}


@pytest.mark.parametrize(("address", "parsed"), [
    ("tcp:127.0.0.1:3310", ("tcp", "127.0.0.1", 3310)),
    ("tcp:[::1]:3310", ("tcp", "::1", 3310)),
    ("unix:/run/clamav/clamd.ctl", ("unix", "/run/clamav/clamd.ctl", 0)),
])
def test_clamd_addresses(address: str, parsed: tuple[str, str, int]) -> None:
    assert parse_address(address) == parsed


@pytest.mark.parametrize("address", ["127.0.0.1:3310", "tcp:host", "tcp:host:99999", "udp:x:1"])
def test_bad_clamd_addresses(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)


def test_instream_is_length_prefixed_chunks_ending_with_zero_and_bounded() -> None:
    frames = instream_frames(b"a" * 70_000, max_stream=68_000)
    assert frames[0] == b"zINSTREAM\0"
    sizes = [struct.unpack(">I", f[:4])[0] for f in frames[1:]]
    assert sizes == [65536, 68_000 - 65536, 0]


@pytest.mark.parametrize(("reply", "parsed"), [
    (b"stream: OK\0", ("clean", "")),
    (b"stream: Eicar-Signature FOUND\0", ("virus", "Eicar-Signature")),
])
def test_clamd_replies(reply: bytes, parsed: tuple[str, str]) -> None:
    assert parse_reply(reply) == parsed


@pytest.mark.parametrize("reply", [b"INSTREAM size limit exceeded. ERROR\0", b"",
                                   b"stream: a b FOUND\0", b"stream: x\r\nY FOUND"])
def test_clamd_errors_and_odd_replies_are_errors(reply: bytes) -> None:
    with pytest.raises(ClamdError):
        parse_reply(reply)


def test_combine_takes_the_strictest_and_keeps_every_header() -> None:
    results = [ContentResult("rspamd", "quarantine", "spam", [("X-Spam-Status", "Yes")]),
               ContentResult("clamd", "tempfail", "down"),
               ContentResult("attachments", "accept")]
    combined = combine(results)
    assert (combined.check, combined.action) == ("clamd", "tempfail")
    assert combined.headers == [("X-Spam-Status", "Yes")]
    assert combine([]).action == "accept"


def _verdict(**extra: object) -> bytes:
    return json.dumps({"disposition": "inbox", "reason": "", "authentication_results": "",
                       **extra}).encode()


def test_mta_reads_the_headers_to_add_and_who_decided() -> None:
    verdict = parse_verdict(_verdict(headers=[["X-Spam-Score", "1.00"]], decided_by="rspamd"))
    assert verdict.headers == (("X-Spam-Score", "1.00"),) and verdict.decided_by == "rspamd"


@pytest.mark.parametrize("headers", [[["Bad Name", "x"]], [["X: y", "x"]], "X-A: b",
                                     [["X-A"]], [["X-A", 1]]])
def test_mta_leaves_out_headers_that_are_not_plain_fields(headers: object) -> None:
    assert parse_verdict(_verdict(headers=headers)).headers == ()


def test_added_field_folds_at_newlines_and_neutralises_control_characters() -> None:
    assert added_field("X-Spamd-Result", "default: False [1 / 15];\nA(1)\r\nX-Evil: 1") == \
        b"X-Spamd-Result: default: False [1 / 15];\r\n\tA(1)?\r\n\tX-Evil: 1\r\n"


def test_strip_fields_drops_a_senders_copies_with_continuations_and_never_the_body() -> None:
    message = (b"X-Spam-Status: No,\r\n\tscore=-100\r\nSubject: hi\r\n"
               b"x-spamd-result: forged\r\n\r\nX-Spam-Status: in the body\r\n")
    assert strip_fields(message, frozenset({b"x-spam-status", b"x-spamd-result"})) == \
        b"Subject: hi\r\n\r\nX-Spam-Status: in the body\r\n"
