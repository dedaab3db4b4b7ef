"""MTA-STS (RFC 8461) parsing: the TXT record, the policy file and mx pattern matching."""

from __future__ import annotations

import pytest

from postroom_mta.mtasts import MAX_AGE_LIMIT, PolicyError, mx_matches, parse_policy, parse_txt

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx1.two.test\r\nmx: *.mail.two.test\r\n" \
         "max_age: 86400\r\n"


def test_txt_record_gives_the_id() -> None:
    assert parse_txt(["v=STSv1; id=20261126T1"]) == "20261126T1"


def test_txt_without_stsv1_is_no_policy() -> None:
    assert parse_txt(["v=spf1 -all"]) is None


def test_two_stsv1_txt_records_are_no_policy() -> None:
    assert parse_txt(["v=STSv1; id=a", "v=STSv1; id=b"]) is None


def test_txt_with_invalid_id_is_no_policy() -> None:
    assert parse_txt(["v=STSv1; id=not-alnum!"]) is None


def test_policy_fields_are_parsed() -> None:
    policy = parse_policy(POLICY, "x1")
    assert (policy.mode, policy.mx, policy.max_age, policy.id) == (
        "enforce", ("mx1.two.test", "*.mail.two.test"), 86400, "x1")


def test_policy_with_bad_version_is_refused() -> None:
    with pytest.raises(PolicyError):
        parse_policy(POLICY.replace("STSv1", "STSv2"))


def test_policy_with_unknown_mode_is_refused() -> None:
    with pytest.raises(PolicyError):
        parse_policy(POLICY.replace("enforce", "strict"))


def test_enforce_policy_without_mx_is_refused() -> None:
    with pytest.raises(PolicyError):
        parse_policy("version: STSv1\nmode: enforce\nmax_age: 60\n")


def test_max_age_is_capped_at_a_year() -> None:
    assert parse_policy(POLICY.replace("86400", "999999999")).max_age == MAX_AGE_LIMIT


def test_exact_mx_pattern_matches_case_insensitively() -> None:
    assert mx_matches("mx1.two.test", "MX1.two.test.")


def test_wildcard_mx_pattern_matches_one_label() -> None:
    assert mx_matches("*.mail.two.test", "a.mail.two.test")


def test_wildcard_mx_pattern_does_not_match_two_labels() -> None:
    assert not mx_matches("*.mail.two.test", "a.b.mail.two.test")


def test_wildcard_mx_pattern_does_not_match_the_bare_domain() -> None:
    assert not mx_matches("*.mail.two.test", "mail.two.test")


def test_policy_allows_only_matching_hosts() -> None:
    policy = parse_policy(POLICY)
    assert policy.allows("mx1.two.test") and not policy.allows("evil.test")
