"""`postroom up` tells the web console where its siblings' /healthz and /metrics are."""

from __future__ import annotations

from postroom.config import load_settings
from postroom.ops.supervisor import service_urls


def test_every_other_child_is_listed_by_its_health_port_and_the_setting_parses():
    envs = {name: {"POSTROOM_HTTP_LISTEN": f"tcp:{port}:interface=127.0.0.1"}
            for name, port in (("mta", 41001), ("web", 41002), ("imap", 41003))}
    value = service_urls(envs)
    assert value == "imap=http://127.0.0.1:41003,mta=http://127.0.0.1:41001"
    assert load_settings({"POSTROOM_WEB_SERVICES": value}).web_services == (
        ("imap", "http://127.0.0.1:41003"), ("mta", "http://127.0.0.1:41001"))
