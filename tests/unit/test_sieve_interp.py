"""postroom.sieve.interp and .match: the pure run of a script over a message."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.glob import Wild, sieve_pattern
from postroom.sieve.interp import (
    Context,
    Discard,
    EnvelopeView,
    FileInto,
    Keep,
    MessageView,
    Redirect,
    Reject,
    Script,
    SieveRuntimeError,
    Vacation,
    evaluate,
    run_scripts,
)
from postroom.sieve.match import captures, match_one, numeric

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def run(text, headers=(), *, size=100, mail_from="bob@remote.test",
        rcpt="alice@example.test", **ctx):
    script = Script.compile("t", text, max_bytes=65536)
    view = MessageView(tuple(headers), size, lambda: b"Subject: x\r\n\r\nbody text\r\n")
    return evaluate(script, view, EnvelopeView(mail_from, rcpt),
                    Context("alice@example.test", NOW, **ctx))


def test_implicit_keep_and_what_cancels_it():
    assert run("") == [Keep(implicit=True)]
    assert run("discard;") == []
    assert run("discard; keep;") == [Keep()]
    assert run('require "fileinto"; fileinto "A"; fileinto "A";') == [FileInto("A")]
    assert run('require ["fileinto", "copy"]; fileinto :copy "A";') == [
        FileInto("A"), Keep(implicit=True)]
    assert run('redirect "x@y.test"; redirect "x@y.test";') == [Redirect("x@y.test")]
    assert run('require "fileinto"; keep; fileinto "INBOX";') == [Keep()]


def test_stop_ends_every_script_of_the_run():
    a = Script.compile("a", "discard; stop;", max_bytes=1000)
    b = Script.compile("b", "keep;", max_bytes=1000)
    view = MessageView((), 1)
    env = EnvelopeView("", "a@b.test")
    assert run_scripts([a, b], view, env, Context("a@b.test", NOW)) == []


def test_rfc5229_match_variables_take_the_leftmost_shortest():
    assert captures_of("[*] *", "[acme-users] [fwd] version 1.0 is out") == [
        "[acme-users] [fwd] version 1.0 is out", "acme-users", "[fwd] version 1.0 is out"]
    assert captures_of("*<*@*>", "Ned <ned@Example.COM>") == [
        "Ned <ned@Example.COM>", "Ned ", "ned", "Example.COM"]
    assert captures_of("a?c*", "abcdef") == ["abcdef", "b", "def"]


def captures_of(pattern, text):
    ok, found = match_one(":matches", "i;ascii-casemap", text, pattern)
    assert ok
    return found


@pytest.mark.parametrize(("pattern", "text", "expected"), [
    ("*", "", True), ("?", "", False), ("a\\*", "a*", True), ("a\\*", "ab", False),
    ("*x*", "abc", False), ("A*", "abc", True), ("*.example", "mail.EXAMPLE", True),
])
def test_matches(pattern, text, expected):
    assert match_one(":matches", "i;ascii-casemap", text, pattern)[0] is expected


def test_matches_is_linear_on_hostile_patterns():
    text = "a" * 8000
    started = time.monotonic()
    for pattern in ("*a*a*a*a*a*a*a*a*a*a*b", "?" * 100 + "*b", "*" * 500 + "b"):
        assert not match_one(":matches", "i;octet", text, pattern)[0]
    assert captures(sieve_pattern("*a*a*"), text) == ["", "", "a" * 7998]
    assert time.monotonic() - started < 2.0


def test_comparators():
    assert match_one(":is", "i;octet", "Abc", "abc")[0] is False
    assert match_one(":is", "i;ascii-casemap", "Abc", "aBC")[0] is True
    # casemap folds ASCII only
    assert match_one(":is", "i;ascii-casemap", "É", "é")[0] is False
    assert numeric("042abc") == 42 and numeric("x") == float("inf")
    assert match_one(":value", "i;ascii-numeric", "10", "9", "gt")[0] is True
    assert match_one(":contains", "i;ascii-numeric", "10", "1")[0] is False


def test_variables_modifiers_and_encoded_characters():
    script = ('require ["variables", "fileinto", "encoded-character"];\n'
              'set :upperfirst :lower "a" "hELLO";\n'
              'set :length "n" "${a}";\n'
              'set :quotewildcard "q" "a*b?";\n'
              'if string :is "${a}-${n}-${q}-${unknown}-${hex:41}" "Hello-5-a\\\\*b\\\\?--A"'
              ' { discard; }')
    assert run(script) == []


def test_imap4flags_internal_variable_and_hasflag():
    assert run('require "imap4flags"; setflag ["\\\\seen", "$A", "$a"]; addflag "\\\\Flagged";'
               'removeflag "$A";') == [Keep(("\\Seen", "\\Flagged"), implicit=True)]
    assert run('require ["imap4flags"]; addflag "$x";\n'
               'if hasflag :is "$X" { discard; }') == []


def test_date_parts_and_zone():
    header = [("Date", "Tue, 27 Feb 2007 23:30:00 -0500")]
    assert run('require ["date"]; if date :zone "+0000" "date" "date" "2007-02-28" '
               '{ discard; }', header) == []
    assert run('require ["date"]; if date :originalzone "date" "zone" "-0500" '
               '{ discard; }', header) == []
    assert run('require ["date"]; if currentdate "weekday" "5" { discard; }') == []  # a Friday


def test_vacation_and_reject_actions():
    assert run('require "vacation"; vacation :days 0 :handle "h" :from "me@x.test" "r";') \
        == [Vacation("r", days=1, handle="h", sender="me@x.test"), Keep(implicit=True)]
    assert run('require "ereject"; ereject "no";') == [Reject("no", extended=True)]
    assert isinstance(run('require "reject"; discard; reject "x";')[0], Reject)
    assert run("discard;") == [] and Discard() == Discard()


@pytest.mark.parametrize(("script", "message"), [
    ('require "reject"; keep; reject "x";', "conflicts"),
    ('require "vacation"; vacation "a"; vacation "b";', "second vacation"),
    ('redirect "a@x.test"; redirect "b@x.test";', "redirects"),
    ('require "include"; include "me";', "include loop"),
    ('require "include"; include "nothing";', "no personal script"),
])
def test_run_time_errors(script, message):
    with pytest.raises(SieveRuntimeError, match=message):
        run(script, max_redirects=1, personal_script=lambda name: script if name == "me"
            else None)


def test_the_step_budget_ends_a_long_run():
    keys = ", ".join(f'"k{i}"' for i in range(100))
    body = f'if header :contains "subject" [{keys}] {{ keep; }}\n' * 50
    with pytest.raises(SieveRuntimeError, match="too many steps"):
        run(body, [("Subject", "x" * 2000)], max_steps=1000)


@settings(max_examples=400, deadline=None)
@given(pattern=st.text(alphabet="ab*?", min_size=1, max_size=8),
       text=st.text(alphabet="abc", max_size=12))
def test_match_variables_agree_with_a_lazy_regex_on_small_inputs(pattern, text):
    """RFC 5229 3.2's leftmost-shortest captures, against Python's lazy regex (safe this
    small): whether it matches, and what each wildcard took."""
    glob = sieve_pattern(pattern)
    regex = "".join("(.*?)" if t is Wild.ANY else "(.)" if t is Wild.ONE else re.escape(t)
                    for t in glob.tokens)
    expected = re.fullmatch(regex, text, re.S)
    found = captures(glob, text)
    assert (found is None) == (expected is None)
    if expected is not None:
        assert found == list(expected.groups())


def test_an_interpreter_bug_is_a_failed_run_not_a_crash(monkeypatch):
    from postroom.sieve import interp

    def broken(self, frame, node):
        raise IndexError("a bug")

    monkeypatch.setattr(interp._Run, "test", broken)
    with pytest.raises(SieveRuntimeError, match="internal error"):
        run('if true { discard; }')


def test_a_lookup_failure_is_the_callers_not_the_scripts():
    class DatabaseDown(Exception):
        pass

    def down(name):
        raise DatabaseDown(name)

    with pytest.raises(DatabaseDown):
        run('require "mailbox"; if mailboxexists "x" { discard; }', mailbox_exists=down)


def test_a_parser_bug_is_a_refused_script(monkeypatch):
    from postroom.sieve import check_script, grammar

    def broken(self, text):
        raise AttributeError("a bug")

    monkeypatch.setattr(grammar.Parser, "parse", broken)
    [error] = check_script("keep;", max_bytes=100)
    assert error.message == "script not understood (AttributeError)"


def test_a_checker_bug_is_a_refused_script(monkeypatch):
    from postroom.sieve import check, check_script

    def broken(self, nodes):
        raise KeyError("a bug")

    monkeypatch.setattr(check._Checker, "script", broken)
    [error] = check_script("keep;", max_bytes=100)
    assert error.message == "script not understood (KeyError)"
