"""The supervisor restarts children that die, gives up on ones that die at start, stops them all.

The supervisor runs in its own process (it owns a reactor) with children that
are small Python scripts, so these tests see real PIDs, signals and exits.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from postroom.ops.supervisor import bind_host
from tests.support.procs import base_env

DRIVER = """
import os, sys
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from postroom.ops.supervisor import Supervisor
child, max_failures = sys.argv[1], int(sys.argv[2])
sup = Supervisor(reactor, {"flaky": [sys.executable, "-c", child, *sys.argv[3:]]},
                 {"flaky": dict(os.environ)}, grace=3, min_uptime=2,
                 max_start_failures=max_failures, backoff_initial=0.05, backoff_max=0.2,
                 on_all_given_up=reactor.stop)
reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(sup.stop()))
reactor.callWhenRunning(sup.start)
reactor.run()
print("restarts", sup.restarts["flaky"], "given_up", sorted(sup.given_up), flush=True)
"""

# dies twice at once, then stays up printing its pid until SIGTERM
FLAKY_CHILD = """
import os, sys, time
counter = sys.argv[1]
runs = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
open(counter, "w").write(str(runs))
if runs < 3:
    print("dying", runs, flush=True)
    sys.exit(1)
print("ready pid", os.getpid(), flush=True)
while True:
    time.sleep(1)
"""


def _driver(tmp_path: Path, child: str, max_failures: int, *args: str) -> subprocess.Popen:
    out = open(tmp_path / "out.log", "wb")
    return subprocess.Popen([sys.executable, "-c", DRIVER, child, str(max_failures), *args],
                            env=base_env(), stdout=out, stderr=subprocess.STDOUT)


def _wait_for(path: Path, pattern: str, timeout: float = 20) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, path.read_text())
        if match:
            return match
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not seen; output:\n{path.read_text()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_child_that_dies_is_restarted_with_prefixed_output(tmp_path):
    driver = _driver(tmp_path, FLAKY_CHILD, 5, str(tmp_path / "runs"))
    try:
        match = _wait_for(tmp_path / "out.log", r"flaky \| ready pid (\d+)")
        assert "flaky | dying 1" in (tmp_path / "out.log").read_text()
        assert (tmp_path / "runs").read_text() == "3"
    finally:
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(15) == 0
    assert "restarts 2 given_up []" in (tmp_path / "out.log").read_text()
    assert not _alive(int(match.group(1)))


def test_a_child_that_keeps_dying_at_start_is_given_up(tmp_path):
    driver = _driver(tmp_path, "import sys; print('bad config'); sys.exit(2)", 3)
    assert driver.wait(20) == 0
    output = (tmp_path / "out.log").read_text()
    assert "*** gave up: exited 3 times" in output
    assert "given_up ['flaky']" in output


def test_sigterm_stops_a_child_that_ignores_it_with_sigkill(tmp_path):
    stubborn = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready pid', os.getpid(), flush=True)\nwhile True: time.sleep(1)")
    driver = _driver(tmp_path, stubborn, 5)
    match = _wait_for(tmp_path / "out.log", r"flaky \| ready pid (\d+)")
    started = time.monotonic()
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(15) == 0
    assert time.monotonic() - started >= 2.5  # waited out the grace first
    assert not _alive(int(match.group(1)))


def test_host_option_binds_endpoints_without_an_interface():
    assert bind_host(["tcp:25", "tcp:587:interface=0.0.0.0", "unix:/run/x"], "127.0.0.2") == [
        "tcp:25:interface=127.0.0.2", "tcp:587:interface=0.0.0.0", "unix:/run/x"]
