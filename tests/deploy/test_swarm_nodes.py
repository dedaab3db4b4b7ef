"""What a second Swarm node needs, checked on one: the stack file of the documented
conversion (compose config | deploy/swarm.py; docs/deploy-docker.md, "What a second node
needs") binds no host file, hands every per-node file over as a config or secret, names
the Postroom image by one parameter a registry name reaches, and places what is pinned."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.compose import REPO, compose_config

REGISTRY_IMAGE = "registry.example.org:5000/postroom:1.4.0"
RSPAMD_LOCAL_D = REPO / "deploy" / "rspamd" / "local.d"


def _swarm() -> Any:
    spec = importlib.util.spec_from_file_location("postroom_deploy_swarm_nodes",
                                                  REPO / "deploy" / "swarm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=["default", "proxy"])
def config(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Any]:
    """Every service (the tools and filter profiles too), as an operator with a registry
    would run the conversion."""
    workdir = tmp_path_factory.mktemp(f"swarm-{request.param}")
    return compose_config(workdir, "--profile", "tools", "--profile", "filter",
                          proxy=request.param == "proxy",
                          env={"POSTROOM_IMAGE": REGISTRY_IMAGE})


@pytest.fixture(scope="module")
def stack(config: dict[str, Any]) -> dict[str, Any]:
    return _swarm().to_stack(config)


def _is_bind(volume: Any) -> bool:
    if isinstance(volume, dict):
        return volume.get("type") == "bind"
    return str(volume).startswith(("/", "."))


def test_the_stack_binds_no_host_file(stack):
    for name, service in stack["services"].items():
        assert not [v for v in service.get("volumes", []) if _is_bind(v)], name


def test_bound_files_become_configs_named_by_their_content(stack):
    for key, config in stack["configs"].items():
        data = Path(config["file"]).read_bytes()
        assert key.endswith("-" + hashlib.sha256(data).hexdigest()[:12]), key
        assert len(key) <= 64 - len("postroom_"), key


def test_rspamd_gets_each_local_d_file_as_a_config(stack):
    targets = {c["target"] for c in stack["services"]["rspamd"]["configs"]}
    assert targets == {f"/etc/rspamd/local.d/{p.name}" for p in RSPAMD_LOCAL_D.iterdir()}


def test_haproxy_gets_its_configuration_as_a_config(config, stack):
    if "proxy" not in stack["services"]:
        assert "proxy" not in config["services"]
        return
    (mount,) = stack["services"]["proxy"]["configs"]
    assert mount["target"] == "/usr/local/etc/haproxy/haproxy.cfg"
    source = Path(stack["configs"][mount["source"]]["file"])
    assert source.read_bytes() == (REPO / "deploy" / "haproxy.cfg").read_bytes()


def test_the_secret_key_is_a_swarm_secret_where_it_is_used(stack):
    assert set(stack["secrets"]) == {"postroom_secret_key"}
    users = {name for name, service in stack["services"].items()
             if any((s if isinstance(s, str) else s["source"]) == "postroom_secret_key"
                    for s in service.get("secrets", []))}
    # the services that seal or open secrets at rest: msa, mta, mda and dmarc sign what they
    # send (postroom.outgoing), web seals the keys and two-factor secrets it makes
    assert users == {"migrate", "cli", "msa", "mta", "mda", "dmarc", "web"}


def test_the_certificates_are_a_volume_each_node_fills(stack):
    for name, service in stack["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict) and volume["target"] == "/etc/postroom/tls":
                assert volume["type"] == "volume" and volume["source"] == "tls", name
            else:
                assert "/etc/postroom/tls" not in str(volume), (name, volume)
    assert stack["services"]["tls"]["deploy"]["mode"] == "global"


def test_a_registry_name_in_postroom_image_reaches_every_postroom_service(config, stack):
    built = {name for name, service in config["services"].items() if service.get("build")}
    assert {"migrate", "mta", "msa", "mda", "dmarc", "pop3", "imap", "managesieve"} <= built
    for name, service in stack["services"].items():
        if "postroom" in str(config["services"][name].get("image")):
            assert service["image"] == REGISTRY_IMAGE, name
    assert _swarm().unpullable_images(config) == []


def test_an_image_built_here_without_a_registry_is_named_in_a_warning():
    swarm = _swarm()
    config = {"services": {"mta": {"image": "postroom:latest", "build": {"context": "."}},
                           "mda": {"image": "localhost:5000/postroom:1", "build": {}},
                           "redis": {"image": "redis:7.4-bookworm"}}}
    assert swarm.unpullable_images(config) == ["postroom:latest"]


def test_placement_pins_the_database_and_puts_listeners_on_mail_nodes(stack):
    placed = {name: service["deploy"].get("placement", {}).get("constraints", [])
              for name, service in stack["services"].items()}
    publishing = {name for name, service in stack["services"].items()
                  if any("published" in p for p in service.get("ports", []))}
    for name, constraints in placed.items():
        expected = []
        if name == "postgres":
            expected.append("node.labels.postroom.db == true")
        if name in publishing:
            expected.append("node.labels.postroom.mail == true")
        assert constraints == expected, name
    # the example .env publishes the listeners' ports; proxy mode's own .env lines make
    # them bare container ports, leaving only HAProxy on the mail nodes
    assert {"mta", "msa", "pop3", "imap", "managesieve"} <= publishing, publishing


def test_a_bind_source_missing_here_stops_the_conversion(tmp_path):
    swarm = _swarm()
    config = {"services": {"x": {"image": "x", "volumes": [
        {"type": "bind", "source": str(tmp_path / "gone.cfg"), "target": "/etc/x.cfg"}]}}}
    with pytest.raises(swarm.ConversionError, match="does not exist"):
        swarm.to_stack(config)
