"""Run the operator CLI (`postroom ...`) in a test, in this process or as a real process.

A process start costs a second or more (Python, SQLAlchemy, the settings module); a test that
runs fifteen commands spends most of its time starting interpreters. ``run_in_process`` calls
the real entry point (``postroom.ops.cli.main``) with argv, an environment built exactly as the
process runner builds it (the test's environment without ``POSTROOM_*``, plus ``env``), ``stdin``
as a pipe-like stream, and stdout/stderr captured; it returns the same CompletedProcess a
process run returns, with the exit code from ``main``'s return value or its SystemExit.

The CLI keeps no state between commands: settings are read from the environment on each call
and every command disposes of the Database (and check_schema's engine) it opens, so nothing
leaks into the next command. Keep ``run_as_process`` for tests whose subject is the process
itself: exit status, real stdin/stdout/stderr, the interpreter start.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Mapping

import pytest

ARGV0 = "postroom"


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    environ.update(env or {})
    return environ


def run_as_process(*args: str, env: Mapping[str, str] | None = None, stdin: str | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m postroom.ops.cli ARGS`` in a new process."""
    return subprocess.run([sys.executable, "-m", "postroom.ops.cli", *args], input=stdin,
                          capture_output=True, text=True, env=_environment(env), timeout=timeout)


def _stream() -> io.TextIOWrapper:
    # a text stream with a .buffer, like a real sys.stdout (key commands write bytes to it)
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)


def _text(stream: io.TextIOWrapper) -> str:
    stream.flush()
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue().decode("utf-8")


def run_in_process(*args: str, env: Mapping[str, str] | None = None,
                   stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``postroom ARGS`` through ``postroom.ops.cli.main`` in this process."""
    from postroom.ops.cli import main

    environ = _environment(env)
    stdout, stderr = _stream(), _stream()
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k not in environ]:
            mp.delenv(name)
        for name, value in environ.items():
            if os.environ.get(name) != value:
                mp.setenv(name, value)
        mp.setattr(sys, "stdin", io.StringIO(stdin or ""))
        mp.setattr(sys, "argv", [ARGV0, *args])
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    code = main(list(args))
                except SystemExit as exc:
                    if exc.code is None:
                        code = 0
                    elif isinstance(exc.code, int):
                        code = exc.code
                    else:  # sys.exit("message"): the message goes to stderr, status 1
                        print(exc.code, file=sys.stderr)
                        code = 1
            return subprocess.CompletedProcess([ARGV0, *args], code, _text(stdout),
                                               _text(stderr))
        finally:
            stdout.close()
            stderr.close()
