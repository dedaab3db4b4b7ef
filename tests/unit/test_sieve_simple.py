"""The web's simple editors write one Sieve script: it passes the checker, reads back into the
same settings, and a script edited by hand is recognised as not ours."""

from __future__ import annotations

import pytest

from postroom.sieve import check_script
from postroom.sieve.simple import Rule, SimpleSettings, Vacation, generate, parse

FULL = SimpleSettings(
    Vacation(enabled=True, start="2026-12-20", end="2027-01-03", subject='Away "till" 2027',
             text="I am away.\nBack in January. C:\\temp is not a path", days=5,
             addresses=("alice@example.org", "a.smith@example.org")),
    (Rule("from", "newsletter@shop.example", "fileinto", "Shopping"),
     Rule("subject", "[dev]", "addflag", stop=True),
     Rule("to", "boss@", "redirect", "alice@home.example"),
     Rule("subject", 'say "hi" \\ there', "stop")))


@pytest.mark.parametrize("settings", [
    SimpleSettings(),
    SimpleSettings(Vacation(enabled=True, text="Out of office")),
    FULL,
    SimpleSettings(Vacation(enabled=False, text="kept for next time", subject="x"),
                   (Rule("from", "x@y", "fileinto", "Ünïcode folder"),)),
], ids=["empty", "vacation only", "everything", "vacation off"])
def test_a_generated_script_passes_the_checker_and_reads_back(settings: SimpleSettings) -> None:
    text = generate(settings)
    assert check_script(text, max_bytes=65536) == [], text
    assert parse(text) == settings


def test_the_vacation_dates_and_actions_are_in_the_script() -> None:
    text = generate(FULL)
    assert 'currentdate :value "ge" "date" "2026-12-20"' in text
    assert 'currentdate :value "le" "date" "2027-01-03"' in text
    assert ':days 5 :subject "Away \\"till\\" 2027"' in text
    assert 'fileinto "Shopping";' in text and 'addflag "\\\\Seen";' in text
    assert 'redirect "alice@home.example";' in text


def test_a_script_edited_by_hand_is_not_ours_any_more() -> None:
    text = generate(FULL)
    assert parse(text.replace('fileinto "Shopping";', 'fileinto "Junk";')) is None
    assert parse(text + "discard;\n") is None
    assert parse('require "fileinto";\nfileinto "x";\n') is None
    assert parse(text.replace("# postroom-web: {", "# postroom-web: {{")) is None


@pytest.mark.parametrize("bad", [
    SimpleSettings(Vacation(enabled=True, text="")),
    SimpleSettings(Vacation(enabled=True, text="x", start="2027-01-02", end="2027-01-01")),
    SimpleSettings(Vacation(enabled=True, text="x", start="tomorrow")),
    SimpleSettings(Vacation(enabled=True, text="x", subject="two\nlines")),
    SimpleSettings(Vacation(enabled=True, text="x", days=0)),
    SimpleSettings(rules=(Rule("cc", "x", "fileinto", "y"),)),
    SimpleSettings(rules=(Rule("from", "x", "discard"),)),
    SimpleSettings(rules=(Rule("from", "", "stop"),)),
    SimpleSettings(rules=(Rule("from", "x", "fileinto", ""),)),
], ids=["no text", "backwards", "not a date", "two-line subject", "zero days", "field",
        "action", "empty value", "no folder"])
def test_settings_that_cannot_be_a_script_are_refused(bad: SimpleSettings) -> None:
    with pytest.raises(ValueError):
        generate(bad)
