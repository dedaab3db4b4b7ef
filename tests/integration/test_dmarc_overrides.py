"""Per-domain DMARC overrides from POSTROOM_DMARC_OVERRIDES reach the evaluation options."""

from __future__ import annotations

import ipaddress

import pytest

from postroom.config import ConfigError, load_settings
from postroom_dmarc.main import options_from_settings
from postroom_dmarc.overrides import OverrideSyntaxError, parse_overrides


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
    with pytest.raises(OverrideSyntaxError, match="unknown option"):
        parse_overrides("example.org:reject")
