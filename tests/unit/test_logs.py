"""JSON logs: one object per line with ts, level, service, event and fields."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from postroom import logs


@pytest.fixture
def capture(monkeypatch):
    """Point the process's log sink at a buffer for one test, and put it back after."""

    def start(level: str = "info") -> io.StringIO:
        stream = io.StringIO()
        monkeypatch.setattr(logs._sink, "stream", stream)
        monkeypatch.setattr(logs._sink, "service", "test")
        monkeypatch.setattr(logs._sink, "threshold", logs.LEVELS[level])
        return stream

    return start


def test_an_event_is_one_json_line_with_the_standard_keys(capture):
    stream = capture()
    logs.get_logger("smtp").info("message accepted", queue_id="Q1", peer="127.0.0.1", size=12)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "message accepted"
    assert record["service"] == "test"
    assert record["level"] == "info"
    assert record["queue_id"] == "Q1"
    assert record["size"] == 12
    assert record["ts"].endswith("Z")


def test_levels_below_the_threshold_are_dropped(capture):
    stream = capture("warning")
    log = logs.get_logger()
    log.info("quiet")
    log.debug("quieter")
    log.warning("loud")
    assert [json.loads(x)["event"] for x in stream.getvalue().splitlines()] == ["loud"]


def test_bound_fields_ride_along_and_newlines_stay_inside_the_line(capture):
    stream = capture()
    log = logs.get_logger("imap").bind(session="s1")
    log.error("bad input", detail="a\nb", raw=b"\xff\x00")
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["session"] == "s1"
    assert record["detail"] == "a\nb"


def test_exception_records_the_traceback_as_a_field(capture):
    stream = capture()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logs.get_logger().exception("handler failed", queue_id="Q2")
    record = json.loads(stream.getvalue())
    assert record["error"] == "RuntimeError: boom"
    assert "Traceback" in record["traceback"]


def test_twisted_log_events_come_out_as_json_lines():
    code = (
        "from postroom import logs\n"
        "logs.configure('svc', 'info')\n"
        "from twisted.logger import Logger\n"
        "Logger(namespace='t').info('hello {who}', who='world', queue_id='Q3')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    records = [json.loads(line) for line in out.splitlines()]
    hello = [r for r in records if r["event"] == "hello world"]
    assert hello and hello[0]["service"] == "svc" and hello[0]["queue_id"] == "Q3"
