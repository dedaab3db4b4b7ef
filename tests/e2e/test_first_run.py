"""The README's first run: `make run` (`postroom up --demo`) from a fresh clone, as a newcomer does.

As root (development containers, CI), the private PostgreSQL runs as an
unprivileged user that cannot enter a 0700 directory such as root's home or a
fresh mkdtemp() (issue 16: "user postgres cannot enter ...; set
POSTROOM_VAR_DIR"). The clone here lives in such a directory, POSTROOM_VAR_DIR
is not set, and the test goes on to what a newcomer does next: send the demo
user a message over SMTP, read it over IMAP, press Ctrl-C (SIGINT to the whole
foreground process group, as a terminal sends it) and expect a clean stop:
nothing left running, no error or traceback anywhere, no per-run directory left.
"""

from __future__ import annotations

import imaplib
import json
import os
import re
import secrets
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.procs import REPO_ROOT, base_env
from tests.support.web import WebClient

pytestmark = pytest.mark.slow

SERVICES = ("dmarc", "imap", "managesieve", "mda", "msa", "mta", "pop3", "web")
COPY_IGNORE = shutil.ignore_patterns(".venv", "var", ".git", "__pycache__", "*.pyc",
                                     ".mypy_cache", ".ruff_cache", ".pytest_cache")


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # `up` made a self-signed certificate
    return context


def _loopback_listeners() -> tuple[dict[str, str], dict[str, int]]:
    """Every listener on a free loopback port (tests never bind 0.0.0.0 or well-known ports)."""
    ports = {name: free_port() for name in ("msa", "msa_tls", "mta", "dmarc", "pop3",
                                            "pop3_tls", "imap", "imap_tls", "web", "managesieve")}
    env = {f"POSTROOM_{name.upper()}_LISTEN": f"tcp:{port}:interface=127.0.0.1"
           for name, port in ports.items()}
    env["POSTROOM_DMARC_URL"] = f"http://127.0.0.1:{ports['dmarc']}"
    return env, ports


def problems(output: str) -> list[str]:
    """Lines a clean run and stop must not have: tracebacks and error-level events."""
    found = []
    for line in output.splitlines():
        if "Traceback" in line or "ReactorNotRunning" in line:
            found.append(line)
            continue
        text = line.split(" | ", 1)[1] if " | " in line else line  # a child's line, for people
        if re.match(r"\d\d:\d\d:\d\d (error|critical) ", text):
            found.append(line)
            continue
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "critical"):
            found.append(line)
    return found


def _events(output: str, event: str) -> list[dict]:
    records = []
    for line in output.splitlines():
        if line.startswith("{") and f'"event":"{event}"' in line:
            records.append(json.loads(line))
    return records


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes (its parent has exited or will reap it)
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _wait_for(log: Path, proc: subprocess.Popen, pattern: str, count: int = 1,
              timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")
        if len(re.findall(pattern, text)) >= count:
            return text
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"`postroom up --demo` never showed {pattern!r} x{count} "
                        f"(exit {proc.poll()}):\n{text}", pytrace=False)
        time.sleep(0.2)


def _wait_healthy(log: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    text = log.read_text(errors="replace")
    urls = dict(re.findall(r"^  (\w+) .*health (http://127\.0\.0\.1:\d+/healthz)", text, re.M))
    assert sorted(urls) == sorted(SERVICES), text
    deadline = time.monotonic() + timeout
    for name, url in urls.items():
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{name} never healthy at {url}:\n{log.read_text()}", pytrace=False)
            time.sleep(0.2)


def _send_and_read(ports: dict[str, int], password: str, subject: str) -> bytes:
    message = EmailMessage()
    message["From"] = message["To"] = "demo@example.test"
    message["Subject"] = subject
    message.set_content("Hello from the first run.\n")
    with smtplib.SMTP("127.0.0.1", ports["msa"], timeout=30) as smtp:
        smtp.starttls(context=_unverified())
        smtp.login("demo@example.test", password)
        smtp.send_message(message)
    deadline = time.monotonic() + 60
    with imaplib.IMAP4_SSL("127.0.0.1", ports["imap_tls"], ssl_context=_unverified(),
                           timeout=30) as imap:
        imap.login("demo@example.test", password)
        while True:
            imap.select("INBOX")
            _, found = imap.search(None, "SUBJECT", f'"{subject}"')
            if found[0]:
                _, data = imap.fetch(found[0].split()[0], "(RFC822)")
                return bytes(data[0][1])  # type: ignore[index]
            assert time.monotonic() < deadline, "the message never reached the INBOX"
            time.sleep(0.5)


def test_make_run_from_a_fresh_clone_in_a_0700_directory_serves_mail_and_stops_cleanly():
    home = Path(tempfile.mkdtemp(prefix="postroom-firstrun-"))  # 0700, like /root
    assert home.stat().st_mode & 0o777 == 0o700
    clone = home / "postroom"
    shutil.copytree(REPO_ROOT, clone, ignore=COPY_IGNORE, symlinks=True)
    listen, ports = _loopback_listeners()
    env = base_env({**listen, "POSTROOM_HOSTNAME": "firstrun.test"})
    assert not any(k == "POSTROOM_VAR_DIR" for k in env)
    log = home / "up.log"
    with open(log, "wb") as out:
        # `make run` runs `.venv/bin/postroom up --demo` from the checkout, in the terminal's
        # foreground process group; here a group of its own that stands for the terminal
        proc = subprocess.Popen([sys.executable, "-m", "postroom.ops.cli", "up", "--demo"],
                                cwd=clone, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    pids: list[int] = []
    fallback: Path | None = None
    try:
        text = _wait_for(log, proc, r"service started", count=len(SERVICES))
        # a front door runs one process per core under a parent (each worker says "service
        # started" too): wait until every service's health port, the parent's, answers 200
        _wait_healthy(log, proc)
        password = re.search(r"demo account: demo@example\.test  password: (\S+)", text)
        assert password is not None, text
        pids = _started_pids(text)
        assert len(pids) == len(SERVICES) + 2, text
        if os.geteuid() == 0:  # only root has to move the cluster out of the checkout
            moved = _events(text, "private postgresql runs in a per-run directory")
            assert len(moved) == 1, text
            fallback = Path(moved[0]["path"])
            assert fallback.is_dir() and not str(fallback).startswith(str(home))
            assert fallback.stat().st_mode & 0o777 == 0o700
            assert fallback.stat().st_uid != 0  # the database's own unprivileged user

        subject = f"first run {secrets.token_hex(4)}"
        body = _send_and_read(ports, password.group(1), subject)
        assert subject.encode() in body and b"Hello from the first run." in body
        # the demo account administers the web console
        console = WebClient("127.0.0.1", ports["web"])
        assert console.login("demo@example.test", password.group(1)).status == 303
        overview = console.get("/")
        assert overview.status == 200 and "demo@example.test (admin)" in overview.text

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        code = proc.wait(90)
        output = log.read_text(errors="replace")
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in pids if _alive(pid)]
        group_left = _group_alive(proc.pid)
        fallback_left = fallback is not None and fallback.exists()
    finally:
        _clean_up(proc, log, home)
    assert code == 0, output
    assert not problems(output), "\n".join(problems(output)) + "\n\n" + output
    assert left == [], output
    assert not group_left, output  # nothing at all left in the process group
    assert not fallback_left, output
    if fallback is not None:
        assert _events(output, "private postgresql directory removed")


def _started_pids(text: str) -> list[int]:
    """The services' PIDs and the private servers' (each of those in a session of its own)."""
    return [int(e["pid"]) for event in ("service process started", "private postgresql started",
                                        "private redis started") for e in _events(text, event)]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _is_ours(pid: int, marks: list[str]) -> bool:
    """Still a process of this run (its directory or arguments name our paths), not a PID the
    kernel has since handed to someone else."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return any(cwd.startswith(mark) or mark in argv for mark in marks)


def _clean_up(proc: subprocess.Popen, log: Path, home: Path) -> None:
    """Whatever happened above, leave nothing running: `up` stops its own servers when asked."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = log.read_text(errors="replace") if log.exists() else ""
    fallbacks = [e["path"] for e in _events(text, "private postgresql runs in a per-run directory")]
    for pid in _started_pids(text):  # only if `up` itself could not stop them
        if _alive(pid) and _is_ours(pid, [str(home), *fallbacks]):
            os.kill(pid, signal.SIGKILL)
    for path in fallbacks:
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)


def test_problems_finds_tracebacks_and_error_lines_in_both_renderings():
    assert problems("imap  | 03:06:30 error   while calling from thread")
    assert problems('{"level":"error","event":"cannot start"}')
    assert problems("twisted.internet.error.ReactorNotRunning: Can't stop reactor")
    assert not problems("imap  | 03:06:30 info    service started  http=127.0.0.1:1")
    assert not problems("msa   | 03:06:30 warning internal endpoint unauthenticated")
