"""The internal HTTP endpoints (dmarc API, /healthz, /metrics) are never published."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"
INTERNAL_PORTS = {"8025", "8080"}


def published(service: dict) -> list[str]:
    ports = []
    for entry in service.get("ports") or []:
        ports.append(str(entry.get("target") if isinstance(entry, dict) else entry))
    return ports


def test_dmarc_service_publishes_no_port() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert published(services["dmarc"]) == []


def test_no_service_publishes_the_dmarc_api_or_the_metrics_port() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, service in services.items():
        for port in published(service):
            # "${PUBLISH_X:-465:465}", "25:25", "127.0.0.1:8080:8080": the container side is last
            container = port.rstrip("}").rsplit(":", 1)[-1].split("/")[0]
            assert container not in INTERNAL_PORTS, (name, port)
