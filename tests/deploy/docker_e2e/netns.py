"""A dockerd with Docker's own NAT (iptables and ip6tables) in a private network namespace.

The main test daemon (harness.py) runs with ``--iptables=false`` so that it never touches
the host's firewall, which means published ports go through docker-proxy and a client
outside Docker arrives as the compose network's gateway. To test what an operator gets
with the daemon settings of docs/deploy-docker.md ("Client addresses"), this second
daemon runs with exactly those settings, iptables and ip6tables on, but inside a network
namespace of its own (``ip netns add``): every rule it writes lives in that namespace and
goes with it. It is entered with ``nsenter --net`` only, so the mount namespace (and the
host's /sys/fs/cgroup, which ``ip netns exec`` would hide behind a fresh sysfs) stays the
host's.

A second namespace is the client, another machine on a veth link:
``192.0.2.2``/``2001:db8:25::2`` talking to the Docker host's ``192.0.2.1``/
``2001:db8:25::1`` (documentation prefixes, RFC 5737 and 3849). The veth pair is made
inside the namespaces and never exists in the host's. The daemon's data root, exec
root, socket and pidfile are under a temporary folder; images arrive with
``docker save | docker load`` from the main test daemon. :meth:`NatHost.stop` stops the
daemon by its PID, deletes both namespaces (the veth with them) and the folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.deploy.docker_e2e.harness import DOCKER_CLI, IMAGES_SCRIPT, Dockerd, E2EError, run

HOST_V4, CLIENT_V4 = "192.0.2.1", "192.0.2.2"
HOST_V6, CLIENT_V6 = "2001:db8:25::1", "2001:db8:25::2"


def dockerd_major() -> int:
    out = run(["dockerd", "--version"], timeout=30).stdout
    match = re.search(r"version (\d+)\.", out)
    if match is None:
        raise E2EError(f"cannot read dockerd's version from {out!r}")
    return int(match.group(1))


class NatHost(Dockerd):
    """The Docker host in its namespace, its client namespace, and the daemon."""

    def __init__(self, workdir: Path, daemon_json: dict[str, Any]) -> None:
        super().__init__(workdir)
        self.data_root = workdir / "data"
        tag = f"{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
        self.host_ns = f"postroom-e2e-nat-{tag}"
        self.client_ns = f"postroom-e2e-client-{tag}"
        self.config_file = workdir / "daemon.json"
        self.config_file.write_text(json.dumps(daemon_json, indent=2) + "\n")
        self._made: list[str] = []

    def ip(self, *args: str) -> None:
        run(["ip", *args], timeout=30)

    def start(self) -> None:
        """Namespaces, link, addresses, then dockerd with the daemon.json given."""
        for name in (self.host_ns, self.client_ns):
            self.ip("netns", "add", name)
            self._made.append(name)
            self.ip("-n", name, "link", "set", "lo", "up")
        self.ip("-n", self.host_ns, "link", "add", "uplink", "type", "veth", "peer", "name",
                "eth0", "netns", self.client_ns)
        for ns, dev, v4, v6 in ((self.host_ns, "uplink", HOST_V4, HOST_V6),
                                (self.client_ns, "eth0", CLIENT_V4, CLIENT_V6)):
            self.ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            self.ip("-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            self.ip("-n", ns, "link", "set", dev, "up")
        self.ip("-n", self.client_ns, "route", "add", "default", "via", HOST_V4)
        self.ip("-n", self.client_ns, "-6", "route", "add", "default", "via", HOST_V6)
        # the compose v2 CLI plugin, as the main daemon's client has it (cached)
        plugin = run(["bash", str(IMAGES_SCRIPT), "plugin"], timeout=300).stdout.strip()
        (self.config / "cli-plugins").mkdir(parents=True, exist_ok=True)
        (self.config / "cli-plugins" / "docker-compose").symlink_to(plugin)
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        cmd = ["nsenter", f"--net=/run/netns/{self.host_ns}", dockerd,
               "--config-file", str(self.config_file),
               "--data-root", str(self.data_root),
               "--exec-root", str(self.workdir / "exec"),
               "--pidfile", str(self.pidfile), "-H", f"unix://{self.socket}",
               "--storage-driver=overlay2", "--log-level=warn"]
        log = open(self.log, "wb")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise E2EError(f"dockerd (in {self.host_ns}) exited with "
                               f"{self.process.returncode}:\n{self.tail()}")
            if self.socket.exists() and run([DOCKER_CLI, "info"], env=self.env, check=False,
                                            timeout=20).returncode == 0:
                return
            time.sleep(0.5)
        raise E2EError(f"dockerd (in {self.host_ns}) did not answer within 60s:\n{self.tail()}")

    def load_images(self, source: Dockerd, images: Sequence[str]) -> None:
        """``docker save`` on the main test daemon piped into ``docker load`` here."""
        save = subprocess.Popen([DOCKER_CLI, "save", *images], env=source.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            load = subprocess.run([DOCKER_CLI, "load", "-q"], env=self.env, stdin=save.stdout,
                                  capture_output=True, text=True, timeout=300)
        finally:
            if save.stdout is not None:
                save.stdout.close()
            save.wait(timeout=60)
        if save.returncode != 0 or load.returncode != 0:
            raise E2EError(f"docker save | docker load failed: {load.stdout}{load.stderr}")

    def rules(self) -> str:
        """Docker's NAT rules in the namespace (for failure messages and the report)."""
        out = []
        for tool in ("iptables", "ip6tables"):
            done = run(["ip", "netns", "exec", self.host_ns, tool, "-t", "nat", "-S"],
                       check=False, timeout=30)
            out.append(f"{tool}:\n{done.stdout}{done.stderr}")
        return "\n".join(out)

    def client(self, script: str, *args: str, timeout: float = 60) -> str:
        """Python ``script`` run in the client namespace (a process, not a container)."""
        return run(["ip", "netns", "exec", self.client_ns, sys.executable, "-c", script,
                    *args], timeout=timeout).stdout

    def stop(self) -> None:
        """The daemon by its PID, then the namespaces (with the veth) and the folder."""
        try:
            if self.process is not None and self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.kill(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=30)
        finally:
            # a daemon that died early can leave its data root mounted on itself
            mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text()
                      .splitlines() if line.split()[1].startswith(str(self.workdir) + "/")]
            for mount in sorted(mounts, key=len, reverse=True):
                run(["umount", "-l", mount], check=False, timeout=30)
            for name in reversed(self._made):
                run(["ip", "netns", "del", name], check=False, timeout=30)
            self._made.clear()
            shutil.rmtree(self.data_root, ignore_errors=True)
