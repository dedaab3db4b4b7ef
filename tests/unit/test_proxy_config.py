"""PROXY protocol listeners in the settings: the ``proxy:`` prefix and POSTROOM_PROXY_TRUSTED."""

from __future__ import annotations

import pytest

from postroom.config import ConfigError, load_settings, split_proxy

MAIL_LISTEN = ("POSTROOM_MTA_LISTEN", "POSTROOM_MSA_LISTEN", "POSTROOM_MSA_TLS_LISTEN",
               "POSTROOM_POP3_LISTEN", "POSTROOM_POP3_TLS_LISTEN", "POSTROOM_IMAP_LISTEN",
               "POSTROOM_IMAP_TLS_LISTEN")


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("proxy:tcp:10025", ("tcp:10025", True)),
    ("haproxy:tcp:10025:interface=10.0.0.5", ("tcp:10025:interface=10.0.0.5", True)),
    ("tcp:25", ("tcp:25", False)),
    ("unix:/run/proxy.sock", ("unix:/run/proxy.sock", False)),
])
def test_split_proxy_strips_the_prefix(endpoint, expected):
    assert split_proxy(endpoint) == expected


@pytest.mark.parametrize("variable", MAIL_LISTEN)
@pytest.mark.parametrize("prefix", ["proxy", "haproxy"])
def test_every_mail_listener_takes_a_proxy_endpoint_with_trusted_proxies(variable, prefix):
    settings = load_settings({variable: f"tcp:1,{prefix}:tcp:10001",
                              "POSTROOM_PROXY_TRUSTED": "172.30.25.0/24"})
    attr = variable.removeprefix("POSTROOM_").lower()
    assert getattr(settings, attr) == ("tcp:1", f"{prefix}:tcp:10001")
    assert settings.proxy_trusted == ("172.30.25.0/24",)


@pytest.mark.parametrize("variable", MAIL_LISTEN)
def test_a_proxy_listener_without_trusted_proxies_stops_start_up(variable):
    with pytest.raises(ConfigError, match=r"^POSTROOM_PROXY_TRUSTED: required by .*tcp:10001"):
        load_settings({variable: "proxy:tcp:10001"})


def test_trusted_proxies_alone_open_no_proxy_listener():
    settings = load_settings({"POSTROOM_PROXY_TRUSTED": "10.0.0.1"})
    assert not any(split_proxy(e)[1] for e in settings.mta_listen + settings.imap_listen)


@pytest.mark.parametrize("variable", ["POSTROOM_DMARC_LISTEN", "POSTROOM_HTTP_LISTEN"])
@pytest.mark.parametrize("prefix", ["proxy", "haproxy"])
def test_internal_listeners_refuse_a_proxy_endpoint(variable, prefix):
    with pytest.raises(ConfigError, match=f"^{variable}=.*only for the mta, msa, pop3 and imap"):
        load_settings({variable: f"{prefix}:tcp:8080", "POSTROOM_PROXY_TRUSTED": "10.0.0.1"})


@pytest.mark.parametrize("endpoint", ["proxy:proxy:tcp:1", "proxy:", "proxy:ssl:1", "proxy:1"])
def test_a_proxy_prefix_must_wrap_a_plain_endpoint(endpoint):
    with pytest.raises(ConfigError, match=r"^POSTROOM_IMAP_LISTEN="):
        load_settings({"POSTROOM_IMAP_LISTEN": endpoint, "POSTROOM_PROXY_TRUSTED": "10.0.0.1"})


def test_the_deprecated_mta_name_still_sets_the_trusted_proxies():
    settings = load_settings({"POSTROOM_MTA_PROXY_TRUSTED": "10.0.0.0/8",
                              "POSTROOM_IMAP_LISTEN": "proxy:tcp:10143"})
    assert settings.proxy_trusted == ("10.0.0.0/8",)


def test_both_names_of_the_trusted_proxies_at_once_are_refused():
    with pytest.raises(ConfigError, match=r"^POSTROOM_MTA_PROXY_TRUSTED: deprecated"):
        load_settings({"POSTROOM_MTA_PROXY_TRUSTED": "10.0.0.1",
                       "POSTROOM_PROXY_TRUSTED": "10.0.0.2"})


def test_the_deprecated_mta_proxy_listen_needs_trusted_proxies_too():
    with pytest.raises(ConfigError, match=r"^POSTROOM_PROXY_TRUSTED: required"):
        load_settings({"POSTROOM_MTA_PROXY_LISTEN": "tcp:10025"})
