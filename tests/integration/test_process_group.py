"""`postroom serve NAME --processes N`: a parent, N real workers on one port, one health port.

Real processes throughout (PostgreSQL, Redis, the mta); no timing is asserted: each wait
polls for a state with a generous deadline and fails with the output if it never comes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from postroom.net.tls import make_self_signed
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, cli_argv, listener_env

pytestmark = pytest.mark.slow  # each test starts the mta group (~20 s on a loaded machine)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("certs")
    make_self_signed(path / "cert.pem", path / "key.pem", "localhost")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:  # a zombie is gone for our purposes (its parent reaps it)
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _until(predicate: Any, what: str, proc: ServiceProcess, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"{what} never happened; output:\n{proc.output[-6000:]}", pytrace=False)


def _workers(proc: ServiceProcess) -> dict[int, int]:
    """{process number: pid} from the parent's /healthz."""
    status, body = proc.healthz()
    assert status == 200, body
    assert body is not None
    return {p["process"]: p["pid"] for p in body["processes"]}


def _smtp_hello(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"221")


def _connections_by_process(proc: ServiceProcess) -> dict[str, float]:
    status, text = proc.get("/metrics")
    assert status == 200
    found: dict[str, float] = {}
    for line in text.decode().splitlines():
        match = re.match(r'postroom_connections_total\{(.*)\} (\S+)$', line)
        if match:
            process = re.search(r'process="(\d+)"', match.group(1))
            assert process is not None, line
            found[process.group(1)] = found.get(process.group(1), 0.0) + float(match.group(2))
    return found


@pytest.fixture
def mta_group(database_url: str, redis_url: str, redis_prefix: str, certs: Path):
    port = free_port()
    env = listener_env(database_url, redis_url, redis_prefix, certs, mta_listen=port)
    env["POSTROOM_SHUTDOWN_GRACE"] = "5s"
    proc = ServiceProcess("mta", env, argv=[*cli_argv("mta"), "--processes", "2"])
    proc.start(timeout=120)
    yield proc, port
    proc.close()


def test_two_mta_workers_share_one_port_and_the_parent_answers_for_both(mta_group):
    proc, port = mta_group
    workers = _workers(proc)
    assert sorted(workers) == [1, 2]
    assert len(set(workers.values())) == 2
    assert all(_parent_of(pid) == proc.pid for pid in workers.values())

    # the kernel spreads connections by the client's port: clients reach both workers
    def both_served() -> bool:
        for _ in range(10):
            _smtp_hello(port)
        counts = _connections_by_process(proc)
        return counts.get("1", 0) > 0 and counts.get("2", 0) > 0
    _until(both_served, "connections reaching both workers", proc)

    # a killed worker is replaced; its number keeps its place
    os.kill(workers[1], signal.SIGKILL)
    replaced = _until(lambda: proc.healthz()[0] == 200 and _workers(proc)[1] != workers[1]
                      and _workers(proc), "a new worker 1", proc)
    assert replaced[2] == workers[2]
    _status, body = proc.healthz()
    assert body is not None and {p["process"]: p["restarts"] for p in body["processes"]} == {
        1: 1, 2: 0}
    _smtp_hello(port)

    # SIGHUP (reload the certificate) goes on to each worker; the parent stays
    before = proc.output.count('"event":"tls certificate reloaded"')
    proc.signal(signal.SIGHUP)
    _until(lambda: proc.output.count('"event":"tls certificate reloaded"') >= before + 2,
           "both workers reloading their certificate", proc)
    assert proc.proc is not None and proc.proc.poll() is None
    assert _workers(proc) == replaced

    # SIGTERM: every worker drains and exits, then the parent, with nothing left
    assert proc.stop(timeout=60) == 0
    assert not any(_alive(pid) for pid in (*replaced.values(), workers[1]))
    assert '"event":"service stopped","component":"processes","exit_code":0' in proc.output


def test_workers_die_with_a_parent_killed_outright(mta_group):
    proc, _port = mta_group
    workers = _workers(proc)
    proc.signal(signal.SIGKILL)
    proc.wait_exit()
    _until(lambda: not any(_alive(pid) for pid in workers.values()),
           "the workers' exit after their parent's SIGKILL", proc)


def test_a_worker_that_cannot_start_stops_the_group_with_exit_2(tmp_path):
    # the msa needs a certificate: every worker fails at start, as one process would
    env = {"POSTROOM_MSA_LISTEN": f"tcp:{free_port()}:interface=127.0.0.1",
           "POSTROOM_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
           "POSTROOM_REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = ServiceProcess("msa", env, argv=[*cli_argv("msa"), "--processes", "2"])
    try:
        proc.spawn()
        assert proc.wait_exit(120) == 2
        assert "POSTROOM_TLS_CERT_FILE" in proc.output
        pids = [int(p) for p in re.findall(r'"event":"service process started".*?"pid":(\d+)',
                                           proc.output)]
        assert pids
        assert not any(_alive(pid) for pid in pids)
    finally:
        proc.close()
