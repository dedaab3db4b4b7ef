"""postroom.sieve.check_script: what `postroom sieve check` and ManageSieve CHECKSCRIPT answer."""

from __future__ import annotations

import pytest

from postroom.sieve import SIEVE_EXTENSIONS, SieveError, check_script

MAX = 65536


def errors(text: str) -> list[SieveError]:
    return check_script(text, max_bytes=MAX)


def test_every_extension_we_claim_parses_in_one_script():
    script = (
        f'require [{", ".join(chr(34) + e + chr(34) for e in SIEVE_EXTENSIONS)}];\n'
        'if header :index 2 :last :contains "received" "x" '
        '{ fileinto :copy :create :flags ["\\\\Seen"] "a"; }\n'
        'if address :detail "to" "tag" { ereject "no"; }\n'
        'if string :matches "${a}" "*" { set :lower "b" "${a}"; }\n'
        'if date :zone "+0100" "date" "year" "2024" { stop; }\n'
        'if header :count "ge" :comparator "i;ascii-numeric" "to" "2" { discard; }\n'
        'addheader :last "X-A" "b";\ndeleteheader "X-B";\n'
        'include :personal :once "other";\n'
        'if mailboxexists "Junk" { keep; }\n'
        'vacation :days 3 :from "me@example.org" :addresses ["a@x.org"] :subject "s" text:\n'
        'hello\n..dot\n.\n;\n'
        'if body :text :contains "x" { keep; }\n'
        'if envelope :all :is "from" "a@b.c" { redirect :copy "x@y.org"; }\n')
    assert errors(script) == []


@pytest.mark.parametrize(("script", "line", "needle"), [
    ('fileinto "x";', 1, "fileinto"),
    ('keep;\nkeep\nkeep;', 3, ""),
    ('require "regex";\nkeep;', 1, 'unsupported extension "regex"'),
    ('if header :regex "a" "b" { keep; }', 1, "regex"),
    ('keep;\nrequire "fileinto";', 2, "require must come before"),
    ('require "vacation";\nvacation :days 400 "x";', 2, ":days"),
    ('redirect "not an address";', 1, "not an e-mail address"),
    ('require "fileinto";\n\n fileinto "../x";', 3, "not a mailbox name"),
    ('require "relational";\nif header :count "xx" "to" "1" { keep; }', 2, ""),
    ('require "date";\nif currentdate "century" "1" { keep; }', 2, "date part"),
    ('if address :user "to" "a" { keep; }', 1, "subaddress"),
    ('require "enotify";\nkeep;', 1, 'unsupported extension "enotify"'),
    ('require "editheader";\naddheader "Bad Name" "b";', 2, "not a header field name"),
])
def test_an_invalid_script_says_where(script, line, needle):
    found = errors(script)
    assert found and found[0].line == line and needle in found[0].message, found


def test_too_large_and_too_deep():
    assert check_script("keep;" * 3, max_bytes=10)[0].message.startswith("script is 15 bytes")
    deep = "if true {" * 40 + "keep;" + "}" * 40
    assert "nested deeper" in errors(deep)[0].message


def test_an_empty_script_is_valid():
    assert errors("") == [] and errors("# nothing\n") == []
