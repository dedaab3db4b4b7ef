"""Real rspamd and clamd for tests: Debian's daemons on free loopback ports, configs in a temp dir.

``RspamdServer`` runs ``rspamd -f`` with Debian's /etc/rspamd configuration
and our overrides in its own LOCAL_CONFDIR (workers on 127.0.0.1 ports of
their own, a private redis-server for statistics, network lookups off: no
fuzzy, RBLs, neural, DNS-based checks, so a scan here never waits on the
Internet). Its actions: add header at 10, reject at 30, no greylisting; a
``Subject`` containing ``postroom-junk-test`` scores 12 (add header, Junk).

``ClamdServer`` runs ``clamd`` with a signature database the test writes
(the official ones need the Internet): ``Postroom.Test.EICAR`` matches the
EICAR test string, ``Postroom.Test.ZipPattern`` the bytes of ZIP_PATTERN
(found inside a zip only after clamd unpacks it: the zip stores it deflated).
clamd reports them with an ``.UNOFFICIAL`` suffix.

Both are stopped by PID; their directories are removed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port
from tests.support.redisdb import PrivateRedis

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
ZIP_PATTERN = b"POSTROOM-ZIP-TEST-PATTERN-7f3a9c51"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
JUNK_SUBJECT = "postroom-junk-test"
RSPAMD_PASSWORD = "rspamd-test-password"

# modules that would look things up on the Internet (or need services we do not run)
_OFF = ("fuzzy_check", "neural", "rbl", "surbl", "asn", "dcc", "url_redirector", "phishing",
        "reputation", "mx_check", "rspamd_update", "greylist", "ratelimit", "hfilter",
        "history_redis", "replies", "emails", "spamassassin", "metric_exporter",
        "clickhouse", "elastic", "external_services", "antivirus", "bimi", "p0f",
        "dkim_signing", "arc")


def _wait(check: Any, what: str, proc: subprocess.Popen[bytes], log: Path,
          timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start in {timeout:g}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class RspamdServer:
    """rspamd on 127.0.0.1: ``url`` (normal worker) and ``controller_url``."""

    def __init__(self, *, milter: bool = False, clamd_address: str | None = None) -> None:
        """``milter``: also a milter proxy on ``milter_port`` (Postfix's smtpd_milters), which
        with ``clamd_address`` (tcp:HOST:PORT) has rspamd's antivirus module ask that clamd."""
        binary = shutil.which("rspamd")
        if binary is None:
            pytest.fail("rspamd is not installed (scripts/ensure-services.sh installs it)",
                        pytrace=False)
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="postroom-rspamd-"))
        self.port = free_port()
        self.controller_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.controller_url = f"http://127.0.0.1:{self.controller_port}"
        self.redis = PrivateRedis()
        self.proc: subprocess.Popen[bytes] | None = None
        self.milter_port = free_port() if milter else 0
        self.clamd_address = clamd_address

    def _write_config(self) -> None:
        local, override = self.dir / "local.d", self.dir / "override.d"
        for d in (local, override, self.dir / "db", self.dir / "run", self.dir / "log"):
            d.mkdir(parents=True, exist_ok=True)
        (override / "worker-normal.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.port}";\ncount = 1;\n')
        (override / "worker-controller.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.controller_port}";\ncount = 1;\n'
            f'password = "{RSPAMD_PASSWORD}";\nenable_password = "{RSPAMD_PASSWORD}";\n'
            'secure_ip = "127.0.0.2";\n')  # not the tests' address: the password is checked
        if self.milter_port:
            (override / "worker-proxy.inc").write_text(
                f'bind_socket = "127.0.0.1:{self.milter_port}";\nmilter = yes;\ncount = 1;\n'
                'upstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n')
        else:
            (override / "worker-proxy.inc").write_text(
                f'enabled = false;\nbind_socket = "127.0.0.1:{free_port()}";\n')
        (override / "worker-fuzzy.inc").write_text("count = -1;\n")
        (override / "logging.inc").write_text(
            f'type = "file";\nfilename = "{self.dir}/log/rspamd.log";\nlevel = "info";\n')
        host_port = self.redis.url.split("//", 1)[1].split("/", 1)[0]
        (local / "redis.conf").write_text(f'servers = "{host_port}";\n')
        (local / "options.inc").write_text(
            "dns { timeout = 0.3s; retransmits = 1; }\nlocal_addrs = [];\n")
        (local / "actions.conf").write_text(
            "reject = 30;\nadd_header = 10;\ngreylist = null;\nrewrite_subject = null;\n")
        for module in _OFF:
            (local / f"{module}.conf").write_text("enabled = false;\n")
        if self.clamd_address:
            host_port = self.clamd_address.removeprefix("tcp:")
            (local / "antivirus.conf").write_text(
                f'clamav {{\n  type = "clamav";\n  servers = "{host_port}";\n'
                '  action = "reject";\n  symbol = "CLAM_VIRUS";\n  scan_mime_parts = false;\n'
                '  log_clean = false;\n}\n')
        # our SPF/DKIM/DMARC results arrive as request headers (postroom_dmarc.content.rspamd)
        (local / "http_headers.conf").write_text("enabled = true;\n")
        (self.dir / "junk-subjects.map").write_text(f"/{JUNK_SUBJECT}/i\n")
        (local / "multimap.conf").write_text(
            'POSTROOM_TEST_JUNK {\n  type = "header";\n  header = "Subject";\n'
            f'  regexp = true;\n  map = "{self.dir}/junk-subjects.map";\n  score = 12.0;\n}}\n')

    def start(self, timeout: float = 180.0) -> None:
        self.redis.start()
        self._write_config()
        log = self.dir / "log" / "stdout.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-f", "-u", "root", "-g", "root", "-c", "/etc/rspamd/rspamd.conf",
                 "--var", f"LOCAL_CONFDIR={self.dir}", "--var", f"DBDIR={self.dir}/db",
                 "--var", f"RUNDIR={self.dir}/run", "--var", f"LOGDIR={self.dir}/log",
                 "-p", f"{self.dir}/run/rspamd.pid"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait(self._answers, "rspamd", self.proc, self.dir / "log" / "rspamd.log", timeout)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=2) as r:
                if r.status != 200:
                    return False
            self.stat()
            return True
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def stat(self) -> dict[str, Any]:
        """The controller's /stat (scanned, learned, actions...)."""
        request = urllib.request.Request(self.controller_url + "/stat",
                                         headers={"Password": RSPAMD_PASSWORD})
        with urllib.request.urlopen(request, timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
        return data

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None
        self.redis.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ClamdServer:
    """clamd on 127.0.0.1 with the test signatures: ``address`` is ``tcp:127.0.0.1:PORT``."""

    def __init__(self, max_stream: str = "10M") -> None:
        binary = shutil.which("clamd") or ("/usr/sbin/clamd" if os.path.exists("/usr/sbin/clamd")
                                           else None)
        if binary is None:
            pytest.fail("clamd is not installed (scripts/ensure-services.sh installs "
                        "clamav-daemon)", pytrace=False)
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="postroom-clamd-"))
        self.port = free_port()
        self.address = f"tcp:127.0.0.1:{self.port}"
        self.max_stream = max_stream
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        db = self.dir / "db"
        db.mkdir(parents=True, exist_ok=True)
        (db / "postroom-test.ndb").write_text(
            f"Postroom.Test.EICAR:0:*:{EICAR.hex()}\n"
            f"Postroom.Test.ZipPattern:0:*:{ZIP_PATTERN.hex()}\n")
        user = "root" if os.geteuid() == 0 else None
        conf = self.dir / "clamd.conf"
        conf.write_text("\n".join([
            f"TCPSocket {self.port}", "TCPAddr 127.0.0.1", f"DatabaseDirectory {db}",
            "Foreground yes", f"LogFile {self.dir}/clamd.log", f"PidFile {self.dir}/clamd.pid",
            f"StreamMaxLength {self.max_stream}", "Bytecode no",
            *([f"User {user}"] if user else []),
        ]) + "\n")
        log = self.dir / "stdout.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait(self._pongs, "clamd", self.proc, log, timeout)

    def _pongs(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"zPING\0")
                return sock.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def zip_with_pattern() -> bytes:
    """A zip whose one member holds ZIP_PATTERN (deflated: invisible without unpacking)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("docs/readme.txt", b"hello " * 200 + ZIP_PATTERN + b" bye" * 200)
    return buffer.getvalue()


def message_with_attachment(data: bytes, filename: str, content_type: str,
                            subject: str = "attachment") -> bytes:
    """A multipart message carrying ``data`` as a base64 attachment."""
    import base64

    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (f"From: <sender@client.example>\r\nTo: <rcpt@example.test>\r\n"
            f"Subject: {subject}\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            f'--b1\r\nContent-Type: {content_type}; name="{filename}"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="{filename}"\r\n\r\n').encode() \
        + encoded + b"--b1--\r\n"


@pytest.fixture(scope="session")
def rspamd_server() -> Iterator[RspamdServer]:
    """One rspamd for the session (it takes seconds to start)."""
    server = RspamdServer()
    try:
        server.start()
    except RuntimeError as exc:
        server.stop()
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def clamd_server() -> Iterator[ClamdServer]:
    """One clamd for the session, with the test signatures."""
    server = ClamdServer()
    try:
        server.start()
    except RuntimeError as exc:
        server.close()
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.close()
