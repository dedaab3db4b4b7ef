"""postroom.ops.probe on real sockets: a healthy service, a failing one, nothing listening,
one that never answers (the probe still ends in time), and the reject counters summed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from postroom.config import ConfigError, load_settings
from postroom.ops import probe

METRICS = """# HELP postroom_messages_total Messages handled, by outcome.
# TYPE postroom_messages_total counter
postroom_messages_total{outcome="inbound_accepted"} 7.0
postroom_messages_total{outcome="inbound_rejected_unknown_user"} 3.0
postroom_messages_total{outcome="rejected_message_limit"} 1.0
"""


def _server(status: int, health: bytes, token: str | None = None) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                if token and self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body, code = METRICS.encode(), 200
            else:
                body, code = health, status
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[dict[str, str]]:
    up = _server(200, b'{"status":"ok","checks":{"database":{"ok":true}}}', token="s3cret")
    failing = _server(503, b'{"status":"failing","checks":{"redis":{"ok":false}}}')
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts connections, never answers
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused = closed.getsockname()[1]
    closed.close()
    try:
        yield {"up": f"http://127.0.0.1:{up.server_address[1]}",
               "failing": f"http://127.0.0.1:{failing.server_address[1]}",
               "silent": f"http://127.0.0.1:{silent.getsockname()[1]}",
               "gone": f"http://127.0.0.1:{refused}"}
    finally:
        up.shutdown()
        failing.shutdown()
        silent.close()


def test_each_service_is_up_down_or_unknown_and_the_probe_ends_in_time(servers):
    started = time.monotonic()
    found = probe.probe_services(list(servers.items()), token="s3cret", deadline=2.0)
    assert time.monotonic() - started < 3.0
    states = {s.name: (s.state, s.failing) for s in found}
    assert states == {"up": ("up", ()), "failing": ("down", ("redis",)),
                      "silent": ("unknown", ()), "gone": ("down", ())}
    assert probe.sum_rejects(found) == {"inbound_rejected_unknown_user": 3.0,
                                        "rejected_message_limit": 1.0}


def test_without_the_internal_token_the_counters_stay_empty_and_health_is_still_known(servers):
    (state,) = probe.probe_services([("up", servers["up"])])
    assert state.state == "up" and state.rejects == {}


def test_the_services_setting_takes_name_url_pairs_and_refuses_anything_else():
    settings = load_settings({"POSTROOM_WEB_SERVICES": "mta=http://mta:8080, MSA=http://msa:8080/"})
    assert settings.web_services == (("mta", "http://mta:8080"), ("msa", "http://msa:8080"))
    for bad in ("mta", "mta=file:///etc/passwd", "a b=http://x:1"):
        with pytest.raises(ConfigError):
            load_settings({"POSTROOM_WEB_SERVICES": bad})
