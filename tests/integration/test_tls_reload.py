"""A running service picks up new certificate files for new connections, without a restart."""

from __future__ import annotations

import signal
import socket
import ssl
import time

from cryptography import x509

from postroom.net.tls import make_self_signed
from tests.integration.test_runtime_service import MODULE, echo_env
from tests.support.procs import runtime_argv


def _peer_certificate(port: int) -> x509.Certificate:
    """The certificate a fresh TLS connection is shown (stdlib ssl client, no verification)."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            client.wrap_socket(raw, server_hostname="localhost") as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def _start(service_process, tmp_path):
    env, _plain, tls = echo_env(tmp_path)
    proc = service_process(f"{MODULE}:ECHO", env, argv=runtime_argv(f"{MODULE}:ECHO"))
    return proc, tls


def _wait_for_name(port: int, name: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = _common_name(_peer_certificate(port))
        if seen == name:
            return seen
        time.sleep(0.2)
    return seen


def test_sighup_makes_new_connections_see_the_new_certificate(service_process, tmp_path):
    proc, port = _start(service_process, tmp_path)
    assert _common_name(_peer_certificate(port)) == "echo.test"
    make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "renewed.test")
    proc.signal(signal.SIGHUP)
    assert _wait_for_name(port, "renewed.test", timeout=5) == "renewed.test"


def test_changed_files_are_picked_up_without_a_signal(service_process, tmp_path):
    _proc, port = _start(service_process, tmp_path)
    make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "watched.test")
    assert _wait_for_name(port, "watched.test", timeout=10) == "watched.test"


def test_established_connection_survives_a_reload(service_process, tmp_path):
    proc, port = _start(service_process, tmp_path)
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            client.wrap_socket(raw, server_hostname="localhost") as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"before\n")
        assert reader.readline() == b"before\n"
        make_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem", "renewed.test")
        proc.signal(signal.SIGHUP)
        assert _wait_for_name(port, "renewed.test", timeout=5) == "renewed.test"
        sock.sendall(b"after\n")
        assert reader.readline() == b"after\n"


def test_bad_new_file_keeps_the_previous_certificate(service_process, tmp_path):
    proc, port = _start(service_process, tmp_path)
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nbroken\n")
    proc.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while not any(e["event"].startswith("tls reload failed") for e in proc.log_events()):
        assert time.monotonic() < deadline, proc.output
        time.sleep(0.1)
    assert _common_name(_peer_certificate(port)) == "echo.test"
    assert proc.healthz()[0] == 200
