"""Compose smoke: every compose service's exact command and environment, run here on loopback.

Docker cannot run on the development machines, so this reads compose.yaml and
starts, for every service whose entry point is installed, ``postroom`` plus the
service's ``command`` (the image's ENTRYPOINT is ``postroom``) with the
environment compose would give it: deploy/postroom.env.example as ``.env``, then
the service's ``environment``. Only what a container gets from Docker itself is
translated: service hostnames become 127.0.0.1, each container port a free
loopback port (in every POSTROOM_*_LISTEN and in URLs that name a service),
bind-mounted folders a temporary folder (the TLS certificate), /run/secrets a
temporary folder with a new key for each file secret, PostgreSQL and Redis the
test database and a test key prefix, and DNS the loopback test server.
"""

from __future__ import annotations

import re
import secrets
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from postroom.net.tls import make_self_signed
from postroom.secretbox import write_key_file
from postroom.service import available_services
from tests.deploy.compose import (
    ENV_EXAMPLE,
    load_compose,
    postroom_services,
    read_env_file,
    service_env,
)
from tests.support.db import create_test_database, drop_test_database
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, base_env
from tests.support.redisdb import delete_prefix

pytestmark = pytest.mark.slow

MAIL_PATH = {"msa", "mta", "mda"}
HEALTH_TIMEOUT = 45.0


def postroom_argv(command: list[str]) -> list[str]:
    """What the container runs: the ``postroom`` console script, then compose's command."""
    script = Path(sys.executable).parent / "postroom"
    return [str(script), *command] if script.exists() else [
        sys.executable, "-m", "postroom.ops.cli", *command]


@dataclass
class Suite:
    """The started services and how compose's names map to this machine."""

    database_url: str
    redis_prefix: str
    migrate: subprocess.CompletedProcess[str]
    ports: dict[tuple[str, int], int]
    procs: dict[str, ServiceProcess] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)


def _localise(name: str, env: dict[str, str], ports: dict[tuple[str, int], int],
              mounts: dict[str, Path]) -> dict[str, str]:
    """Rewrite what only Docker provides (names, ports, mounts) for this machine."""
    result = dict(env)
    for key, value in env.items():
        if key.endswith("_LISTEN") and key != "POSTROOM_HTTP_LISTEN":
            endpoints = []
            for endpoint in value.split(","):
                def local(match: re.Match[str]) -> str:
                    return f"tcp:{ports[(name, int(match.group(1)))]}"
                endpoint = re.sub(r"tcp6?:(\d+)", local, endpoint)
                if "interface=" not in endpoint:
                    endpoint += ":interface=127.0.0.1"
                endpoints.append(endpoint)
            result[key] = ",".join(endpoints)
            continue

        def host(match: re.Match[str]) -> str:
            target = (match.group(1), int(match.group(2)))
            return f"//127.0.0.1:{ports[target]}" if target in ports else match.group(0)
        value = re.sub(r"//([a-z0-9_-]+):(\d+)", host, value)
        for container_path, host_path in mounts.items():
            if value.startswith(container_path + "/"):
                value = str(host_path) + value[len(container_path):]
        result[key] = value
    return result


def _listen_ports(name: str, env: dict[str, str]) -> list[int]:
    return [int(p) for key, value in env.items()
            if key.endswith("_LISTEN") and key != "POSTROOM_HTTP_LISTEN"
            for p in re.findall(r"tcp6?:(\d+)", value)]


def _healthcheck_port(service: dict[str, Any]) -> int:
    test = " ".join(service["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)/healthz", test)
    assert match, f"healthcheck does not probe /healthz: {test}"
    return int(match.group(1))


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
          dns_server_session: Any) -> Iterator[Suite]:
    compose = load_compose()
    dotenv = read_env_file(ENV_EXAMPLE)
    services = postroom_services(compose)
    installed = set(available_services())
    runnable = {n: s for n, s in services.items()
                if s["command"][0] == "serve" and s["command"][1] in installed}
    tls = tmp_path_factory.mktemp("tls")
    make_self_signed(tls / "fullchain.pem", tls / "privkey.pem", dotenv["POSTROOM_HOSTNAME"])
    # Docker mounts each file secret at /run/secrets/NAME: a new key stands in for each
    run_secrets = tmp_path_factory.mktemp("secrets")
    for secret in compose.get("secrets", {}):
        write_key_file(str(run_secrets / secret))

    ports: dict[tuple[str, int], int] = {}
    raw_envs = {name: service_env(svc, dotenv) for name, svc in services.items()}
    for name, env in raw_envs.items():
        for port in _listen_ports(name, env):
            ports[(name, port)] = free_port()
    database_url = create_test_database("postroom_test_smoke_")
    prefix = f"prtest:{secrets.token_hex(6)}:"
    overrides = {"POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
                 "POSTROOM_REDIS_PREFIX": prefix, **dns_server_session.env}

    def env_of(name: str) -> dict[str, str]:
        mounts = {}
        for volume in services[name].get("volumes", []):
            source, target = volume.split(":")[:2]
            assert source == "./tls", f"unexpected bind mount {volume} in {name}"
            mounts[target] = tls
        if services[name].get("secrets"):
            mounts["/run/secrets"] = run_secrets
        return {**_localise(name, raw_envs[name], ports, mounts), **overrides}

    migrate = subprocess.run(postroom_argv(services["migrate"]["command"]),
                             env=base_env(env_of("migrate")),
                             capture_output=True, text=True, timeout=120)
    suite = Suite(database_url, prefix, migrate, ports)
    try:
        if migrate.returncode == 0:
            for name, service in runnable.items():
                http = free_port()
                ports[(name, _healthcheck_port(service))] = http
                env = {**env_of(name),
                       "POSTROOM_HTTP_LISTEN": f"tcp:{http}:interface=127.0.0.1"}
                proc = ServiceProcess(name, env, argv=postroom_argv(service["command"]),
                                      http_port=http)
                suite.procs[name], suite.envs[name] = proc, env
                proc.spawn()  # all at once, as compose would once migrate has finished
        yield suite
    finally:
        for proc in suite.procs.values():
            proc.close()
        client = redis.Redis.from_url(redis_url)
        try:
            delete_prefix(client, prefix)
        finally:
            client.close()
        drop_test_database(database_url)


def test_migrate_command_brings_the_schema_to_head(suite):
    from postroom.store.migrate import current_revision, head_revision

    assert suite.migrate.returncode == 0, suite.migrate.stdout + suite.migrate.stderr
    assert current_revision(suite.database_url) == head_revision()


def test_every_installed_compose_service_becomes_healthy(suite):
    assert suite.procs, "no compose service has an installed entry point"
    assert {"dmarc", "pop3"} <= set(suite.procs)
    for proc in suite.procs.values():
        proc.wait_healthy(HEALTH_TIMEOUT)


def test_each_service_gets_its_own_health_port(suite):
    ports = [proc.http_port for proc in suite.procs.values()]
    assert len(set(ports)) == len(ports)


def test_every_service_serves_prometheus_metrics(suite):
    for name, proc in suite.procs.items():
        proc.wait_healthy(HEALTH_TIMEOUT)
        status, body = proc.get("/metrics")
        assert status == 200, name
        assert b"# TYPE" in body, name


def test_one_message_goes_through_when_the_mail_path_exists(suite):
    """Submission -> msa -> mta -> mda -> INBOX, once msa, mta and mda are all installed.

    Until then (they are being built) this still checks that every service that
    is present is healthy; the message check activates by itself when they land.
    """
    for proc in suite.procs.values():
        proc.wait_healthy(HEALTH_TIMEOUT)
    if not MAIL_PATH <= set(suite.procs):
        return
    from postroom.store import domains, mailboxes, users
    from postroom.store.db import Database

    database = Database(suite.database_url, pool_size=1)
    try:
        database.run_sync(domains.add_domain, "example.test")
        alice = database.run_sync(users.add_user, "alice@example.test", "alice-secret-1")
        bob = database.run_sync(users.add_user, "bob@example.test", "bob-secret-1")
        submission = suite.ports[("msa", 587)]
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", submission, timeout=15) as client:
            client.starttls(context=context)
            client.login(alice.address, "alice-secret-1")
            client.sendmail(alice.address, [bob.address],
                            b"From: alice@example.test\r\nTo: bob@example.test\r\n"
                            b"Subject: compose smoke\r\n\r\nhello through the suite\r\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            inbox = database.run_sync(mailboxes.get_mailbox, bob.id, "INBOX")
            if inbox.uidnext > 1:
                break
            time.sleep(0.2)
        assert inbox.uidnext == 2, "the message did not reach bob's INBOX"
    finally:
        database.dispose()
