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
  certificate before its listeners start; real ones replace it there.

::

    docker compose --env-file .env config --format json \\
      | python3 deploy/swarm.py | docker stack deploy -c - postroom

Standard library only, so it runs wherever Docker does.
"""

from __future__ import annotations

import json
import sys
from typing import Any

# top-level and per-service keys of the docker/cli v3 schema that compose.yaml uses
TOP_LEVEL = ("version", "services", "networks", "volumes", "secrets", "configs")
TLS_DIR = "/etc/postroom/tls"
TLS_VOLUME = "tls"
DROPPED_SERVICE_KEYS = ("build", "profiles", "restart", "pull_policy", "container_name")


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


def _service(service: dict[str, Any]) -> dict[str, Any]:
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
    for volume in out.get("volumes", []):
        if isinstance(volume, dict):
            # compose v2 adds bind.create_host_path, which the v3 loader does not know
            volume = dict(volume)
            bind = {k: v for k, v in volume.get("bind", {}).items() if k == "propagation"}
            volume.pop("bind", None)
            if bind:
                volume["bind"] = bind
        if isinstance(volume, str):
            # short syntax (compose v1's config): SOURCE:TARGET[:MODE]
            parts = volume.split(":")
            if len(parts) >= 2 and parts[1] == TLS_DIR and parts[0].startswith(("/", ".")):
                volume = {"type": "bind", "source": parts[0], "target": TLS_DIR,
                          "read_only": parts[2:3] == ["ro"]}
        if isinstance(volume, dict) and volume.get("type") == "bind" \
                and volume.get("target") == TLS_DIR:
            volume = {"type": "volume", "source": TLS_VOLUME, "target": TLS_DIR,
                      "read_only": bool(volume.get("read_only"))}
        volumes.append(volume)
    if volumes:
        out["volumes"] = volumes
    return out


def to_stack(config: dict[str, Any]) -> dict[str, Any]:
    """The stack file for a fully resolved compose configuration."""
    stack: dict[str, Any] = {"version": "3.9"}
    for key in TOP_LEVEL[1:]:
        if key in config:
            stack[key] = config[key]
    for key, value in config.items():
        if key.startswith("x-"):
            stack[key] = value
    stack["services"] = {name: _service(svc) for name, svc in config["services"].items()}
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
    json.dump(to_stack(config), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
