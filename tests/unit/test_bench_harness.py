"""The bench harness's own logic: options, medians and percentiles, the table, replicas.

The workloads themselves run against real peers only under `make bench`
(bench/README.md); what can go wrong without them is tested here.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import run as bench_run  # noqa: E402
from common import median, percentile  # noqa: E402
from postroom_suite import FRONT_DOORS, PostroomSuite  # noqa: E402
from workloads.base import Row  # noqa: E402


def test_defaults_are_the_issue_s_load_on_the_shipped_process_counts():
    args = bench_run.parse_args([])
    # no --replicas: the suite starts what the shipped defaults start (processes_for)
    assert (args.messages, args.runs, args.replicas) == (2000, 3, None)
    assert bench_run.parse_args(["--replicas", "1"]).replicas == 1


def test_percentile_is_nearest_rank_and_median_is_the_middle():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert percentile([], 50) is None
    assert median([5.0, 1.0, 3.0]) == 3.0 and median([]) is None


def test_table_shows_medians_and_the_ratio_postroom_over_peer():
    row = Row("imap_mix", "operations", "ops/s", "Dovecot", postroom=[700, 800, 900],
              peer_runs=[1000, 1100, 1200])
    assert row.ratio == 800 / 1100
    text = bench_run.table([row], {"imap_scale": "time budget used up"})
    line = next(x for x in text.splitlines() if x.startswith("| imap_mix"))
    assert "| 800 " in line and "| 1100 " in line and "0.73x" in line
    assert "skipped imap_scale: time budget used up" in text
    assert Row("w", "m", "ms", "p").ratio is None


def test_haraka_gets_as_many_nodes_as_postroom_has_replicas():
    template = (BENCH / "peers" / "haraka_conf" / "config" / "smtp.ini.in").read_text()
    rendered = template.format(port=2525, nodes=2)
    assert "listen=127.0.0.1:2525" in rendered and "nodes=2" in rendered


def test_replicas_share_the_port_only_for_front_doors():
    suite = PostroomSuite(["dmarc", "mta", "mda", "imap"], replicas=2)
    assert suite.env["POSTROOM_REUSE_PORT"] == "true"
    assert "POSTROOM_REUSE_PORT" not in PostroomSuite(["mta"], replicas=1).env
    assert {"mta", "msa", "imap"} <= FRONT_DOORS and not {"dmarc", "mda"} & FRONT_DOORS

    class Proc:
        def __init__(self, pid):
            self.pid = pid

    suite.services = {"mta": Proc(1), "mta.1": Proc(2), "mda": Proc(3)}  # type: ignore[dict-item]
    assert suite.pids("mta") == {"mta": 1, "mta.1": 2}
    assert suite.pids("mda") == {"mda": 3}
