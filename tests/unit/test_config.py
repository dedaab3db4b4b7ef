"""The configuration contract: names, defaults, parsing and one-line errors."""

from __future__ import annotations

import dataclasses

import pytest

from postroom.config import SPECS, ConfigError, Settings, describe, load_settings, require

CONTRACT = {
    "POSTROOM_DATABASE_URL", "POSTROOM_REDIS_URL", "POSTROOM_HOSTNAME",
    "POSTROOM_TLS_CERT_FILE", "POSTROOM_TLS_KEY_FILE", "POSTROOM_MTA_LISTEN",
    "POSTROOM_MSA_LISTEN", "POSTROOM_MSA_TLS_LISTEN", "POSTROOM_POP3_LISTEN",
    "POSTROOM_POP3_TLS_LISTEN", "POSTROOM_IMAP_LISTEN", "POSTROOM_IMAP_TLS_LISTEN",
    "POSTROOM_DMARC_LISTEN", "POSTROOM_DMARC_URL", "POSTROOM_HTTP_LISTEN",
    "POSTROOM_DNS_SERVERS", "POSTROOM_SMTP_OUTBOUND_PORT", "POSTROOM_LOG_LEVEL",
}


def test_every_contract_variable_exists():
    assert CONTRACT <= {spec.env for spec in SPECS}


def test_defaults_match_the_design():
    settings = load_settings({})
    assert settings.mta_listen == ("tcp:25",)
    assert settings.msa_listen == ("tcp:587", "tcp:2525")
    assert settings.msa_tls_listen == ("tcp:465",)
    assert settings.pop3_listen == ("tcp:110",)
    assert settings.pop3_tls_listen == ("tcp:995",)
    assert settings.imap_listen == ("tcp:143",)
    assert settings.imap_tls_listen == ("tcp:993",)
    assert settings.dmarc_url == "http://127.0.0.1:8025"
    assert settings.http_listen == "tcp:8080"
    assert settings.smtp_outbound_port == 25
    assert settings.log_level == "info"
    assert settings.dns_servers == ()
    assert settings.database_url is None
    assert settings.hostname


def test_settings_are_frozen():
    settings = load_settings({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.hostname = "x"  # type: ignore[misc]


def test_values_are_parsed():
    settings = load_settings({
        "POSTROOM_IMAP_LISTEN": "tcp:1143:interface=127.0.0.1, tcp:2143",
        "POSTROOM_DNS_SERVERS": "127.0.0.1:5353,[::1]:53,10.0.0.1",
        "POSTROOM_MAX_MESSAGE_SIZE": "10M",
        "POSTROOM_QUEUE_LIFETIME": "2d",
        "POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK": "yes",
    })
    assert settings.imap_listen == ("tcp:1143:interface=127.0.0.1", "tcp:2143")
    assert settings.dns_servers == (("127.0.0.1", 5353), ("::1", 53), ("10.0.0.1", 53))
    assert settings.max_message_size == 10 * 1024 * 1024
    assert settings.queue_lifetime == 2 * 86400
    assert settings.allow_plaintext_auth_on_loopback is True


def test_an_empty_listener_list_switches_it_off():
    assert load_settings({"POSTROOM_MSA_TLS_LISTEN": ""}).msa_tls_listen == ()


@pytest.mark.parametrize(("env", "name"), [
    ({"POSTROOM_LOG_LEVEL": "loud"}, "POSTROOM_LOG_LEVEL"),
    ({"POSTROOM_SMTP_OUTBOUND_PORT": "-1"}, "POSTROOM_SMTP_OUTBOUND_PORT"),
    ({"POSTROOM_MTA_LISTEN": "25"}, "POSTROOM_MTA_LISTEN"),
    ({"POSTROOM_HTTP_LISTEN": "tcp:1,tcp:2"}, "POSTROOM_HTTP_LISTEN"),
    ({"POSTROOM_DATABASE_URL": "mysql://x/y"}, "POSTROOM_DATABASE_URL"),
    ({"POSTROOM_DNS_SERVERS": "127.0.0.1:99999"}, "POSTROOM_DNS_SERVERS"),
    ({"POSTROOM_MAX_MESSAGE_SIZE": "huge"}, "POSTROOM_MAX_MESSAGE_SIZE"),
    ({"POSTROOM_RELAY_ALLOWED_NETWORKS": "10.0.0.0/33"}, "POSTROOM_RELAY_ALLOWED_NETWORKS"),
    ({"POSTROOM_IMAP_LISTNE": "tcp:143"}, "POSTROOM_IMAP_LISTNE"),
    ({"POSTROOM_DMARC_TRUSTED_FORWARDERS": "192.0.2.0/33"}, "POSTROOM_DMARC_TRUSTED_FORWARDERS"),
    ({"POSTROOM_DMARC_OVERRIDES": "example.org:reject"}, "POSTROOM_DMARC_OVERRIDES"),
    ({"POSTROOM_DMARC_OVERRIDES": "example.org:forwarder=x"}, "POSTROOM_DMARC_OVERRIDES"),
    ({"POSTROOM_DMARC_REPORT_FROM": "Reports <r@example.org>"}, "POSTROOM_DMARC_REPORT_FROM"),
    ({"POSTROOM_DMARC_REPORT_MAILBOX": "reports"}, "POSTROOM_DMARC_REPORT_MAILBOX"),
    ({"POSTROOM_DMARC_URL": "https://dmarc:8025"}, "POSTROOM_DMARC_URL"),
    ({"POSTROOM_DMARC_URL": "http://"}, "POSTROOM_DMARC_URL"),
])
def test_a_bad_value_is_one_line_naming_the_variable(env, name):
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert message.startswith(name)
    assert "\n" not in message


def test_a_secret_in_an_error_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        load_settings({"POSTROOM_DATABASE_URL": "mysql://user:hunter2@x/y"})
    assert "hunter2" not in str(info.value)


def test_secrets_can_come_from_a_file(tmp_path):
    secret = tmp_path / "db"
    secret.write_text("postgresql://postroom:s3cret@db/postroom\n")
    settings = load_settings({"POSTROOM_DATABASE_URL_FILE": str(secret)})
    assert settings.database_url == "postgresql+psycopg2://postroom:s3cret@db/postroom"


def test_an_unreadable_secret_file_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match=r"^POSTROOM_REDIS_URL_FILE"):
        load_settings({"POSTROOM_REDIS_URL_FILE": str(tmp_path / "missing")})


def test_certificate_and_key_go_together():
    with pytest.raises(ConfigError, match="set both or neither"):
        load_settings({"POSTROOM_TLS_CERT_FILE": "/x.pem"})


def test_require_names_the_missing_variable():
    with pytest.raises(ConfigError, match=r"^POSTROOM_DATABASE_URL: required"):
        require(load_settings({}), "database_url")


def test_every_setting_is_documented():
    text = describe()
    for spec in SPECS:
        assert spec.env in text
        assert spec.doc
    assert len(SPECS) == len(dataclasses.fields(Settings))


def test_the_operator_guide_table_is_generated_from_the_settings():
    from pathlib import Path

    from postroom.config import markdown

    guide = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    expected = markdown()
    assert guide.read_text() == expected, "run: postroom config --markdown > docs/configuration.md"


def test_dmarc_settings_are_parsed_into_their_types():
    import ipaddress

    from postroom.config import DmarcOverride

    settings = load_settings({
        "POSTROOM_DMARC_MONITOR_ONLY": "Example.ORG., example.net",
        "POSTROOM_DMARC_TRUSTED_FORWARDERS": "192.0.2.0/24, 2001:db8::1",
        "POSTROOM_DMARC_TRUSTED_ARC_SEALERS": "Lists.Example.com",
        "POSTROOM_DMARC_OVERRIDES": "a.example:monitor;a.example:forwarder=198.51.100.0/24",
        "POSTROOM_DMARC_REPORT_FROM": "dmarc@example.org",
    })
    assert settings.dmarc_monitor_only == ("example.org", "example.net")
    assert settings.dmarc_trusted_forwarders == (ipaddress.ip_network("192.0.2.0/24"),
                                                 ipaddress.ip_network("2001:db8::1/128"))
    assert settings.dmarc_trusted_arc_sealers == ("lists.example.com",)
    assert dict(settings.dmarc_overrides) == {"a.example": DmarcOverride(
        monitor_only=True, trusted_forwarders=(ipaddress.ip_network("198.51.100.0/24"),))}
    assert settings.dmarc_report_from == "dmarc@example.org"
    with pytest.raises(TypeError):  # frozen like the rest of the settings
        settings.dmarc_overrides["b.example"] = DmarcOverride()  # type: ignore[index]


def test_the_cli_parses_durations_with_the_settings_parser():
    from postroom.config import parse_duration

    assert parse_duration("90") == 90.0
    assert parse_duration("2h") == 7200.0
    with pytest.raises(ValueError):
        parse_duration("0s")
