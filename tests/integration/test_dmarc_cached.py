"""Checks answered from the resolver's cache alone (on the reactor): same verdict, no lookups."""

from __future__ import annotations

import time

import pytest

from postroom.mailauth import dkimsign
from postroom.net.dns import Resolver
from postroom_dmarc.verdict import (
    CACHED_MAX_MESSAGE,
    CheckRequest,
    Options,
    PendingCheck,
    evaluate,
)
from tests.support.ports import free_port

GOOD_IP = "192.0.2.10"
BAD_IP = "198.51.100.1"
PRIVATE, PUBLIC_TXT = dkimsign.generate_keys("ed25519-sha256")
TTL = 300


def message(from_header: str = "Alice <alice@example.com>", *, sign: str | None = None,
            body: bytes = b"Hi Bob.\r\n") -> bytes:
    msg = f"From: {from_header}\r\n".encode() + b"To: bob@receiver.test\r\nSubject: hello\r\n" \
        b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n" + body
    if sign:
        msg = dkimsign.sign(msg, sign, "sel", PRIVATE, "ed25519-sha256") + msg
    return msg


def request(msg: bytes, mail_from: str = "bounce@example.com", ip: str = GOOD_IP,
            helo: str = "mail.example.com") -> CheckRequest:
    return CheckRequest(client_ip=ip, helo=helo, mail_from=mail_from,
                        recipients=("bob@receiver.test",), message=msg, queue_id="QC")


def options(sampler=lambda: 0.0) -> Options:
    return Options(authserv_id="mx.receiver.test", sampler=sampler)


@pytest.fixture
def zone(dns_server):
    for domain in ("example.com", "mail.example.com", "other.net"):
        dns_server.set_records(domain, "TXT", [f"v=spf1 ip4:{GOOD_IP} -all"], ttl=TTL)
        dns_server.set_records(f"sel._domainkey.{domain}", "TXT", [PUBLIC_TXT], ttl=TTL)
    dns_server.set_records("_dmarc.example.com", "TXT", ["v=DMARC1; p=reject"], ttl=TTL)
    # no DMARC record, with a TTL (this server's NXDOMAIN answers are not cacheable)
    dns_server.set_records("_dmarc.other.net", "TXT", ["not a policy"], ttl=TTL)
    return dns_server


CASES = {
    "spf pass": (message(), "b@example.com", GOOD_IP),
    "dkim pass": (message(sign="example.com"), "b@other.net", BAD_IP),
    "spoofed": (message(), "b@other.net", BAD_IP),
    "null sender": (message(), "", BAD_IP),
    "no dmarc record": (message("x@other.net"), "b@other.net", BAD_IP),
    "two authors": (message("a@example.com, b@other.net"), "b@other.net", BAD_IP),
    "no from": (b"Subject: x\r\n\r\nbody\r\n", "b@other.net", BAD_IP),
    "header starts folded": (b" folded\r\nFrom: a@example.com\r\n\r\nx\r\n", "b@x.net", BAD_IP),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cached_verdict_is_the_evaluated_one_and_needs_no_server(zone, case):
    msg, mail_from, ip = CASES[case]
    check = request(msg, mail_from, ip)
    resolver = zone.resolver()
    try:
        expected = evaluate(check, resolver, options()).to_json()
    except Exception:  # the thread's evaluation fails: the cached one gives up
        assert PendingCheck(check, resolver, options()).from_cache() is None
        return
    for name in ("example.com", "mail.example.com", "other.net", "_dmarc.example.com",
                 "_dmarc.other.net", "sel._domainkey.example.com", "x.net"):
        zone.timeout(name)
    started = time.monotonic()
    verdict = PendingCheck(check, resolver, options()).from_cache()
    assert time.monotonic() - started < 1
    assert verdict is not None and verdict.to_json() == expected


def test_cold_cache_gives_up_at_once_and_the_thread_evaluates(zone):
    check = request(message(sign="example.com"), "b@other.net", BAD_IP)
    unreachable = Resolver([("127.0.0.1", free_port())], timeout=3)
    started = time.monotonic()
    assert PendingCheck(check, unreachable, options()).from_cache() is None
    assert time.monotonic() - started < 1  # no query was sent
    pending = PendingCheck(check, zone.resolver(), options())
    assert pending.from_cache() is None
    assert pending.evaluate().to_json() == evaluate(check, zone.resolver(), options()).to_json()


def test_pct_samples_of_an_abandoned_attempt_are_replayed(zone):
    zone.set_records("_dmarc.example.com", "TXT", ["v=DMARC1; p=reject; pct=50"], ttl=TTL)
    zone.set_records("_dmarc.other.net", "TXT", ["v=DMARC1; p=none"], ttl=TTL)
    check = request(message("a@example.com, b@other.net"), "b@other.net", BAD_IP)
    warm = zone.resolver()
    evaluate(request(message("a@example.com"), "b@other.net", BAD_IP), warm, options())
    # example.com is cached and sampled; other.net's record is not, so the attempt is abandoned
    draws = iter([0.9, 0.1, 0.1])
    pending = PendingCheck(check, warm, options(lambda: next(draws)))
    assert pending.from_cache() is None
    assert pending._drawn == [0.9]  # drawn before the attempt was abandoned
    verdict = pending.evaluate()
    assert (verdict.dmarc.override, verdict.dmarc.applied_policy) == ("sampled_out", "quarantine")
    fresh = iter([0.9])
    expected = evaluate(check, zone.resolver(), options(lambda: next(fresh)))
    assert verdict.to_json() == expected.to_json()


def test_large_or_many_signature_messages_always_go_to_the_thread(zone):
    resolver = zone.resolver()
    big = request(message(body=b"x" * CACHED_MAX_MESSAGE), "b@example.com")
    signed = message(sign="example.com")
    for _ in range(4):
        signed = dkimsign.sign(signed, "example.com", "sel", PRIVATE, "ed25519-sha256") + signed
    many = request(signed, "b@example.com")
    for check in (big, many):
        evaluate(check, resolver, options())  # everything is cached now
        assert PendingCheck(check, resolver, options()).from_cache() is None


def test_spf_results_are_kept_until_the_first_answer_they_read_expires(zone, monkeypatch):
    # the SPF memo (issue 23): a cached evaluation is reused while every DNS answer it
    # read is fresh, and evaluated again once the earliest of them has expired
    from postroom_dmarc import verdict as verdict_module
    check = request(message(), "b@example.com", GOOD_IP)
    resolver = zone.resolver()
    evaluate(check, resolver, options())  # the answers cached
    first = PendingCheck(check, resolver, options()).from_cache()
    assert first is not None and first.spf.result == "pass"
    assert len(resolver.memos[0]._entries) == 2  # MAIL FROM and HELO identities
    # the sender's record changes; a fresh answer is cached (TTL 300 from now)
    zone.set_records("example.com", "TXT", ["v=spf1 -all"], ttl=TTL)
    resolver.clear_cache()
    evaluate(check, resolver, options())
    again = PendingCheck(check, resolver, options()).from_cache()
    assert again is not None and again.spf == first.spf  # the old answer's TTL still runs
    real = time.monotonic
    monkeypatch.setattr(verdict_module, "_clock", lambda: real() + TTL + 1)
    later = PendingCheck(check, resolver, options()).from_cache()
    assert later is not None and later.spf.result == "fail"
    assert later.to_json() == evaluate(check, zone.resolver(), options()).to_json()


def test_spf_results_of_an_abandoned_attempt_are_not_kept(zone):
    check = request(message(), "b@example.com", GOOD_IP)
    unreachable = Resolver([("127.0.0.1", free_port())], timeout=3)
    assert PendingCheck(check, unreachable, options()).from_cache() is None
    assert [len(m._entries) for m in unreachable.memos] == [0, 0]


def test_dmarc_records_are_kept_until_their_answer_expires(zone, monkeypatch):
    # the DMARC lookup memo (issue 23): _dmarc.<domain> read and parsed once while fresh
    from postroom_dmarc import verdict as verdict_module
    check = request(message(), "b@other.net", BAD_IP)  # spoofed: example.com's policy decides
    resolver = zone.resolver()
    evaluate(check, resolver, options())
    first = PendingCheck(check, resolver, options()).from_cache()
    assert first is not None and first.dmarc.policy == "reject"
    assert first.disposition == "reject"
    assert len(resolver.memos[1]._entries) == 1
    zone.set_records("_dmarc.example.com", "TXT", ["v=DMARC1; p=none"], ttl=TTL)
    resolver.clear_cache()
    evaluate(check, resolver, options())
    again = PendingCheck(check, resolver, options()).from_cache()
    assert again is not None and again.to_json() == first.to_json()
    real = time.monotonic
    monkeypatch.setattr(verdict_module, "_clock", lambda: real() + TTL + 1)
    later = PendingCheck(check, resolver, options()).from_cache()
    assert later is not None and later.dmarc.policy == "none" and later.disposition == "inbox"
    assert later.to_json() == evaluate(check, zone.resolver(), options()).to_json()
