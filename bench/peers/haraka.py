"""Haraka as the accept-only peer: one process on a loopback port, queue/discard, no DNS outside.

The config lives in bench/peers/haraka_conf/ (plugins: a bench plugin that
points Node's resolver at the bench's loopback DNS server and answers the
connect-time reverse lookup, rcpt_to.in_host_list for bench.test, and
queue/discard); it is copied under var/bench/haraka with smtp.ini rendered
for a free 127.0.0.1 port. Haraka itself is installed from npm into
var/bench/haraka-pkg by bench/peers/install.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from common import BENCH, VAR, free_port, stop_pid, wait_port

CONF = BENCH / "peers" / "haraka_conf"
ROOT = VAR / "haraka"
PKG = VAR / "haraka-pkg"
BINARY = PKG / "node_modules" / ".bin" / "haraka"


class Haraka:
    def __init__(self, dns_server: str, nodes: int = 1) -> None:
        self.port = free_port()
        self.nodes = nodes
        self.dns_server = dns_server
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        if not BINARY.exists():
            return "Haraka is not installed (npm install failed or node is missing)"
        return None

    def start(self) -> Haraka:
        if ROOT.exists():
            shutil.rmtree(ROOT)
        # Haraka's own defaults first (connection.ini and friends), then the bench's files
        shutil.copytree(PKG / "node_modules" / "Haraka" / "config", ROOT / "config")
        shutil.copytree(CONF, ROOT, dirs_exist_ok=True)
        template = (ROOT / "config" / "smtp.ini.in").read_text()
        (ROOT / "config" / "smtp.ini").write_text(template.format(port=self.port, nodes=self.nodes))
        (ROOT / "config" / "smtp.ini.in").unlink()
        env = {**os.environ, "YES_REALLY_DO_DISCARD": "1", "BENCH_DNS_SERVER": self.dns_server}
        self.log = open(ROOT / "haraka.log", "wb")
        self.proc = subprocess.Popen([str(BINARY), "-c", str(ROOT)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, timeout=30)
        except RuntimeError:
            self.stop()
            log = (ROOT / "haraka.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"haraka did not start: {log}") from None
        return self

    def root_pids(self) -> list[int]:
        """Haraka's master (its cluster workers are its children)."""
        return [self.proc.pid] if self.proc is not None else []

    def stop(self) -> None:
        stop_pid(self.proc)
        self.proc = None
        if getattr(self, "log", None) is not None:
            self.log.close()
