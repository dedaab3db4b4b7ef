"""compose.yaml is valid Compose (docker-compose config), and has what issue 9 asks of it."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from postroom.config import load_settings, split_proxy
from tests.deploy.compose import (
    COMPOSE_FILE,
    DEPLOY_DOC,
    ENV_EXAMPLE,
    MAIL_PORTS,
    REPO,
    compose_config,
    docker_compose,
    docs_blocks,
    endpoint_port,
    load_compose,
    postroom_services,
    read_env_file,
    service_env,
)

SUITE = ("msa", "mta", "dmarc", "mda", "pop3", "imap", "managesieve", "web")
MAIL = ("msa", "mta", "dmarc", "mda", "pop3", "imap", "managesieve")
WEB_PORT = 8000
MANAGESIEVE_PORT = 4190
CONSUMERS = ("mda", "dmarc")
LISTENERS = ("msa", "mta", "pop3", "imap")

# docker/cli's Swarm loader (compose schema 3.x): the keys `docker stack deploy` accepts
SWARM_SERVICE_KEYS = {
    "deploy", "build", "cap_add", "cap_drop", "cgroupns_mode", "cgroup_parent", "command",
    "configs", "container_name", "credential_spec", "depends_on", "devices", "dns",
    "dns_search", "domainname", "entrypoint", "env_file", "environment", "expose",
    "external_links", "extra_hosts", "healthcheck", "hostname", "image", "init", "ipc",
    "isolation", "labels", "links", "logging", "mac_address", "network_mode", "networks", "pid",
    "ports", "privileged", "read_only", "restart", "security_opt", "shm_size", "secrets",
    "sysctls", "stdin_open", "stop_grace_period", "stop_signal", "tmpfs", "tty", "ulimits",
    "oom_score_adj", "user", "userns_mode", "volumes", "working_dir",
}
SWARM_DEPLOY_KEYS: dict[str, set[str] | None] = {
    "mode": None, "endpoint_mode": None, "replicas": None, "labels": None,
    "rollback_config": {"parallelism", "delay", "failure_action", "monitor",
                        "max_failure_ratio", "order"},
    "update_config": {"parallelism", "delay", "failure_action", "monitor",
                      "max_failure_ratio", "order"},
    "resources": {"limits", "reservations", "memory_swap", "memory_swappiness"},
    "restart_policy": {"condition", "delay", "max_attempts", "window"},
    "placement": {"constraints", "preferences", "max_replicas_per_node"},
}
SWARM_TOP_LEVEL = {"version", "services", "networks", "volumes", "secrets", "configs"}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def proxy_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """compose.yaml with deploy/compose.proxy.yaml: proxy mode."""
    return compose_config(tmp_path_factory.mktemp("compose-proxy"), proxy=True)


def _mail_endpoints(service: dict[str, Any]) -> list[str]:
    env = service.get("environment") or {}
    return [e for k, v in env.items() if k.endswith("_LISTEN") and k != "POSTROOM_HTTP_LISTEN"
            for e in str(v).split(",") if e]


def _proxy_endpoints(service: dict[str, Any]) -> list[str]:
    return [e for e in _mail_endpoints(service) if split_proxy(e)[1]]


def _swarm_module() -> Any:
    spec = importlib.util.spec_from_file_location("postroom_deploy_swarm",
                                                  REPO / "deploy" / "swarm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILTER = ("rspamd", "clamav")


def _published(service: dict[str, Any]) -> set[int]:
    return {int(p["published"]) for p in service.get("ports", []) if p.get("published")}


def test_docker_compose_accepts_the_file_and_lists_every_service(config):
    assert set(config["services"]) >= {"postgres", "redis", "migrate", *SUITE}


def test_default_compose_has_neither_the_proxy_nor_a_proxy_protocol_listener(config):
    assert "proxy" not in config["services"]
    for name, service in config["services"].items():
        assert _proxy_endpoints(service) == [], name
        # the optional scanners (issue 17) wait behind the filter profile, the operator's
        # `cli` behind tools: the only services `up` does not start
        assert not service.get("profiles") or (
            name in FILTER and service["profiles"] == ["filter"]) or (
            (name, service["profiles"]) == ("cli", ["tools"])), name


def test_the_scanners_are_the_official_images_under_the_filter_profile(config):
    images = {name: config["services"][name]["image"].split(":")[0] for name in FILTER}
    assert images == {"rspamd": "rspamd/rspamd", "clamav": "clamav/clamav"}


def test_proxy_mode_adds_only_the_proxy(config, proxy_config):
    assert set(proxy_config["services"]) == set(config["services"]) | {"proxy"}
    assert proxy_config["services"]["proxy"]["image"].startswith("haproxy:")


def test_postgres_is_16_or_later_on_a_named_volume(config):
    postgres = config["services"]["postgres"]
    major = int(re.match(r"postgres:(\d+)", postgres["image"]).group(1))
    assert major >= 16
    assert any(v.startswith("pgdata:") for v in postgres["volumes"])
    assert "pgdata" in config["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_redis_keeps_an_append_only_file(config):
    redis = config["services"]["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_migrate_is_one_shot_after_postgres(config):
    migrate = config["services"]["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", SUITE)
def test_each_service_is_the_one_image_with_its_own_serve_command(config, name):
    service = config["services"][name]
    assert service["command"] == ["serve", name]
    assert service["image"] == config["services"]["migrate"]["image"]


@pytest.mark.parametrize("name", SUITE)
def test_each_service_waits_for_migrate_postgres_and_redis(config, name):
    depends = config["services"][name]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", SUITE)
def test_each_service_has_a_healthz_healthcheck_and_restart_policy(config, name):
    service = config["services"][name]
    assert "/healthz" in " ".join(service["healthcheck"]["test"])
    assert service["restart"] == "unless-stopped"
    assert service["deploy"]["restart_policy"]["condition"] == "any"


@pytest.mark.parametrize("name", SUITE)
def test_each_service_mounts_the_tls_folder_read_only(config, name):
    env = config["services"][name]["environment"]
    mounts = [v for v in config["services"][name]["volumes"] if ":/etc/postroom/tls" in v]
    assert mounts and mounts[0].endswith(":ro")
    assert env["POSTROOM_TLS_CERT_FILE"].startswith("/etc/postroom/tls/")
    assert env["POSTROOM_TLS_KEY_FILE"].startswith("/etc/postroom/tls/")


def test_every_mail_port_is_published(config):
    published = set().union(*(_published(config["services"][n]) for n in MAIL))
    # ManageSieve is published directly, never behind the PROXY-protocol HAProxy
    assert published == MAIL_PORTS | {MANAGESIEVE_PORT}


def test_the_web_console_publishes_8000_and_no_tls_port_by_default(config):
    web = config["services"]["web"]
    assert _published(web) == {WEB_PORT}
    settings = load_settings({k: str(v) for k, v in web["environment"].items()
                              if k.startswith("POSTROOM_")})
    assert settings.web_listen == ("tcp:8000",) and settings.web_tls_listen == ()


def test_the_web_tls_override_serves_and_publishes_443(tmp_path):
    config = compose_config(tmp_path, extra=["deploy/compose.web-tls.yaml"])
    web = config["services"]["web"]
    assert _published(web) == {WEB_PORT, 443}
    assert web["environment"]["POSTROOM_WEB_TLS_LISTEN"] == "tcp:443"


def test_the_acme_override_publishes_80_to_the_web_and_keeps_certificates_local(tmp_path):
    config = compose_config(tmp_path, extra=["deploy/compose.acme.yaml"])
    web = config["services"]["web"]
    assert _published(web) == {WEB_PORT, 80}
    for name in ("msa", "mta", "imap", "pop3", "web"):
        env = config["services"][name]["environment"]
        assert env["POSTROOM_ACME"] == "true", name
        # not under the read-only ./tls mount: each container writes its own copy
        assert env["POSTROOM_TLS_CERT_FILE"].startswith("/tmp/postroom-tls/"), name


@pytest.mark.parametrize("name", CONSUMERS)
def test_queue_consumers_publish_nothing_so_they_scale(config, name):
    service = config["services"][name]
    assert not service.get("ports")
    assert "container_name" not in service


@pytest.mark.parametrize("mode", ["default", "proxy"])
def test_published_ports_are_plain_listeners_of_the_service(config, proxy_config, mode):
    services = (config if mode == "default" else proxy_config)["services"]
    for name in SUITE:
        plain = {endpoint_port(e) for e in _mail_endpoints(services[name])
                 if not split_proxy(e)[1]}
        proxied = {endpoint_port(e) for e in _proxy_endpoints(services[name])}
        for port in services[name].get("ports", []):
            assert int(port["target"]) in plain, (name, port)
            assert int(port["target"]) not in proxied, (name, port)


def test_proxy_backends_reach_proxy_protocol_listeners(proxy_config):
    """Each HAProxy backend `server-template NAME N host:port` hits a proxy:tcp listener."""
    cfg = (REPO / "deploy" / "haproxy.cfg").read_text()
    backends = re.findall(r'server-template \S+ \d+ "\$\{BACKEND_PREFIX\}(\w+):(\d+)"', cfg)
    assert len(backends) == len(MAIL_PORTS)
    for host, port in backends:
        service = proxy_config["services"][host]
        assert f"proxy:tcp:{port}" in _proxy_endpoints(service), (host, port)
        assert int(port) not in _published(service)


def test_proxy_protocol_listeners_trust_only_the_network_they_share_with_the_proxy(
        proxy_config):
    [subnet] = [c["subnet"] for c in proxy_config["networks"]["proxied"]["ipam"]["config"]]
    assert list(proxy_config["services"]["proxy"]["networks"]) == ["proxied"]
    proxied = {n for n, s in proxy_config["services"].items() if _proxy_endpoints(s)}
    assert proxied == set(LISTENERS)
    on_network = {n for n, s in proxy_config["services"].items()
                  if "proxied" in (s.get("networks") or {})}
    assert on_network == proxied | {"proxy"}
    for name in proxied:
        env = proxy_config["services"][name]["environment"]
        assert env["POSTROOM_PROXY_TRUSTED"] == subnet, name


@pytest.mark.parametrize("name", LISTENERS)
def test_proxy_mode_environment_parses_as_settings(proxy_config, name):
    env = proxy_config["services"][name]["environment"]
    settings = load_settings({k: str(v) for k, v in env.items() if k.startswith("POSTROOM_")})
    assert settings.proxy_trusted


def test_proxy_publishes_every_mail_port(proxy_config):
    assert _published(proxy_config["services"]["proxy"]) == MAIL_PORTS


def test_haproxy_config_is_valid():
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.fail("haproxy is not installed: run `scripts/ensure-services.sh clients` "
                    "(apt-get install haproxy)", pytrace=False)
    done = subprocess.run([binary, "-c", "-f", str(REPO / "deploy" / "haproxy.cfg")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("mode", ["default", "proxy"])
def test_swarm_stack_has_only_keys_docker_stack_deploy_accepts(config, proxy_config, mode):
    stack = _swarm_module().to_stack(config if mode == "default" else proxy_config)
    assert set(stack) <= SWARM_TOP_LEVEL
    for name, service in stack["services"].items():
        assert set(service) <= SWARM_SERVICE_KEYS, (name, set(service) - SWARM_SERVICE_KEYS)
        assert isinstance(service.get("depends_on", []), list)
        for key, value in (service.get("deploy") or {}).items():
            assert key in SWARM_DEPLOY_KEYS, (name, key)
            allowed = SWARM_DEPLOY_KEYS[key]
            if allowed is not None:
                assert set(value) <= allowed, (name, key, value)
        condition = service["deploy"]["restart_policy"]["condition"]
        assert condition in ("none", "on-failure", "any")
        for port in service.get("ports", []):
            assert set(port) <= {"mode", "target", "published", "protocol"}


def test_example_env_holds_only_known_settings():
    env = read_env_file(ENV_EXAMPLE)
    settings = load_settings({k: v for k, v in env.items() if k.startswith("POSTROOM_")})
    assert settings.hostname == env["POSTROOM_HOSTNAME"]


@pytest.mark.parametrize("name", SUITE)
def test_each_service_environment_parses_as_settings(name):
    compose = load_compose()
    env = service_env(postroom_services(compose)[name], read_env_file(ENV_EXAMPLE))
    load_settings({k: v for k, v in env.items() if k.startswith("POSTROOM_")})


def test_makefile_follows_one_service_log():
    makefile = (REPO / "Makefile").read_text()
    assert "docker compose logs -f $(S)" in makefile


def test_compose_file_has_no_tabs_and_ends_with_newline():
    text = Path(REPO / "compose.yaml").read_text()
    assert "\t" not in text and text.endswith("\n")


def test_swarm_publishes_in_host_mode_and_haproxy_resolves_each_task(proxy_config):
    """Ingress mode would hide every client behind the ingress network's address, and a
    Swarm service name is one virtual IP: HAProxy must resolve tasks.SERVICE."""
    stack = _swarm_module().to_stack(proxy_config)
    for name, service in stack["services"].items():
        for port in service.get("ports", []):
            assert port["mode"] == "host", (name, port)
    assert stack["services"]["proxy"]["environment"]["BACKEND_PREFIX"] == "tasks."
    assert proxy_config["services"]["proxy"]["environment"]["BACKEND_PREFIX"] == ""
    assert stack["networks"]["default"]["attachable"] is True


def test_swarm_keeps_profile_services_at_zero_replicas(config):
    stack = _swarm_module().to_stack(config)
    assert stack["services"]["cli"]["deploy"]["replicas"] == 0
    assert "profiles" not in stack["services"]["cli"]


def test_listen_settings_in_dotenv_are_not_overridden_by_compose(tmp_path):
    """compose's `environment:` wins over env_file: .env's POSTROOM_*_LISTEN must reach it."""
    compose = load_compose()
    for name, service in postroom_services(compose).items():
        for key, value in (service.get("environment") or {}).items():
            if key.endswith("_LISTEN"):
                assert str(value).startswith("${" + key + ":-"), (name, key, value)
    dotenv = {**read_env_file(ENV_EXAMPLE), "POSTROOM_MTA_LISTEN": "tcp:2500"}
    env = service_env(postroom_services(compose)["mta"], dotenv)
    assert env["POSTROOM_MTA_LISTEN"] == "tcp:2500"


def test_an_empty_publish_variable_never_publishes_the_default():
    """`PUBLISH_POP3=` must not quietly become 110:110 (`${VAR:-default}` would)."""
    text = COMPOSE_FILE.read_text()
    publish = re.findall(r'"\$\{(PUBLISH_\w+)(:?-)', text)
    assert publish and all(op == "-" for _, op in publish), publish


def test_compose_does_not_claim_that_listeners_scale_without_the_proxy():
    text = COMPOSE_FILE.read_text()
    for line in text.splitlines():
        if "--scale" in line and "mta=" in line:
            assert "proxy" in line.lower() or "fails" in line or "imap=" in line, line


def test_docker_compose_refuses_an_empty_publish_variable(tmp_path):
    """Empty is an error compose reports, never a silent publish of the default port;
    docs/deploy-docker.md says how to leave a port unpublished (`ports: !reset []`)."""
    shutil.copy(COMPOSE_FILE, tmp_path / "compose.yaml")
    (tmp_path / ".env").write_text(ENV_EXAMPLE.read_text() + "\nPUBLISH_POP3=\n")
    (tmp_path / "tls").mkdir()
    done = subprocess.run([docker_compose(), "--project-directory", str(tmp_path), "config"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0, done.stdout
    assert "pop3" in done.stderr or "port" in done.stderr.lower(), done.stderr


def test_proxy_derives_maxconn_from_its_descriptor_limit():
    """A fixed maxconn above half the container's descriptor limit stops HAProxy at start;
    without one HAProxy sizes itself to the limit (capped by fd-hard-limit)."""
    cfg = (REPO / "deploy" / "haproxy.cfg").read_text()
    assert not re.search(r"^\s*maxconn\s", cfg, re.M)
    assert re.search(r"^\s*fd-hard-limit \d+$", cfg, re.M)


def test_services_wait_for_the_certificate_one_shot():
    """First `up` without ./tls: the `tls` one-shot writes a self-signed pair before any
    listener starts (they restart-looped on the missing files before it existed)."""
    compose = load_compose()
    tls = compose["services"]["tls"]
    assert tls["command"][:3] == ["tls", "self-signed", "--if-missing"]
    assert tls["restart"] == "no"
    assert any(v.startswith("./tls:/etc/postroom/tls") and not v.endswith(":ro")
               for v in tls["volumes"])
    for name in SUITE:
        depends = compose["services"][name]["depends_on"]
        assert depends["tls"]["condition"] == "service_completed_successfully", name


def test_documented_ipv6_listeners_pair_each_default_port_with_an_ipv6_only_socket():
    """docs/deploy-docker.md, "Client addresses" (run for real by the NAT test in
    docker_e2e): each listener's .env line keeps compose.yaml's default IPv4 endpoints,
    adds a tcp6 one per port, parses as settings, and its service gets bindv6only."""
    blocks = docs_blocks(DEPLOY_DOC, "## 4. Client addresses")
    env = dict(line.split("=", 1) for line in blocks["ini"][0].splitlines() if "=" in line)
    load_settings(env)
    override = yaml.safe_load(blocks["yaml"][0])
    assert override["networks"]["default"]["enable_ipv6"] is True
    defaults = {}
    for name, service in load_compose()["services"].items():
        for value in (service.get("environment") or {}).values():
            match = re.fullmatch(r"\$\{(POSTROOM_\w+_LISTEN):-([^}]*)\}", str(value))
            if match and name in LISTENERS:
                defaults[match.group(1)] = (name, match.group(2))
    assert set(env) == set(defaults), set(env) ^ set(defaults)
    for key, value in env.items():
        name, default = defaults[key]
        endpoints = value.split(",")
        assert endpoints[:len(default.split(","))] == default.split(","), (key, value)
        ipv4 = {e.split(":")[1] for e in endpoints if e.startswith("tcp:")}
        ipv6 = {e.split(":")[1] for e in endpoints if e.startswith("tcp6:")}
        assert ipv4 == ipv6, (key, value)
        assert override["services"][name]["sysctls"]["net.ipv6.bindv6only"] == 1, name


@pytest.mark.parametrize("name", SUITE)
def test_front_doors_run_one_process_per_core_and_the_others_one(config, name):
    """Issue 23: the shipped file uses the machine; the parent answers :8080 for its workers."""
    from postroom.ops.procgroup import resolve_processes

    env = service_env(postroom_services(load_compose())[name], read_env_file(ENV_EXAMPLE))
    settings = load_settings({k: v for k, v in env.items() if k.startswith("POSTROOM_")})
    if name in LISTENERS:
        assert config["services"][name]["environment"]["POSTROOM_PROCESSES"] == "auto"
        assert resolve_processes(name, settings.processes, cores=4) == 4
    else:
        assert "POSTROOM_PROCESSES" not in (config["services"][name].get("environment") or {})
        assert resolve_processes(name, settings.processes, cores=4) == 1
    # the healthcheck still asks :8080, which the parent (or the single process) answers
    assert "127.0.0.1:8080/healthz" in " ".join(config["services"][name]["healthcheck"]["test"])
    assert "POSTROOM_HTTP_LISTEN" not in (config["services"][name].get("environment") or {})


def test_front_door_processes_can_be_set_for_all_four_in_dotenv():
    assert "#FRONT_DOOR_PROCESSES=" in ENV_EXAMPLE.read_text()
    compose = load_compose()
    for name in LISTENERS:
        env = service_env(postroom_services(compose)[name], {"FRONT_DOOR_PROCESSES": "1"})
        assert env["POSTROOM_PROCESSES"] == "1"
