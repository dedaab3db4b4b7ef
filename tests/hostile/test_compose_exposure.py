"""Nothing is exposed that must not be: the internal HTTP endpoints (dmarc API, /healthz,
/metrics) are never published, and PROXY protocol listeners, which let their peer name
any client address, exist only in proxy mode, unpublished, trusting only the proxy's network."""

from __future__ import annotations

from pathlib import Path

import yaml

from postroom.config import split_proxy

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
PROXY_OVERRIDE = REPO / "deploy" / "compose.proxy.yaml"
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


def proxy_endpoints(service: dict) -> list[str]:
    env = service.get("environment") or {}
    return [e for k, v in env.items() if k.endswith("_LISTEN")
            for e in str(v).split(",") if split_proxy(e.strip())[1]]


def test_a_plain_compose_up_opens_no_proxy_protocol_listener() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, service in services.items():
        assert proxy_endpoints(service) == [], name


def test_proxy_mode_listeners_are_unpublished_and_trust_only_the_proxy_network() -> None:
    override = yaml.safe_load(PROXY_OVERRIDE.read_text())
    subnet = override["networks"]["proxied"]["ipam"]["config"][0]["subnet"]
    listeners = {n: s for n, s in override["services"].items() if proxy_endpoints(s)}
    assert set(listeners) == {"mta", "msa", "pop3", "imap"}
    for name, service in listeners.items():
        assert service["environment"]["POSTROOM_PROXY_TRUSTED"] == subnet, name
        assert not service.get("ports"), name  # the base file's plain ports stay the only ones
        assert "proxied" in service["networks"], name
    assert override["services"]["proxy"]["networks"] == ["proxied"]
