"""The runtime runs a real service process: health, metrics, clean SIGTERM, start-up errors.

ECHO and the other specs below are tiny services the runtime tests (and the TLS
reload tests) run in a subprocess as ``tests.integration.test_runtime_service:ECHO``.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
from typing import Any

from twisted.internet import task
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from postroom.net.tls import make_self_signed, negotiated
from postroom.runtime import ServiceContext
from postroom.service import ServiceSpec
from tests.support.ports import free_port

# The service processes import this module to find ECHO: keep its imports light (no pytest,
# no store), or every process start pays for them.
MODULE = "tests.integration.test_runtime_service"


def runtime_argv(name: str) -> list[str]:
    from tests.support.procs import runtime_argv as argv
    return argv(name)


class Echo(LineReceiver):
    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        if line.strip() == b"pid":
            self.sendLine(str(os.getpid()).encode())
        elif line.strip() == b"frozen":
            import gc
            self.sendLine(str(gc.get_freeze_count()).encode())
        elif line.strip() == b"tls":
            info = negotiated(self.transport)
            self.sendLine(info.received_clause().encode() if info else b"no tls")
        else:
            self.sendLine(line)


def _start_echo(ctx: ServiceContext) -> Any:
    fail_file = os.environ.get("ECHO_FAIL_FILE")
    if fail_file:
        ctx.add_health_check("fail file absent", lambda: not os.path.exists(fail_file),
                             blocking=True)
    ctx.metrics.counter("echo_lines", "Lines echoed.")

    def stop_hook() -> Any:
        return task.deferLater(ctx.reactor, 0.1, ctx.log.info, "echo stop hook ran")

    ctx.on_stop(stop_hook)

    async def listen() -> None:
        factory = Factory.forProtocol(Echo)
        await ctx.listen_all(ctx.settings.msa_listen, factory)
        await ctx.listen_all(ctx.settings.msa_tls_listen, factory, implicit_tls=True)

    from twisted.internet.defer import Deferred
    return Deferred.fromCoroutine(listen())


ECHO = ServiceSpec(name="echo", description="line echo for runtime tests", start=_start_echo,
                   needs_database=False, needs_redis=False, needs_tls=True,
                   listen_settings=("msa_listen", "msa_tls_listen"))

NEEDS_DB = ServiceSpec(name="needsdb", description="requires the database",
                       start=lambda ctx: None, needs_database=True, needs_redis=False)


def echo_env(tmp_path: Any, **extra: str) -> tuple[dict[str, str], int, int]:
    """Environment for ECHO with a fresh self-signed certificate; returns (env, plain, tls)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    if not cert.exists():
        make_self_signed(cert, key, "echo.test")
    plain, tls = free_port(), free_port()
    env = {
        "POSTROOM_TLS_CERT_FILE": str(cert), "POSTROOM_TLS_KEY_FILE": str(key),
        "POSTROOM_MSA_LISTEN": f"tcp:{plain}:interface=127.0.0.1",
        "POSTROOM_MSA_TLS_LISTEN": f"tcp:{tls}:interface=127.0.0.1",
        "POSTROOM_HOSTNAME": "echo.test", "POSTROOM_SHUTDOWN_GRACE": "5s",
        **extra,
    }
    return env, plain, tls


def _echo_line(port: int, line: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(line + b"\n")
        return sock.makefile("rb").readline().rstrip(b"\n")


def test_service_answers_healthz_200_with_every_check(service_process, tmp_path):
    env, _plain, _tls = echo_env(tmp_path)
    proc = service_process(f"{MODULE}:ECHO", env, argv=runtime_argv(f"{MODULE}:ECHO"))
    status, body = proc.healthz()
    assert status == 200
    assert body["status"] == "ok"
    assert body["checks"]["service started"]["ok"] is True
    assert all(entry["ok"] for entry in body["checks"].values())
    assert any(name.startswith("listener tcp:") for name in body["checks"])


def test_started_service_keeps_its_startup_heap_out_of_collections(service_process, tmp_path):
    # gc.freeze() once started: full collections no longer walk the start-up objects
    env, plain, _tls = echo_env(tmp_path)
    proc = service_process(f"{MODULE}:ECHO", env, argv=runtime_argv(f"{MODULE}:ECHO"))
    assert proc.healthz()[0] == 200
    assert int(_echo_line(plain, b"frozen")) > 10_000


def test_healthz_is_503_naming_the_failing_check(service_process, tmp_path):
    fail_file = tmp_path / "fail"
    env, _plain, _tls = echo_env(tmp_path, ECHO_FAIL_FILE=str(fail_file))
    proc = service_process(f"{MODULE}:ECHO", env, argv=runtime_argv(f"{MODULE}:ECHO"))
    fail_file.write_text("x")
    status, body = proc.healthz()
    assert status == 503
    assert body["status"] == "failing"
    assert body["checks"]["fail file absent"]["ok"] is False
    fail_file.unlink()
    assert proc.healthz()[0] == 200


def test_metrics_endpoint_serves_prometheus_text(service_process, tmp_path):
    env, _plain, _tls = echo_env(tmp_path)
    proc = service_process(f"{MODULE}:ECHO", env, argv=runtime_argv(f"{MODULE}:ECHO"))
    status, body = proc.get("/metrics")
    assert status == 200
    assert b"# TYPE postroom_echo_lines_total counter" in body
    assert b'target_info{service="echo"}' in body


def test_service_serves_plain_and_implicit_tls_listeners(service_process, tmp_path):
    env, plain, tls = echo_env(tmp_path)
    service_process(f"{MODULE}:ECHO", env, argv=runtime_argv(f"{MODULE}:ECHO"))
    assert _echo_line(plain, b"hello") == b"hello"
    assert _echo_line(plain, b"tls") == b"no tls"
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", tls), timeout=5) as raw, \
            client.wrap_socket(raw, server_hostname="echo.test") as sock:
        sock.sendall(b"tls\n")
        reply = sock.makefile("rb").readline().decode()
        expected = f"(using {sock.version()} with cipher {sock.cipher()[0]}"
    assert reply.startswith(expected)


def test_sigterm_runs_stop_hooks_and_exits_zero(service_process, tmp_path):
    env, plain, _tls = echo_env(tmp_path)
    proc = service_process(f"{MODULE}:ECHO", env, argv=runtime_argv(f"{MODULE}:ECHO"))
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(20) == 0
    events = [e["event"] for e in proc.log_events()]
    assert "echo stop hook ran" in events
    assert events[-1] == "service stopped"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", plain)) != 0  # no longer listening


def test_missing_database_url_is_one_line_and_exit_2(service_process):
    proc = service_process(f"{MODULE}:NEEDS_DB", {}, argv=runtime_argv(f"{MODULE}:NEEDS_DB"),
                           start=False)
    assert proc.wait_exit(20) == 2
    lines = proc.output.strip().splitlines()
    assert len(lines) == 1, proc.output
    assert "POSTROOM_DATABASE_URL" in lines[0]
    assert "Traceback" not in proc.output


def test_schema_behind_the_code_refuses_to_start(service_process):
    from tests.support.db import create_test_database, drop_test_database

    url = create_test_database()
    try:
        proc = service_process(f"{MODULE}:NEEDS_DB", {"POSTROOM_DATABASE_URL": url},
                               argv=runtime_argv(f"{MODULE}:NEEDS_DB"), start=False)
        assert proc.wait_exit(30) == 2
        failure = [e for e in proc.log_events() if e["event"] == "service failed to start"]
        assert len(failure) == 1
        assert "postroom db upgrade" in failure[0]["reason"]
        assert "traceback" not in failure[0]
    finally:
        drop_test_database(url)


def test_port_in_use_is_a_startup_error(service_process, tmp_path):
    env, plain, _tls = echo_env(tmp_path)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", plain))
        blocker.listen()
        proc = service_process(f"{MODULE}:ECHO", env, argv=runtime_argv(f"{MODULE}:ECHO"),
                               start=False)
        assert proc.wait_exit(20) == 2
    failure = [e for e in proc.log_events() if e["event"] == "service failed to start"]
    assert "cannot listen on" in failure[0]["reason"]
    assert "Traceback" not in proc.output


def test_reuse_port_lets_two_replicas_share_one_port(service_process, tmp_path):
    # POSTROOM_REUSE_PORT: the second replica binds the same port (no "address in use") and the
    # kernel spreads connections over both
    env, plain, _tls = echo_env(tmp_path, POSTROOM_REUSE_PORT="true")
    first = service_process(f"{MODULE}:ECHO", env, argv=runtime_argv(f"{MODULE}:ECHO"))
    second = service_process(f"{MODULE}:ECHO", env, argv=runtime_argv(f"{MODULE}:ECHO"))
    assert first.healthz()[0] == 200 and second.healthz()[0] == 200
    pids = {_echo_line(plain, b"pid") for _ in range(60)}
    assert len(pids) == 2, pids
    assert _echo_line(plain, b"hello") == b"hello"
