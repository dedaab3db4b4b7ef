"""How `postroom up` shows its children's log lines: for people, or JSON passed through."""

from __future__ import annotations

import io
import json

from postroom.ops.supervisor import Supervisor, as_json_line, for_people

LINE = json.dumps({"ts": "2026-11-26T21:17:20.349Z", "level": "info", "service": "msa",
                   "event": "message accepted", "component": "msa", "queue_id": "Q1",
                   "peer": "127.0.0.1", "subject": "two words"})


def test_a_json_line_is_shown_as_time_level_event_and_fields():
    assert for_people(LINE) == ('21:17:20 info    message accepted  queue_id=Q1 '
                                'peer=127.0.0.1 subject="two words"')


def test_text_that_is_not_a_log_line_is_shown_as_it_is():
    assert for_people("postroom: error: interrupted") == "postroom: error: interrupted"
    assert for_people("{not json") == "{not json"


def test_json_mode_passes_log_lines_through_and_wraps_other_text():
    assert as_json_line("msa", LINE) == LINE
    wrapped = json.loads(as_json_line("msa", "plain text"))
    assert wrapped["service"] == "msa" and wrapped["line"] == "plain text"


def _supervisor(out: io.StringIO, **kwargs) -> Supervisor:
    return Supervisor(None, {"msa": ["true"], "imap": ["true"]},
                      {"msa": {}, "imap": {}}, out=out, **kwargs)


def test_people_see_a_prefix_per_service_and_colour_only_when_asked():
    out = io.StringIO()
    _supervisor(out, colour=False).write_line("msa", LINE)
    assert out.getvalue().startswith("msa  | 21:17:20 info")
    out = io.StringIO()
    _supervisor(out, colour=True).write_line("msa", LINE)
    assert out.getvalue().startswith("\x1b[")


def test_json_output_has_no_prefix():
    out = io.StringIO()
    _supervisor(out, json_output=True).write_line("msa", LINE)
    assert json.loads(out.getvalue())["queue_id"] == "Q1"
