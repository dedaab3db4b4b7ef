"""Parsing of DMARC policy records (RFC 7489 6.3, RFC 9989)."""

from __future__ import annotations

import pytest

from postroom.mailauth.dmarcrecord import DMARCRecord, MalformedRecord, NotDMARC, parse


def test_full_record_parses_every_tag():
    record = parse("v=DMARC1; p=reject; sp=quarantine; np=reject; pct=50; adkim=s; aspf=s; "
                   "t=y; psd=n; fo=1:d; rua=mailto:agg@example.com!10m; ruf=mailto:f@example.com")
    assert record == DMARCRecord(p="reject", sp="quarantine", np="reject", pct=50, adkim="s",
                                 aspf="s", t=True, psd="n", fo=("1", "d"),
                                 rua=("mailto:agg@example.com",), ruf=("mailto:f@example.com",))


def test_defaults_apply_to_absent_tags():
    record = parse("v=DMARC1; p=none")
    assert (record.sp, record.np, record.pct, record.adkim, record.aspf, record.t) == (
        None, None, 100, "r", "r", False)


def test_trailing_semicolon_and_spaces_are_fine():
    assert parse("v=DMARC1 ;  p = quarantine ; ").p == "quarantine"


def test_values_are_case_insensitive():
    assert parse("v=DMARC1; p=REJECT; ADKIM=S").adkim == "s"


def test_missing_p_means_none():
    assert parse("v=DMARC1; rua=mailto:a@example.com").p == "none"


def test_invalid_p_with_valid_rua_means_none():
    assert parse("v=DMARC1; p=bogus; rua=mailto:a@example.com").p == "none"


def test_invalid_p_without_rua_is_malformed():
    with pytest.raises(MalformedRecord):
        parse("v=DMARC1; p=bogus")


@pytest.mark.parametrize("record", [
    "v=DMARC1; p=reject; sp=maybe",
    "v=DMARC1; p=reject; pct=101",
    "v=DMARC1; p=reject; pct=fifty",
    "v=DMARC1; p=reject; adkim=x",
    "v=DMARC1; p=reject; t=maybe",
    "v=DMARC1; p=reject; fo=2",
    "v=DMARC1; p=reject; p=none",
    "v=DMARC1; p=reject; garbage",
])
def test_invalid_known_tags_are_malformed(record):
    with pytest.raises(MalformedRecord):
        parse(record)


def test_unknown_tags_are_ignored():
    assert parse("v=DMARC1; p=reject; future=1").p == "reject"


@pytest.mark.parametrize("txt", ["v=spf1 -all", "p=reject; v=DMARC1", "v=DMARC2; p=reject",
                                 "v=dmarc1; p=reject"])
def test_records_not_starting_with_v_dmarc1_are_not_dmarc(txt):
    with pytest.raises(NotDMARC):
        parse(txt)
