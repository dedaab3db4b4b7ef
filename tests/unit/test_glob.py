"""postroom.glob: LIST and Sieve :matches wildcards answer as a regex would, in linear time."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.glob import Glob, PatternTooComplex, Wild, collapse, list_pattern, sieve_pattern

PROPERTY = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_list(pattern: str, text: str) -> bool:
    """The fnmatch-style translation LIST used before (fine on inputs this small)."""
    out = [".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern]
    return re.fullmatch("".join(out), text, re.S) is not None


def reference_sieve(pattern: str, text: str) -> bool:
    out, escaped = [], False
    for c in pattern:
        if escaped:
            out.append(re.escape(c))
            escaped = False
        elif c == "\\":
            escaped = True
        else:
            out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
    return re.fullmatch("".join(out), text, re.S) is not None


list_patterns = st.text(alphabet="ab/*%?.", max_size=10)
sieve_patterns = st.text(alphabet="ab/*?\\.", max_size=10)
texts = st.text(alphabet="ab/?*.\n", max_size=12)


@PROPERTY
@given(pattern=list_patterns, text=texts)
def test_list_pattern_agrees_with_the_regex_translation(pattern: str, text: str) -> None:
    assert list_pattern(pattern, "/").match(text) == reference_list(pattern, text)


@PROPERTY
@given(pattern=sieve_patterns, text=texts)
def test_sieve_pattern_agrees_with_the_regex_translation(pattern: str, text: str) -> None:
    assert sieve_pattern(pattern).match(text) == reference_sieve(pattern, text)


@PROPERTY
@given(pattern=list_patterns, text=texts)
def test_the_nfa_agrees_with_the_star_only_shortcut(pattern: str, text: str) -> None:
    glob = list_pattern(pattern.replace("%", "*"), "/")
    assert glob.match(text) == glob._simulate(text)[0]


@PROPERTY
@given(pattern=list_patterns, text=texts)
def test_the_nfa_steps_each_character_at_most_once(pattern: str, text: str) -> None:
    assert list_pattern(pattern, "/")._simulate(text)[1] <= len(text)


def test_runs_of_wildcards_collapse() -> None:
    assert collapse([Wild.ANY, Wild.ANY, "a", Wild.ANY_BUT, Wild.ANY_BUT, "b", Wild.ANY_BUT,
                     Wild.ANY, Wild.ANY_BUT]) == [Wild.ANY, "a", Wild.ANY_BUT, "b", Wild.ANY]
    assert list_pattern("*" * 50 + "%*" * 50, "/").tokens == (Wild.ANY,)
    assert sieve_pattern("a??*?**").tokens == ("a", Wild.ONE, Wild.ONE, Wild.ANY, Wild.ONE,
                                               Wild.ANY)


def test_percent_stops_at_the_delimiter() -> None:
    glob = list_pattern("Lists/%", "/")
    assert glob.match("Lists/postroom")
    assert not glob.match("Lists/postroom/2026")
    assert list_pattern("%/%", "/").match("a/b")
    assert list_pattern("*", "/").match("a/b/c")
    assert not list_pattern("%", "/").match("a/b")
    assert list_pattern("%", "/").match("")


def test_sieve_escapes_make_wildcards_literal() -> None:
    assert sieve_pattern(r"\*urgent\?").match("*urgent?")
    assert not sieve_pattern(r"\*urgent\?").match("xurgent!")
    assert sieve_pattern("a\\").match("a")  # a trailing backslash escapes nothing


def test_bounds_are_enforced_after_collapsing() -> None:
    assert list_pattern("*" * 500, "/", max_wildcards=1, max_length=1000).wildcards == 1
    with pytest.raises(PatternTooComplex, match="more than 32 wildcards"):
        list_pattern("a*" * 33, "/", max_wildcards=32)
    with pytest.raises(PatternTooComplex, match="longer than 100 characters"):
        list_pattern("a" * 101, "/", max_length=100)
    with pytest.raises(PatternTooComplex, match="more than 2 wildcards"):
        sieve_pattern("?*?", max_wildcards=2)


def test_no_delimiter_makes_percent_a_star() -> None:
    glob = Glob([Wild.ANY_BUT, "x"])
    assert glob.match("a/b/x")


# --- pathological inputs: each would take minutes to years with a backtracking regex


@pytest.mark.timeout(5)
def test_star_runs_then_a_mismatch_answer_at_once() -> None:
    name = "Archive/2026/Projects/Postroom/Long-Name" * 4
    for pattern in ("*" * 50 + "x", "*%" * 50 + "x", "%" * 50 + "x", "*a" * 32 + "x",
                    "%a" * 32 + "x", "*?" * 32 + "x"):
        assert not list_pattern(pattern, "/").match(name)


@pytest.mark.timeout(5)
def test_many_separated_stars_over_a_long_header_stay_linear() -> None:
    value = "a" * 8192
    for key in ("*a*a*a*b", "*a*a*a*a*a*a*a*a*a*a*b", "*a?a*a?a*b", "?*" * 30 + "b",
                "*" + "a*" * 200 + "b"):
        glob = sieve_pattern(key)
        assert not glob.match(value)
        assert glob._simulate(value)[1] <= len(value)


@pytest.mark.timeout(5)
def test_a_thousand_character_pattern_over_a_long_text() -> None:
    pattern = "?*" * 500
    glob = sieve_pattern(pattern)
    assert glob.match("a" * 8192)
    assert not glob.match("a" * 499)
