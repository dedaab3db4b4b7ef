"""The Grafana dashboard in deploy/ is valid JSON and charts only documented metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_dashboard_query_names_a_documented_metric():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "postroom-dashboard.json").read_text())
    documented = set(re.findall(r"postroom_[a-z_]+", (ROOT / "docs" / "metrics.md").read_text()))
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"postroom_[a-z_]+", target["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert base in documented, f"{panel['title']}: {name} is not in docs/metrics.md"
