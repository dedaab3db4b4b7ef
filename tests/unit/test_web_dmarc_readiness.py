"""The readiness verdict for p=quarantine / p=reject: a table of cases, reasons, the next record."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from postroom.mailauth.dmarcrecord import parse
from postroom.store.dmarcstats import Counts, SourceCounts, Totals
from postroom_web.dmarc.readiness import CurrentRecord, assess, next_record
from postroom_web.dmarc.sources import SourceName

D = "example.org"
WHEN = datetime(2026, 3, 1, tzinfo=UTC)
RECORD = "v=DMARC1; p=none; rua=mailto:dmarc@example.org; ruf=mailto:f@example.org; fo=1; adkim=s"


def totals(sources: list[SourceCounts], days: int = 30) -> Totals:
    seen = sum((s.counts for s in sources if s.origin == "seen"), Counts())
    reported = sum((s.counts for s in sources if s.origin == "reported"), Counts())
    return Totals(seen, reported, seen_sources=len(sources), seen_days=days,
                  reported_days=days, reports=3, first_at=WHEN, last_at=WHEN)


def src(ip: str, messages: int, spf: int, dkim: int, dmarc: int,
        origin: str = "reported") -> SourceCounts:
    return SourceCounts(ip, origin, Counts(messages, spf, dkim, dmarc), WHEN, (D,))


def record(text: str = RECORD) -> CurrentRecord:
    return CurrentRecord(D, D, parse(text))


GOOD = [src("192.0.2.1", 5000, 4000, 5000, 5000), src("192.0.2.2", 1000, 1000, 990, 1000)]
SPOOF = [src("203.0.113.66", 300, 0, 0, 0)]


CASES = [
    # (name, sources, days, record, verdict, words in a reason)
    ("nothing measured", [], 30, record(), "no_data", "No DMARC verdicts"),
    ("too few messages", [src("192.0.2.1", 50, 50, 50, 50)], 30, record(), "not_ready",
     "only 50 messages"),
    ("too few days", GOOD, 3, record(), "not_ready", "span 3 days"),
    ("all good", GOOD + SPOOF, 30, record(), "ready_for_reject", "pass DMARC"),
    ("one legitimate source at 97%", [*GOOD, src("192.0.2.3", 1000, 970, 0, 970)], 30,
     record(), "ready_for_quarantine", "below the 99% needed for p=reject"),
    ("one legitimate source at 80%", [*GOOD, src("192.0.2.3", 1000, 800, 0, 800)], 30,
     record(), "not_ready", "below the 95% needed for p=quarantine"),
    ("little DKIM", [src("192.0.2.1", 5000, 5000, 1000, 5000)], 30, record(),
     "ready_for_quarantine", "aligned DKIM signature"),
    ("no record", GOOD, 30, None, "not_ready", "has no DMARC record"),
    ("a mostly failing unknown source is spoofing, not a blocker", GOOD + SPOOF, 30,
     record(), "ready_for_reject", "mostly fail and are not known senders"),
    ("a small failing source is ignored", [*GOOD, src("192.0.2.9", 20, 10, 0, 12)], 30,
     record(), "ready_for_reject", "pass DMARC"),
]


@pytest.mark.parametrize("name,sources,days,current,verdict,words", CASES,
                         ids=[c[0] for c in CASES])
def test_verdicts(name, sources, days, current, verdict, words):
    if current is None:
        current = CurrentRecord(D)
    result = assess(D, totals(sources, days), sources, current)
    assert result.verdict == verdict
    assert any(words in reason for reason in result.reasons), result.reasons


def test_a_failing_known_sender_holds_the_verdict_back():
    google = src("209.85.220.41", 2000, 0, 0, 0)
    names = {"209.85.220.41": SourceName("209.85.220.41", "mail-sor-f41.google.com", True,
                                         "google.com", "Google", True)}
    result = assess(D, totals([*GOOD, google]), [*GOOD, google], record(), names=names)
    assert result.verdict == "not_ready"
    assert result.problem_sources == ("209.85.220.41",)
    assert any("209.85.220.41 (mail-sor-f41.google.com, Google) sent 2,000 messages" in r
               for r in result.reasons)


def test_the_same_address_from_both_origins_is_judged_on_its_sum():
    # 50% overall: legitimate-looking, and failing
    sources = [*GOOD, src("192.0.2.3", 500, 500, 500, 500, "seen"), src("192.0.2.3", 500, 0, 0, 0)]
    assert assess(D, totals(sources), sources, record()).verdict == "not_ready"


def test_next_record_keeps_every_other_tag():
    result = assess(D, totals(GOOD), GOOD, record())
    assert result.dns_record == ('_dmarc.example.org. IN TXT "v=DMARC1; p=reject; '
                                 'rua=mailto:dmarc@example.org; ruf=mailto:f@example.org; fo=1; '
                                 'adkim=s"')
    assert result.current_record == RECORD and result.policy == "none"


def test_quarantine_step_from_none():
    sources = [*GOOD, src("192.0.2.3", 1000, 970, 0, 970)]
    result = assess(D, totals(sources), sources,
                    record("v=DMARC1; p=none; rua=mailto:d@example.org"))
    assert result.dns_record == ('_dmarc.example.org. IN TXT "v=DMARC1; p=quarantine; '
                                 'rua=mailto:d@example.org"')


def test_nothing_to_change_when_the_record_is_already_strict():
    result = assess(D, totals(GOOD), GOOD, record("v=DMARC1; p=reject; rua=mailto:d@example.org"))
    assert result.verdict == "ready_for_reject" and result.dns_record is None
    assert any("already says p=reject" in r for r in result.reasons)


def test_no_record_suggests_the_starting_record():
    result = assess(D, totals(GOOD), GOOD, CurrentRecord(D), report_address="rua@example.org")
    assert result.dns_record == ('_dmarc.example.org. IN TXT "v=DMARC1; p=none; '
                                 'rua=mailto:rua@example.org; adkim=r; aspf=r"')


def test_unreadable_dns_leaves_the_verdict_to_the_figures_and_no_record_to_publish():
    result = assess(D, totals(GOOD), GOOD, CurrentRecord(D, unavailable=True))
    assert result.verdict == "ready_for_reject" and result.dns_record is None
    assert any("could not be read" in r for r in result.reasons)


def test_pct_and_sp_notes():
    text = "v=DMARC1; p=quarantine; sp=none; pct=50; rua=mailto:d@example.org"
    result = assess(D, totals(GOOD), GOOD, record(text))
    assert any(r.startswith("pct=50") for r in result.reasons)
    assert any(r.startswith("sp=none leaves subdomains") for r in result.reasons)
    assert result.dns_record is not None and "p=reject; sp=none; pct=50;" in result.dns_record


def test_org_domain_record_is_named():
    current = CurrentRecord("mail.example.org", "example.org", parse(RECORD))
    result = assess("mail.example.org", totals(GOOD), GOOD, current)
    assert any("the one at _dmarc.example.org applies" in r for r in result.reasons)
    assert result.dns_record is not None
    assert result.dns_record.startswith("_dmarc.mail.example.org. IN TXT")


def test_unsafe_terms_of_the_current_record_are_not_copied():
    current = parse('v=DMARC1; p=none; rua=mailto:d@example.org; x="; y=\\; z=é')
    assert next_record(current, "reject", D) == "v=DMARC1; p=reject; rua=mailto:d@example.org"
