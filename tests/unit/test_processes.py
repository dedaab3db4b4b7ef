"""How many processes a service runs (POSTROOM_PROCESSES, `up --replicas`) and the parent's
merged /metrics page."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from postroom.config import ConfigError, load_settings
from postroom.ops.procgroup import (
    FRONT_DOORS,
    _cgroup_cpu_limit,
    _cgroup_memory_limit,
    _with_label,
    merge_metrics,
    resolve_processes,
    usable_cores,
)
from postroom.ops.supervisor import parse_replicas, processes_for


def test_front_doors_default_to_one_process_per_core_and_the_rest_to_one():
    assert FRONT_DOORS == {"mta", "msa", "imap", "pop3"}
    for name in ("mta", "msa", "imap", "pop3"):
        assert resolve_processes(name, "", cores=2) == 2
        assert resolve_processes(name, "", cores=1) == 1
    for name in ("mda", "dmarc", "web", "managesieve"):
        assert resolve_processes(name, "", cores=8) == 1
    assert resolve_processes("mda", "auto", cores=3) == 3
    assert resolve_processes("mta", "1", cores=8) == 1
    assert resolve_processes("web", "4", cores=1) == 4


def test_the_setting_takes_a_number_or_auto():
    assert load_settings({"POSTROOM_PROCESSES": " Auto "}).processes == "auto"
    assert load_settings({"POSTROOM_PROCESSES": "03"}).processes == "3"
    assert load_settings({}).processes == ""
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ConfigError, match="POSTROOM_PROCESSES"):
            load_settings({"POSTROOM_PROCESSES": bad})


def test_usable_cores_is_at_least_one_and_at_most_the_affinity():
    import os
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


def test_a_container_cpu_limit_caps_the_cores(tmp_path: Path):
    root = tmp_path / "cgroup"
    (root / "docker" / "abc").mkdir(parents=True)
    membership = tmp_path / "self-cgroup"
    membership.write_text("0::/docker/abc\n")
    assert _cgroup_cpu_limit(root, membership) is None  # no cpu.max anywhere
    (root / "docker" / "abc" / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_limit(root, membership) is None  # unlimited
    (root / "docker" / "cpu.max").write_text("150000 100000\n")  # --cpus 1.5 on the parent
    assert _cgroup_cpu_limit(root, membership) == 2
    (root / "docker" / "abc" / "cpu.max").write_text("50000 100000\n")
    assert _cgroup_cpu_limit(root, membership) == 1


def test_a_container_memory_limit_is_found_innermost_or_above(tmp_path: Path):
    root = tmp_path / "cgroup"
    (root / "docker" / "abc").mkdir(parents=True)
    membership = tmp_path / "self-cgroup"
    membership.write_text("0::/docker/abc\n")
    assert _cgroup_memory_limit(root, membership) is None
    (root / "docker" / "abc" / "memory.max").write_text("max\n")
    (root / "docker" / "memory.max").write_text(f"{512 * 1024 * 1024}\n")
    assert _cgroup_memory_limit(root, membership) == 512 * 1024 * 1024


def test_up_on_a_2_core_machine_runs_two_of_each_front_door_and_one_of_the_rest():
    settings = load_settings({})
    counts = {name: processes_for(name, None, settings, cores=2)
              for name in ("dmarc", "imap", "managesieve", "mda", "msa", "mta", "pop3", "web")}
    assert counts == {"dmarc": 1, "imap": 2, "managesieve": 1, "mda": 1, "msa": 2, "mta": 2,
                      "pop3": 2, "web": 1}


def test_replicas_option():
    assert parse_replicas("2") == {"": 2}
    assert parse_replicas("mta=3, imap=2") == {"mta": 3, "imap": 2}
    assert parse_replicas("1,mda=2") == {"": 1, "mda": 2}
    for bad in ("0", "mta=", "mta=x", "=", "mta=0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_replicas(bad)
    settings = load_settings({})
    assert processes_for("mta", None, settings, cores=2) == 2
    assert processes_for("mda", None, settings, cores=2) == 1
    assert processes_for("mta", {"": 1}, settings, cores=2) == 1
    assert processes_for("mda", {"": 3}, settings, cores=2) == 1  # N is for the front doors
    assert processes_for("mda", {"mda": 3}, settings, cores=2) == 3
    assert processes_for("imap", {"mta": 3}, settings, cores=4) == 4
    assert processes_for("web", None, load_settings({"POSTROOM_PROCESSES": "2"}), cores=1) == 2


def test_a_label_goes_first_in_every_sample():
    assert _with_label("up 1", "process", "1") == 'up{process="1"} 1'
    assert _with_label("up{} 1", "process", "1") == 'up{process="1"} 1'
    assert _with_label('a_total{x="{y} z"} 2.0 1700000', "process", "2") == \
        'a_total{process="2",x="{y} z"} 2.0 1700000'


def _page(n: int) -> str:
    return (
        "# HELP postroom_connections_total Connections accepted.\n"
        "# TYPE postroom_connections_total counter\n"
        f'postroom_connections_total{{listener="tcp:25"}} {n}.0\n'
        "# HELP postroom_connections_created Connections accepted.\n"
        "# TYPE postroom_connections_created gauge\n"
        f'postroom_connections_created{{listener="tcp:25"}} 1.7e+09\n'
        "# HELP postroom_latency_seconds Latency.\n"
        "# TYPE postroom_latency_seconds histogram\n"
        f'postroom_latency_seconds_bucket{{le="1.0"}} {n}.0\n'
        f'postroom_latency_seconds_bucket{{le="+Inf"}} {n}.0\n'
        f"postroom_latency_seconds_count {n}.0\n"
        f"postroom_latency_seconds_sum 0.5\n")


def test_merged_metrics_keep_each_family_together_with_one_header():
    text = merge_metrics([("1", _page(3)), ("2", _page(4))])
    assert text.count("# TYPE postroom_connections_total counter") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    connections = families["postroom_connections"]
    totals = {s.labels["process"]: s.value for s in connections.samples
              if s.name == "postroom_connections_total"}
    assert totals == {"1": 3.0, "2": 4.0}
    counts = {s.labels["process"]: s.value for s in families["postroom_latency_seconds"].samples
              if s.name == "postroom_latency_seconds_count"}
    assert counts == {"1": 3.0, "2": 4.0}
    assert merge_metrics([]) == ""
