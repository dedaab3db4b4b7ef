"""The DKIM step's limits: a cap on signatures (aligned ones first), a time budget, a deadline."""

from __future__ import annotations

import time

import pytest

from postroom.mailauth import dkimsign
from postroom.net.dns import DNSTempError, NXDomain, Resolver
from postroom_dmarc import dkimcheck

PRIVATE, _TXT = dkimsign.generate_keys("ed25519-sha256")
BASE = (b"From: a@news.example.com\r\nTo: b@receiver.test\r\nSubject: hi\r\n"
        b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\nbody\r\n")


class Recording(Resolver):
    """A resolver that asks no server: it notes each name and answers NXDOMAIN."""

    def __init__(self) -> None:
        super().__init__([("127.0.0.1", 9)], timeout=1.0)
        self.asked: list[str] = []  # shared with until()'s views (a shallow copy)

    def _lookup(self, qname, qtype, now):  # type: ignore[no-untyped-def]
        if self.time_left() <= 0:
            raise DNSTempError(qname)
        self.asked.append(qname.rstrip("."))
        raise NXDomain(qname)


def signed(*signers: tuple[str, str]) -> bytes:
    """BASE with a DKIM-Signature for each (domain, selector), the first one on top."""
    fields = b"".join(dkimsign.sign(BASE, d, s, PRIVATE, "ed25519-sha256") for d, s in signers)
    return fields + BASE


NOISE = [(f"relay{i}.example", f"n{i}") for i in range(12)]
# for the author domain news.example.com: same domain, parent, same organization
RANKED = [("mail.example.com", "org"), ("example.com", "parent"), ("news.example.com", "same")]


def key_name(domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{domain}"


def test_cap_verifies_aligned_signatures_first_and_skips_the_rest():
    msg = signed(*NOISE, *RANKED)
    resolver = Recording()
    run = dkimcheck.verify(msg, resolver, authors=["news.example.com"], max_signatures=5)
    # best aligned first, then the others in message order, up to the cap
    assert resolver.asked == [key_name("news.example.com", "same"),
                              key_name("example.com", "parent"),
                              key_name("mail.example.com", "org"),
                              key_name("relay0.example", "n0"), key_name("relay1.example", "n1")]
    # reported in message order; the 10 beyond the cap are neither verified nor reported
    assert [r.selector for r in run.results] == ["n0", "n1", "org", "parent", "same"]
    assert (run.signatures, run.skipped, run.unfinished, run.out_of_time) == (15, 10, 0, False)
    assert {r.result for r in run.results} == {"permerror"}  # NXDOMAIN: no key


def test_without_authors_the_cap_keeps_message_order():
    run = dkimcheck.verify(signed(*NOISE), Recording(), max_signatures=3)
    assert [r.selector for r in run.results] == ["n0", "n1", "n2"]
    assert run.skipped == 9


def test_verify_all_has_no_cap():
    assert len(dkimcheck.verify_all(signed(*NOISE), Recording())) == 12


def test_past_the_deadline_no_signature_is_verified_nor_looked_up():
    resolver = Recording()
    late = resolver.until(time.monotonic() - 1)
    started = time.monotonic()
    run = dkimcheck.verify(signed(*NOISE), late, authors=["news.example.com"])
    assert time.monotonic() - started < 0.5
    assert resolver.asked == []
    assert [r.result for r in run.results] == ["temperror"] * dkimcheck.MAX_SIGNATURES
    assert {r.reason for r in run.results} == {dkimcheck.OUT_OF_TIME}
    assert (run.unfinished, run.out_of_time, run.skipped) == (10, True, 2)
    assert run.results[0].domain == "relay0.example"  # still says which signature it was


def test_unsigned_message_has_an_empty_run():
    assert dkimcheck.verify(BASE, Recording()) == dkimcheck.DKIMRun([])


@pytest.mark.parametrize("value", [b"v=1; d=; s=x", b"no tags at all", b"d=" + b";" * 10_000])
def test_malformed_d_tags_rank_last_and_never_raise(value):
    msg = b"DKIM-Signature: " + value + b"\r\n" + signed(("news.example.com", "same"))
    resolver = Recording()
    run = dkimcheck.verify(msg, resolver, authors=["news.example.com"], max_signatures=1)
    assert resolver.asked == [key_name("news.example.com", "same")]
    assert run.skipped == 1


def test_until_takes_the_earlier_deadline_and_shares_the_cache():
    resolver = Resolver([("127.0.0.1", 9)], timeout=5.0)
    assert resolver.time_left() == 5.0
    now = time.monotonic()
    soon = resolver.until(now + 1)
    assert 0 < soon.time_left() <= 1
    assert soon.until(now + 60).deadline == now + 1
    assert soon.until(now + 0.5).deadline == now + 0.5
    assert resolver.deadline is None  # the original is not bounded
    assert soon._cache is resolver._cache


def test_a_lookup_past_the_deadline_fails_at_once():
    resolver = Resolver([("127.0.0.1", 9)], timeout=5.0).until(time.monotonic() - 0.1)
    started = time.monotonic()
    with pytest.raises(DNSTempError, match="no time left"):
        resolver.txt("example.org")
    assert time.monotonic() - started < 0.1
