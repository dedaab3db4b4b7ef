"""Reading compose.yaml as Docker would: services, env_file + environment, bind mounts."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
# proxy mode: HAProxy in front, and the only place PROXY protocol listeners are defined
PROXY_OVERRIDE = REPO / "deploy" / "compose.proxy.yaml"
ENV_EXAMPLE = REPO / "deploy" / "postroom.env.example"
DEPLOY_DOC = REPO / "docs" / "deploy-docker.md"
MAIL_PORTS = {25, 465, 587, 2525, 110, 995, 143, 993}


def load_compose() -> dict[str, Any]:
    """compose.yaml parsed with YAML merge keys resolved (no ${} interpolation)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def load_proxy_override() -> dict[str, Any]:
    """deploy/compose.proxy.yaml parsed the same way."""
    return yaml.safe_load(PROXY_OVERRIDE.read_text())


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads an env_file (comments and blanks skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = value.strip()
    return env


def service_env(service: dict[str, Any], dotenv: dict[str, str]) -> dict[str, str]:
    """A container's environment: the env_file (.env) first, then ``environment``."""
    env: dict[str, str] = {}
    env_files = service.get("env_file") or []
    for name in [env_files] if isinstance(env_files, str) else env_files:
        assert name == ".env", f"unexpected env_file {name}"
        env.update(dotenv)
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({k: interpolate(str(v), dotenv) for k, v in environment.items()})
    return env


_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*))?\}")


def interpolate(value: str, dotenv: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` (unset or empty) and ``${VAR-default}``
    (unset only), read from .env as compose reads it."""
    def one(match: re.Match[str]) -> str:
        name, op, default = match.groups()
        if name in dotenv and (dotenv[name] or op != ":-"):
            return dotenv[name]
        return default if op else ""
    return _VARIABLE.sub(one, value)


def postroom_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the Postroom image (``serve NAME`` and the one-shot migrate)."""
    return {name: svc for name, svc in compose["services"].items()
            if "postroom" in str(svc.get("image", "")) and svc.get("command")}


def endpoint_port(endpoint: str) -> int | None:
    """The port of a tcp endpoint string, also inside ``proxy:tcp:N``."""
    match = re.search(r"(?:^|:)tcp6?:(\d+)", endpoint)
    return int(match.group(1)) if match else None


def docker_compose() -> str:
    """The docker-compose binary (Debian package; CI installs it via ensure-services.sh)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed: run `scripts/ensure-services.sh clients` "
                    "(apt-get install docker-compose)", pytrace=False)
    return binary


def compose_config(workdir: Path, *args: str, proxy: bool = False,
                   env: dict[str, str] | None = None,
                   extra: Sequence[str] = ()) -> dict[str, Any]:
    """`docker-compose config` of compose.yaml with the example env as .env, parsed.

    ``proxy`` adds deploy/compose.proxy.yaml, as COMPOSE_FILE does in proxy mode; ``env``
    adds lines to .env; ``extra``: further override files by their path in the repository.
    The deploy folder is copied too: the files compose.yaml binds (haproxy.cfg, rspamd's
    local.d) are there, as in a clone.
    """
    shutil.copy(COMPOSE_FILE, workdir / "compose.yaml")
    shutil.copy(ENV_EXAMPLE, workdir / ".env")
    if env:
        with open(workdir / ".env", "a") as dotenv:
            dotenv.writelines(f"{key}={value}\n" for key, value in env.items())
    (workdir / "tls").mkdir(exist_ok=True)
    shutil.copytree(REPO / "deploy", workdir / "deploy", dirs_exist_ok=True)
    files = ["-f", str(workdir / "compose.yaml")]
    if proxy:
        files += ["-f", str(workdir / "deploy" / PROXY_OVERRIDE.name)]
    for name in extra:
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, workdir / name)
        files += ["-f", str(workdir / name)]
    done = subprocess.run([docker_compose(), "--project-directory", str(workdir),
                           *files, *args, "config"],
                          capture_output=True, text=True, timeout=60, cwd=workdir)
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    return yaml.safe_load(done.stdout)


def docs_blocks(doc: Path, heading: str) -> dict[str, list[str]]:
    """The fenced code blocks of one section of a Markdown page, by language."""
    text = doc.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    section = text[start:end if end != -1 else len(text)]
    blocks: dict[str, list[str]] = {}
    for match in re.finditer(r"^ *```(\w+)\n(.*?)^ *```", section, re.M | re.S):
        indent = len(match.group(0)) - len(match.group(0).lstrip(" "))
        body = "\n".join(line[indent:] for line in match.group(2).splitlines()) + "\n"
        blocks.setdefault(match.group(1), []).append(body)
    return blocks
