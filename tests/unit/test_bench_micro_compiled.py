"""bench/micro_compiled.py (the mypyc measurement, docs/decisions/0019) still runs its workloads.

Each workload checks once, outside the timing, that it does what its figure
claims (the DATA stream read whole and unstuffed, every IMAP command parsed
without a BAD); nothing here is timed.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import micro_compiled  # noqa: E402


def test_every_workload_runs_and_reports_cpu_per_unit():
    for name in micro_compiled.WORKLOADS:
        result = micro_compiled.measure(name, repeat=1, scale=0.001)
        assert result["workload"] == name and result["units"] >= 1
        assert result["us_per_unit"] >= 0


def test_the_compiled_list_names_only_candidates_and_the_sources_are_candidates():
    assert set(micro_compiled.compiled_modules()) <= set(micro_compiled.CANDIDATES)
    repo = BENCH.parent
    for group, files in micro_compiled.GROUPS.items():
        for rel in files:
            assert (repo / group / rel).is_file(), rel
