"""Per-domain DMARC overrides from POSTROOM_DMARC_OVERRIDES reach the evaluation options."""

from __future__ import annotations

import ipaddress

import pytest

from postroom.config import ConfigError, load_settings, parse_dmarc_overrides
from postroom_dmarc.main import options_from_settings


def options(**env: str):
    base = {"POSTROOM_DATABASE_URL": "postgresql://x/y", "POSTROOM_REDIS_URL": "redis://x",
            "POSTROOM_HOSTNAME": "mx.example.org"}
    return options_from_settings(load_settings({**base, **env}))


def test_monitor_and_forwarders_are_per_domain():
    found = options(POSTROOM_DMARC_OVERRIDES="example.org:monitor;"
                    "example.net:forwarder=192.0.2.0/24,forwarder=2001:db8::/32").overrides
    assert found["example.org"].monitor_only and not found["example.org"].trusted_forwarders
    assert not found["example.net"].monitor_only
    assert found["example.net"].trusted_forwarders == (
        ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))


def test_global_monitor_list_merges_with_per_domain_entries():
    found = options(POSTROOM_DMARC_MONITOR_ONLY="example.net",
                    POSTROOM_DMARC_OVERRIDES="example.net:forwarder=192.0.2.0/24").overrides
    assert found["example.net"].monitor_only and found["example.net"].trusted_forwarders


def test_bad_override_stops_start_up():
    with pytest.raises(ConfigError, match="POSTROOM_DMARC_OVERRIDES"):
        options(POSTROOM_DMARC_OVERRIDES="example.org:forwarder=not-a-net")


def test_unknown_option_is_refused():
    with pytest.raises(ValueError, match="unknown option"):
        parse_dmarc_overrides("example.org:reject")


# --- end to end through the real service's /v1/check

SPOOFED = (b"From: alice@monitored.test\r\nTo: bob@receiver.test\r\nSubject: hi\r\n"
           b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\nHello.\r\n")


@pytest.fixture(scope="module")
def overridden_dmarc(dns_server_session, database_url, redis_url):
    from tests.support.ports import free_port
    from tests.support.procs import ServiceProcess, runtime_argv

    port = free_port()
    env = {**dns_server_session.env, "POSTROOM_DNS_TIMEOUT": "1s",
           "POSTROOM_HOSTNAME": "mx.receiver.test",
           "POSTROOM_DMARC_LISTEN": f"tcp:{port}:interface=127.0.0.1",
           "POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
           "POSTROOM_DMARC_REPORTS": "false",
           "POSTROOM_DMARC_OVERRIDES": "monitored.test:monitor;"
                                       "forwarded.test:forwarder=198.51.100.0/24"}
    with ServiceProcess("dmarc", env, argv=runtime_argv("postroom_dmarc.main:SERVICE")):
        yield f"http://127.0.0.1:{port}/v1/check"


def _check(url: str, message: bytes, ip: str) -> dict:
    import base64
    import json
    import urllib.request

    body = json.dumps({"client_ip": ip, "helo": "mail.other.net", "mail_from": "b@other.net",
                       "recipients": ["bob@receiver.test"], "queue_id": "Q1",
                       "message_b64": base64.b64encode(message).decode()}).encode()
    request = urllib.request.Request(url, data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=15) as response:
        return json.loads(response.read())


@pytest.fixture
def published(dns_server):
    for domain in ("monitored.test", "forwarded.test", "strict.test"):
        dns_server.set_records(domain, "TXT", ["v=spf1 ip4:192.0.2.10 -all"])
        dns_server.set_records(f"_dmarc.{domain}", "TXT", ["v=DMARC1; p=reject"])


def test_a_monitored_domain_failing_dmarc_is_reported_but_not_rejected(
        overridden_dmarc, published):
    verdict = _check(overridden_dmarc, SPOOFED, "203.0.113.5")
    assert verdict["dmarc"]["result"] == "fail"
    assert (verdict["dmarc"]["override"], verdict["disposition"]) == ("local_policy", "inbox")


def test_a_trusted_forwarder_is_let_through_only_for_its_domain(overridden_dmarc, published):
    forwarded = SPOOFED.replace(b"monitored.test", b"forwarded.test")
    verdict = _check(overridden_dmarc, forwarded, "198.51.100.7")
    assert (verdict["dmarc"]["override"], verdict["disposition"]) == ("trusted_forwarder",
                                                                      "inbox")
    # the same network gets no pass for another domain, nor another network for this one
    strict = SPOOFED.replace(b"monitored.test", b"strict.test")
    assert _check(overridden_dmarc, strict, "198.51.100.7")["disposition"] == "reject"
    assert _check(overridden_dmarc, forwarded, "203.0.113.5")["disposition"] == "reject"
