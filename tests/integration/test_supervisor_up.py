"""`postroom up` end to end: private servers, certificate, migrations, demo, children."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.procs import base_env

# the real services may not be installed in every checkout; run the runtime's test service
DRIVER = """
import argparse, sys
import postroom.ops.supervisor as supervisor
supervisor.serve_argv = lambda name: [
    sys.executable, "-c",
    "import sys; from postroom.runtime import run_service; sys.exit(run_service(sys.argv[1]))",
    name]
sys.exit(supervisor.main(argparse.Namespace(
    only=["tests.integration.test_runtime_service:ECHO"], demo=True, host="127.0.0.1",
    json=True)))
"""


@pytest.mark.slow
def test_up_runs_private_infra_and_a_service_then_stops_everything():
    var = Path(tempfile.mkdtemp(prefix="postroom-up-"))
    var.chmod(0o755)  # PostgreSQL runs as an unprivileged user when we are root
    env = base_env({
        "POSTROOM_VAR_DIR": str(var / "var"), "POSTROOM_HOSTNAME": "up.test",
        "POSTROOM_MSA_LISTEN": "tcp:0:interface=127.0.0.1",
        "POSTROOM_MSA_TLS_LISTEN": "tcp:0:interface=127.0.0.1",
    })
    log = var / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while '"event":"service started"' not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert re.search(r"demo account: demo@example\.test  password: \S+", text)
        health = re.search(r"health (http://127\.0\.0\.1:\d+/healthz)", text)
        assert health is not None
        with urllib.request.urlopen(health.group(1), timeout=5) as response:
            assert response.status == 200
        assert (var / "var" / "tls" / "cert.pem").exists()
        # the demo's DKIM keys are encrypted with a key made for it (docs/security.md)
        assert (var / "var" / "secret.key").stat().st_mode & 0o777 == 0o600
        # and it forwards off its domains with SRS, from a key file made for it
        assert (var / "var" / "srs.keys").stat().st_mode & 0o777 == 0o600
        pids = [int(p) for p in re.findall(r'"event":"private \w+ started".*?"pid":(\d+)', text)]
        assert len(pids) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        output = log.read_text()
        shutil.rmtree(var, ignore_errors=True)
    assert code == 0, output
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


REPLICAS_DRIVER = """
import sys
import postroom.ops.supervisor as supervisor
from postroom.ops.cli import build_parser
supervisor.serve_argv = lambda name: [
    sys.executable, "-c",
    "import sys; from postroom.runtime import run_service; sys.exit(run_service(sys.argv[1]))",
    name]
args = build_parser().parse_args(sys.argv[1:])
sys.exit(supervisor.main(args))
"""


@pytest.mark.slow
def test_up_replicas_runs_a_service_as_a_parent_of_workers_and_ctrl_c_leaves_nothing():
    var = Path(tempfile.mkdtemp(prefix="postroom-up-"))
    var.chmod(0o755)
    service = "tests.integration.test_runtime_service:ECHO"
    env = base_env({
        "POSTROOM_VAR_DIR": str(var / "var"), "POSTROOM_HOSTNAME": "up.test",
        "POSTROOM_MSA_LISTEN": f"tcp:{free_port()}:interface=127.0.0.1",
        "POSTROOM_MSA_TLS_LISTEN": f"tcp:{free_port()}:interface=127.0.0.1",
        "POSTROOM_SHUTDOWN_GRACE": "5s",
    })
    log = var / "out.log"
    with open(log, "wb") as out:
        # a terminal's foreground process group of its own: Ctrl-C reaches every process in it
        proc = subprocess.Popen([sys.executable, "-c", REPLICAS_DRIVER, "up", "--only", service,
                                 "--replicas", f"{service}=2", "--json"],
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while '"component":"processes","processes":2' not in log.read_text() \
                or '"event":"service started","component":"processes"' not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert f"postroom up: starting {service} x2" in text
        assert re.search(r"health http://127\.0\.0\.1:\d+/healthz   \(2 processes\)", text)
        health = re.search(r"health (http://127\.0\.0\.1:\d+/healthz)", text)
        assert health is not None
        with urllib.request.urlopen(health.group(1), timeout=5) as response:
            assert response.status == 200
            body = json.loads(response.read())
        workers = [p["pid"] for p in body["processes"]]
        assert len(set(workers)) == 2
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        code = proc.wait(90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        output = log.read_text()
        shutil.rmtree(var, ignore_errors=True)
    assert code == 0, output
    with pytest.raises(ProcessLookupError):  # nothing at all left in the process group
        os.killpg(proc.pid, 0)
