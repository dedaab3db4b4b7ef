"""Debian's pebble (an RFC 8555 test CA) on loopback, its DNS pointed at the test DNS server.

``Pebble.start(dns_address, http_port)`` writes its config (free loopback ports,
a self-signed certificate for its own HTTPS that :attr:`ca_file` trusts),
runs it with no validation sleeps and no rejected nonces, and waits for its
directory. Its validation authority resolves names through ``dns_address`` and
fetches HTTP-01 answers from ``http_port`` of the address it finds there (TLS-ALPN-01
ones from ``tls_port``).
:meth:`root_pem` is the root it issues under (a new one every run).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from postroom.net.tls import make_self_signed
from tests.support.ports import free_port

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"


class Pebble:
    def __init__(self, workdir: Path, dns_address: tuple[str, int], http_port: int,
                 tls_port: int | None = None) -> None:
        self.workdir = workdir
        self.port, self.management_port = free_port(), free_port()
        self.tls_port = tls_port or free_port()
        self.ca_file = str(workdir / "pebble-cert.pem")
        make_self_signed(self.ca_file, workdir / "pebble-key.pem", "localhost")
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": self.ca_file, "privateKey": str(workdir / "pebble-key.pem"),
            "httpPort": http_port, "tlsPort": self.tls_port, "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}
        (workdir / "pebble-config.json").write_text(json.dumps(config))
        self.log = workdir / "pebble.log"
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
               "PEBBLE_AUTHZREUSE": "0"}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [PEBBLE, "-config", str(workdir / "pebble-config.json"),
                 "-dnsserver", f"{dns_address[0]}:{dns_address[1]}"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        self._wait()

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def _wait(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.directory, context=self._context(),
                                            timeout=2) as reply:
                    json.load(reply)
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("pebble did not start:\n" + self.output()) from None
                time.sleep(0.1)

    def root_pem(self) -> str:
        """The root certificate pebble issues under (its management API)."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=self._context(), timeout=5) as reply:
            return str(reply.read().decode("ascii"))

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
