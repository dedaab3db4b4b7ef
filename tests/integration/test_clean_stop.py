"""Ctrl-C and SIGTERM stop every `postroom serve NAME` cleanly: exit 0, no error, no traceback.

A terminal's Ctrl-C sends SIGINT to `postroom up` and to each of its children,
and the supervisor then sends each child SIGTERM: every service gets two stop
signals moments apart. The second used to call reactor.stop() on an already
stopping reactor, which logged ReactorNotRunning with a traceback (issue 16).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, cli_argv
from tests.support.suite import LISTEN_VARS, Suite, _listen

SERVICES = ("msa", "mta", "dmarc", "mda", "pop3", "imap", "managesieve", "web")

# what each service gets: one signal, the terminal's Ctrl-C then the supervisor's SIGTERM,
# and the same with no pause between them (both can be queued before the first is handled)
SEQUENCES = {
    "sigint": ((signal.SIGINT, 0.0),),
    "sigterm": ((signal.SIGTERM, 0.0),),
    "ctrl-c-then-supervisor": ((signal.SIGINT, 0.0), (signal.SIGTERM, 0.05)),
    "both-at-once": ((signal.SIGINT, 0.0), (signal.SIGTERM, 0.0), (signal.SIGINT, 0.0)),
}


@pytest.fixture(scope="module")
def suite(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    with Suite(redis_url, tmp_path_factory.mktemp("clean-stop")) as running:
        yield running


def _serve(suite: Suite, name: str) -> ServiceProcess:
    """`postroom serve NAME` exactly as compose and `postroom up` run it, on free ports."""
    listen = {var: _listen(free_port()) for var in LISTEN_VARS[name] if var}
    return ServiceProcess(name, suite.env(**listen), argv=cli_argv(name))


def _start_all(suite: Suite) -> list[ServiceProcess]:
    """Every service, healthy; one that lost its free port to someone else gets new ports."""
    processes = [_serve(suite, name).spawn() for name in SERVICES]  # all at once: imports
    for index, name in enumerate(SERVICES):
        for _attempt in range(3):
            process = processes[index]
            assert process.proc is not None
            deadline = time.monotonic() + 60
            while process.healthz(timeout=2)[0] != 200 and process.proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            if process.proc.poll() is None or "cannot listen on" not in process.output:
                break
            process.close()
            processes[index] = _serve(suite, name).spawn()
        processes[index].wait_healthy(5)
    return processes


def problems(output: str) -> list[str]:
    """Lines of a service's output that a clean stop must not have."""
    found = []
    for line in output.splitlines():
        if "Traceback" in line or "ReactorNotRunning" in line:
            found.append(line)
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (record.get("level") in ("error", "critical")
                                         or "traceback" in record):
            found.append(line)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sequence", list(SEQUENCES))
def test_every_service_stops_cleanly_on_its_stop_signals(suite: Suite, sequence: str):
    processes = _start_all(suite)
    try:
        for sig, pause in SEQUENCES[sequence]:
            time.sleep(pause)
            for process in processes:
                process.signal(sig)
        report = {}
        for process in processes:
            code = process.wait_exit(30)
            bad = problems(process.output)
            if code != 0 or bad or '"event":"service stopped"' not in process.output:
                report[process.name] = f"exit {code}:\n" + ("\n".join(bad) or process.output)
        assert not report, "\n\n".join(f"{name}: {text}" for name, text in report.items())
    finally:
        for process in processes:
            process.close()


def test_problems_finds_tracebacks_and_error_lines():
    assert problems('{"level":"error","event":"while calling from thread"}')
    assert problems("Traceback (most recent call last):")
    assert problems('{"level":"info","event":"x","traceback":"..."}')
    assert not problems('{"level":"info","event":"stop requested","reason":"SIGINT"}')
    assert not problems(Path(__file__).name)
