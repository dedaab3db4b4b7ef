"""Turn `docker compose config --format json` into a stack file `docker stack deploy` accepts.

compose.yaml uses Compose-spec features that Swarm's loader (docker/cli, schema
3.x) refuses: ``depends_on`` conditions, ``profiles``, ``name`` and ``build``.
Swarm has no start order anyway (every task restarts until its dependencies
answer), so the conversion drops them rather than keeping two files in step.
It also makes what compose gets right by itself right on a Swarm
(docs/deploy-docker.md, "Docker Swarm"):

* published ports in ``host`` mode: ingress mode hands every connection to a
  task through IPVS with the ingress network's address as its source, so the mta
  would judge SPF/DMARC, and the limits would count, the wrong client;
* HAProxy (proxy mode) resolves ``tasks.SERVICE`` (each task's address) instead
  of ``SERVICE``, which on a Swarm is one virtual IP;
* every service resolves by DNS round robin (``endpoint_mode: dnsrr``): each
  client connects to a task's own address, never through a virtual IP, which
  needs IPVS and Docker's iptables rules on every node (and host-mode ports,
  above, are what dnsrr allows);
* the default network is attachable, so ``docker run --network`` reaches it;
* services behind a compose profile (the operator's ``cli``) get 0 replicas;
* the ./tls bind mount becomes the named volume ``tls`` (a Swarm never creates a
  bind source, and each node would need the folder), and the one-shot ``tls``
  service runs once on every node (mode global), so each node's volume holds a
  certificate before its listeners start; real ones replace it there;
* every other bind mount of a host file (haproxy.cfg) or folder of files
  (rspamd's local.d) becomes Swarm configs, one a file, which the manager hands to
  whichever node runs the task; each config's name ends in a hash of its content, so
  a redeploy after an edit makes a new one (a Swarm config cannot change);
* services that publish host ports are placed on nodes labelled ``postroom.mail=true``:
  with host-mode ports, DNS (MX, A/AAAA) must name the nodes the listeners run on;
* a warning on stderr when an image compose builds has no registry host in its
  name (``postroom:latest``): other nodes cannot pull it.

::

    docker compose --env-file .env config --format json \\
      | python3 deploy/swarm.py | docker stack deploy -c - postroom

Standard library only, so it runs wherever Docker does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from typing import Any

# top-level and per-service keys of the docker/cli v3 schema that compose.yaml uses
TOP_LEVEL = ("version", "services", "networks", "volumes", "secrets", "configs")
TLS_DIR = "/etc/postroom/tls"
TLS_VOLUME = "tls"
DROPPED_SERVICE_KEYS = ("build", "profiles", "restart", "pull_policy", "container_name")
# where the listeners run: the nodes DNS names (docs/deploy-docker.md, "Docker Swarm")
LISTENER_CONSTRAINT = "node.labels.postroom.mail == true"
CONFIG_MODE = 0o444
_CONFIG_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class ConversionError(Exception):
    """The compose configuration cannot become a stack file; the message says why."""


def _bind(volume: Any) -> tuple[str, str, bool] | None:
    """(source, target, read-only) of a bind mount in either syntax; None otherwise."""
    if isinstance(volume, dict):
        if volume.get("type") != "bind":
            return None
        return str(volume["source"]), str(volume["target"]), bool(volume.get("read_only"))
    if isinstance(volume, str):
        # short syntax (compose v1's config): SOURCE:TARGET[:MODE]
        parts = volume.split(":")
        if len(parts) >= 2 and parts[0].startswith(("/", ".")):
            return parts[0], parts[1], "ro" in parts[2:3]
    return None


def _config_key(path: str) -> str:
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:12]
    return _CONFIG_NAME.sub("_", os.path.basename(path))[:40] + "-" + digest


def _as_configs(source: str, target: str, configs: dict[str, dict[str, str]]
                ) -> list[dict[str, Any]]:
    """A bound file, or each file of a bound folder, as Swarm configs at the same place."""
    if os.path.isfile(source):
        files = [(source, target)]
    elif os.path.isdir(source):
        files = []
        for name in sorted(os.listdir(source)):
            path = os.path.join(source, name)
            if not os.path.isfile(path):
                raise ConversionError(f"{path}: only files can become Swarm configs")
            files.append((path, target.rstrip("/") + "/" + name))
    else:
        raise ConversionError(f"bind mount source {source} does not exist here: run the "
                              "conversion in the project folder, on the manager")
    mounts = []
    for path, where in files:
        key = _config_key(path)
        configs[key] = {"file": path}
        mounts.append({"source": key, "target": where, "mode": CONFIG_MODE})
    return mounts


def _ports(ports: list[Any]) -> list[dict[str, Any]]:
    """Long-syntax ports with integer ports (compose v2 prints ``published`` as a string)."""
    result = []
    for port in ports:
        if not isinstance(port, dict):
            result.append(port)
            continue
        item: dict[str, Any] = {"target": int(port["target"])}
        if port.get("published") not in (None, ""):
            item["published"] = int(port["published"])
        item["protocol"] = port.get("protocol", "tcp")
        item["mode"] = "host"
        result.append(item)
    return result


def _service(service: dict[str, Any], configs: dict[str, dict[str, str]]) -> dict[str, Any]:
    # compose v2 prints unset keys as null ("entrypoint": null), which the v3 loader refuses
    out = {k: v for k, v in service.items() if k not in DROPPED_SERVICE_KEYS and v is not None}
    depends = out.get("depends_on")
    if isinstance(depends, dict):
        out["depends_on"] = sorted(depends)
    if "ports" in out:
        out["ports"] = _ports(out["ports"])
    deploy = dict(out.get("deploy") or {})
    deploy["endpoint_mode"] = "dnsrr"
    out["deploy"] = deploy
    if service.get("profiles"):
        # started only on demand under compose (`docker compose run --rm cli ...`)
        deploy = dict(out.get("deploy") or {})
        deploy["replicas"] = 0
        deploy["restart_policy"] = {"condition": "none"}
        out["deploy"] = deploy
    if (service.get("command") or [])[:2] == ["tls", "self-signed"]:
        deploy = {k: v for k, v in (out.get("deploy") or {}).items() if k != "replicas"}
        deploy["mode"] = "global"
        out["deploy"] = deploy
    if "haproxy" in str(out.get("image", "")):
        # deploy/haproxy.cfg's server-template names "${BACKEND_PREFIX}SERVICE"
        environment = dict(out.get("environment") or {})
        environment["BACKEND_PREFIX"] = "tasks."
        out["environment"] = environment
    volumes = []
    mounted = list(out.get("configs") or [])
    for volume in out.get("volumes", []):
        bind = _bind(volume)
        if bind is not None and bind[1] == TLS_DIR:
            volume = {"type": "volume", "source": TLS_VOLUME, "target": TLS_DIR,
                      "read_only": bind[2]}
        elif bind is not None:
            mounted += _as_configs(bind[0], bind[1], configs)
            continue
        volumes.append(volume)
    if volumes:
        out["volumes"] = volumes
    else:
        out.pop("volumes", None)
    if mounted:
        out["configs"] = mounted
    if any(isinstance(port, dict) and "published" in port for port in out.get("ports", [])):
        placement = dict(out["deploy"].get("placement") or {})
        constraints = list(placement.get("constraints") or [])
        if LISTENER_CONSTRAINT not in constraints:
            constraints.append(LISTENER_CONSTRAINT)
        placement["constraints"] = constraints
        out["deploy"]["placement"] = placement
    return out


def unpullable_images(config: dict[str, Any]) -> list[str]:
    """Images compose builds here whose names have no registry host: only this node
    has them."""
    names = set()
    for service in config["services"].values():
        image = str(service.get("image") or "")
        first = image.split("/", 1)[0]
        registry = "/" in image and ("." in first or ":" in first or first == "localhost")
        if service.get("build") and image and not registry:
            names.add(image)
    return sorted(names)


def to_stack(config: dict[str, Any]) -> dict[str, Any]:
    """The stack file for a fully resolved compose configuration."""
    stack: dict[str, Any] = {"version": "3.9"}
    for key in TOP_LEVEL[1:]:
        if key in config:
            stack[key] = config[key]
    for key, value in config.items():
        if key.startswith("x-"):
            stack[key] = value
    configs: dict[str, dict[str, str]] = dict(stack.get("configs") or {})
    stack["services"] = {name: _service(svc, configs)
                         for name, svc in config["services"].items()}
    if configs:
        stack["configs"] = configs
    if any(v.get("source") == TLS_VOLUME for svc in stack["services"].values()
           for v in svc.get("volumes", []) if isinstance(v, dict)):
        stack["volumes"] = {**(stack.get("volumes") or {}), TLS_VOLUME: {}}
    networks = {name: dict(net or {}) for name, net in (stack.get("networks") or {}).items()}
    default = networks.setdefault("default", {})
    if not default.get("external"):
        # an overlay that `docker run --network STACK_default` may join (operator tools)
        default.pop("name", None)
        default["driver"] = "overlay"
        default["attachable"] = True
    stack["networks"] = networks
    return stack


def main() -> int:
    try:
        config = json.load(sys.stdin)
    except ValueError as exc:
        print(f"swarm.py: stdin is not `docker compose config --format json`: {exc}",
              file=sys.stderr)
        return 2
    try:
        stack = to_stack(config)
    except ConversionError as exc:
        print(f"swarm.py: {exc}", file=sys.stderr)
        return 2
    for image in unpullable_images(config):
        print(f"swarm.py: warning: {image} is built here and names no registry: other "
              "nodes cannot pull it. Push it to a registry and set POSTROOM_IMAGE to "
              "REGISTRY/NAME:TAG (docs/deploy-docker.md, 'What a second node needs')",
              file=sys.stderr)
    json.dump(stack, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
