"""The bench's pure parts for issue 23: CPU accounting from /proc stat text, the curves'
SVG charts and tables, and the process-count default. No peers, no services."""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import cpu  # noqa: E402
import curvedata  # noqa: E402
import run as bench_run  # noqa: E402
import svgchart  # noqa: E402
from postroom_suite import FRONT_DOORS, PostroomSuite, processes_for  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int = 0,
              cstime: int = 0) -> str:
    # fields 3..17 of proc(5): state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime, then the rest
    return (f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 "
            f"{utime} {stime} {cutime} {cstime} 20 0 1 0 12345 1000000 200 "
            "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n")


def test_parse_stat_reads_the_times_after_a_command_name_with_spaces_and_parens():
    stat = cpu.parse_stat(stat_line(4242, "postroom: imap (worker) 1", 17, 150, 30, 7, 3))
    assert (stat.pid, stat.comm, stat.ppid) == (4242, "postroom: imap (worker) 1", 17)
    assert (stat.utime, stat.stime, stat.cutime, stat.cstime) == (150, 30, 7, 3)
    assert stat.own == 180 and stat.with_reaped == 190


def test_parse_stat_reads_this_process_from_proc():
    stat = cpu.read_stat(os.getpid())
    assert stat is not None and stat.pid == os.getpid() and stat.ppid == os.getppid()


def _stats(*lines: str) -> dict[int, cpu.Stat]:
    parsed = [cpu.parse_stat(line) for line in lines]
    return {s.pid: s for s in parsed}


def test_a_tree_counts_its_descendants_and_the_children_it_has_reaped():
    # Postfix-like: master (1) reaped smtpd processes worth 40+10 ticks; qmgr (2) and a live
    # smtpd (3) are children; an unrelated process (9) is left out
    stats = _stats(stat_line(1, "master", 0, 5, 5, 40, 10), stat_line(2, "qmgr", 1, 20, 10),
                   stat_line(3, "smtpd", 1, 7, 3), stat_line(4, "cleanup", 3, 1, 1),
                   stat_line(9, "other", 0, 1000, 1000))
    assert cpu.tree([1], stats) == {1, 2, 3, 4}
    assert cpu.tree_ticks([1], stats) == 10 + 50 + 30 + 10 + 2
    assert cpu.by_command([1], stats) == {"master": 10, "qmgr": 30, "smtpd": 10, "cleanup": 2}
    assert cpu.tree([77], stats) == set()


def test_cpu_ms_per_message_from_two_samples():
    before = cpu.Sample({"mta": 100, "postgres": 50, "redis": 10}, {})
    after = cpu.Sample({"mta": 300, "postgres": 40, "redis": 30}, {})
    used = cpu.used_ms(before, after)
    tick_ms = 1000 / cpu.TICKS
    # a backend that went away takes its time with it: never negative
    assert used == {"mta": 200 * tick_ms, "postgres": 0.0, "redis": 20 * tick_ms}
    tally = cpu.Tally("msg")
    tally.add(used, 100)
    tally.add({"mta": 0.0, "postgres": 0.0, "redis": 0.0}, 100)
    assert tally.per_unit()["mta"] == 200 * tick_ms / 200
    assert tally.total() == (220 * tick_ms) / 200
    assert cpu.Tally("msg").total() is None


def test_the_cpu_table_has_a_row_per_service_the_totals_and_the_ratio():
    fig = cpu.figure("smtp_inbound", "msg", "Postfix+Dovecot")
    fig.postroom.add({"mta": 2000.0, "dmarc": 500.0, "mda": 1000.0, "postgres": 1500.0,
                      "redis": 0.0}, 1000)
    fig.peer_side.add({"Postfix+Dovecot": 2500.0}, 1000)
    empty = cpu.figure("submission", "msg", "Postfix+Dovecot")
    text = cpu.table("CPU ms per message", [fig, empty])
    lines = text.splitlines()
    assert lines[0] == "CPU ms per message"
    assert "smtp_inbound (vs Postfix+Dovecot)" in lines[1] and "submission" not in text
    row = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in lines[3:]}
    assert row["mta"] == "2.00" and row["dmarc"] == "0.50" and row["postgres"] == "1.50"
    assert row["redis"] == "0.000" and "imap" not in row
    assert row["Postroom total"] == "5.00" and row["peer total"] == "2.50"
    assert row["ratio P/peer"] == "2.00x" and row["count (P / peer)"] == "1000 / 1000"
    assert cpu.table("nothing", [empty]) == ""


def test_the_svg_chart_is_xml_with_both_series_a_legend_and_log_ticks():
    text = svgchart.line_chart("Accept rate <&> sessions", "sessions", "msg/s",
                               {"Postroom": [(1, 50.0), (10, 300.0), (500, 250.0)],
                                "Postfix+Dovecot": [(1, 80.0), (10, 400.0), (500, 380.0)]},
                               log_x=True, subtitle="loaded machine")
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "series"]
    assert [g.get("data-name") for g in groups] == ["Postroom", "Postfix+Dovecot"]
    for g in groups:
        assert len(g.findall(f"{SVG}polyline")) == 1
        assert len(list(g)) == 4  # the line and three markers
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "Accept rate <&> sessions" in texts and "loaded machine" in texts
    assert {"1", "10", "100", "1,000"} <= set(texts)  # log-x ticks: powers of ten
    assert "sessions (log scale)" in texts and "msg/s" in texts
    assert texts.count("Postroom") == 1 and texts.count("Postfix+Dovecot") == 1  # legend


def test_linear_ticks_cover_the_values_with_round_steps():
    assert svgchart.linear_ticks(0, 380) == [0, 100, 200, 300, 400]
    assert svgchart.linear_ticks(0, 0.9)[-1] >= 0.9
    assert svgchart.log_ticks(100, 10_000) == [100.0, 1000.0, 10000.0]


def test_curve_table_and_files(tmp_path):
    curve = curvedata.Curve("mailbox-select", "SELECT against mailbox size", "messages",
                            "SELECT, ms", "Dovecot", higher_is_better=False)
    curve.add("Postroom", 1000, 2.5)
    curve.add("Dovecot", 1000, 0.5)
    curve.add("Postroom", 100_000, 30.0)
    table = curvedata.table(curve).splitlines()
    assert table[0] == ("| messages | Postroom: SELECT, ms | Dovecot: SELECT, ms "
                        "| ratio P/peer |")
    assert table[2] == "| 1,000 | 2.50 | 0.50 | 5.00x |"
    assert table[3] == "| 100,000 | 30.0 | - | - |"
    unused = curvedata.Curve("idle-memory", "Memory", "connections", "MiB", "Dovecot")
    written = curvedata.write([curve, unused], tmp_path / "curves", "loaded machine")
    assert [p.name for p in written] == ["mailbox-select.svg", "README.md"]
    ET.fromstring((tmp_path / "curves" / "mailbox-select.svg").read_text())
    index = (tmp_path / "curves" / "README.md").read_text()
    assert "![SELECT against mailbox size](mailbox-select.svg)" in index
    assert "loaded machine" in index and "| 1,000 | 2.50 | 0.50 | 5.00x |" in index
    assert "Memory" not in index


def test_processes_default_to_one_per_core_for_front_doors_and_replicas_override():
    cores = os.cpu_count() or 1
    assert processes_for("mta") == cores and processes_for("imap") == cores
    assert processes_for("mda") == 1 and processes_for("dmarc") == 1
    assert processes_for("msa", 3) == 3 and processes_for("mda", 3) == 1
    assert {"mta", "msa", "imap", "pop3"} == set(FRONT_DOORS)
    assert bench_run.parse_args([]).replicas is None
    suite = PostroomSuite(["dmarc", "mta", "mda"], replicas=1)
    assert suite.processes("mta") == 1 and "POSTROOM_REUSE_PORT" not in suite.env
    assert PostroomSuite(["mta"], replicas=2).env["POSTROOM_REUSE_PORT"] == "true"


def test_the_loaded_machine_label_goes_by_the_load_before_the_bench() -> None:
    """The bench's own earlier workloads raise the load the curves start under; a quiet
    machine is not labelled loaded for that, and a loaded one is whatever the curves see."""
    from workloads.curves import conditions

    quiet = conditions("2026-12-07", 2, 0.4, 3.3, quick=False)
    assert "loaded machine" not in quiet
    assert "load average 0.4 before the bench (3.3 at the curves)" in quiet
    assert "default sizes" in quiet
    loaded = conditions("2026-12-07", 2, 5.0, 1.0, quick=True)
    assert loaded.endswith("--quick sizes (loaded machine: functional check)")
