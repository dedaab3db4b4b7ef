"""postroom.metrics: the declared names, SessionMetrics' bounded labels, and queue entry times."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from postroom import metrics as M
from postroom.queue.gauges import entry_time


def samples(m: M.Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(m: M.Metrics, name: str, **labels: str) -> float:
    return samples(m).get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def registry() -> M.Metrics:
    return M.Metrics("test", process_metrics=False)


def test_session_metrics_names_every_protocol_metric_before_any_traffic(registry):
    M.SessionMetrics(registry, commands=["NOOP"])
    text = registry.render().decode()
    for name in ("postroom_connections_total", "postroom_connections_open",
                 "postroom_commands_total", "postroom_auth_failures_total",
                 "postroom_errors_total"):
        assert f"# TYPE {name} " in text


def test_open_connections_go_up_and_down_per_listener(registry):
    meter = M.SessionMetrics(registry)
    meter.opened("imaps")
    meter.opened("imaps")
    meter.closed("imaps")
    assert value(registry, "postroom_connections_open", listener="imaps") == 1
    assert value(registry, "postroom_connections_total", listener="imaps") == 2


def test_unknown_command_verbs_are_counted_as_other(registry):
    meter = M.SessionMetrics(registry, commands=["EHLO", "QUIT"])
    meter.command(b"ehlo")
    meter.command(b"X-\xff-made-up")
    meter.command("user@example.test")
    assert value(registry, "postroom_commands_total", command="EHLO") == 1
    assert value(registry, "postroom_commands_total", command="other") == 2
    assert {dict(k[1]).get("command") for k in samples(registry)
            if k[0] == "postroom_commands_total"} == {"EHLO", "other"}


def test_auth_failures_are_labelled_by_known_mechanism_only(registry):
    meter = M.SessionMetrics(registry, mechanisms=["PLAIN"])
    meter.auth_failed("plain")
    meter.auth_failed("GSSAPI")
    assert value(registry, "postroom_auth_failures_total", mechanism="PLAIN") == 1
    assert value(registry, "postroom_auth_failures_total", mechanism="other") == 1


def test_session_metrics_without_a_registry_do_nothing():
    meter = M.SessionMetrics(None, commands=["NOOP"])
    meter.opened("smtp")
    meter.command("NOOP")
    meter.auth_failed("PLAIN")
    meter.error("timeout")
    meter.closed("smtp")


def test_dmarc_results_carry_result_and_disposition(registry):
    M.dmarc_results_total(registry).labels(result="fail", disposition="reject").inc()
    assert value(registry, "postroom_dmarc_results_total", result="fail",
                 disposition="reject") == 1


def test_entry_time_reads_the_milliseconds_of_a_stream_id():
    assert entry_time("1700000000123-4") == pytest.approx(1700000000.123)
    assert entry_time("not-an-id") is None
