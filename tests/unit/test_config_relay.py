"""The smarthost settings: parsed and checked at start-up, the password only from a file."""

from __future__ import annotations

import pytest

from postroom.config import SPECS, ConfigError, describe_effective, load_settings
from postroom.net.nexthop import NextHop


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "relay-password"
    path.write_text("s3cret-smarthost\n")
    return str(path)


def test_no_smarthost_by_default():
    settings = load_settings({})
    assert settings.relay_host is None
    assert settings.relay_tls == "starttls"
    assert settings.relay_tls_verify is True
    assert settings.relay_auth_failure == "defer"


def test_relay_host_and_login_are_parsed(password_file):
    settings = load_settings({
        "POSTROOM_RELAY_HOST": "[smtp.example.net]:465", "POSTROOM_RELAY_TLS": "tls",
        "POSTROOM_RELAY_USER": "mailer@example.org",
        "POSTROOM_RELAY_PASSWORD_FILE": password_file})
    assert settings.relay_host == NextHop("smtp.example.net", 465, mx_lookup=False)
    assert settings.relay_tls == "tls"
    assert settings.relay_user == "mailer@example.org"
    assert settings.relay_password_file == password_file


@pytest.mark.parametrize(("env", "name"), [
    ({"POSTROOM_RELAY_HOST": "[smtp.example.net"}, "POSTROOM_RELAY_HOST"),
    ({"POSTROOM_RELAY_HOST": "smtp.example.net:99999"}, "POSTROOM_RELAY_HOST"),
    ({"POSTROOM_RELAY_HOST": "192.0.2.1:25"}, "POSTROOM_RELAY_HOST"),
    ({"POSTROOM_RELAY_TLS": "ssl"}, "POSTROOM_RELAY_TLS"),
    ({"POSTROOM_RELAY_PASSWORD_FILE": "/nonexistent/pw"}, "POSTROOM_RELAY_PASSWORD_FILE"),
    ({"POSTROOM_RELAY_TLS_CA_FILE": "/nonexistent/ca.pem"}, "POSTROOM_RELAY_TLS_CA_FILE"),
    ({"POSTROOM_RELAY_AUTH_FAILURE": "ignore"}, "POSTROOM_RELAY_AUTH_FAILURE"),
])
def test_a_bad_smarthost_value_stops_start_up_naming_it(env, name):
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert str(caught.value).startswith(name)
    assert "\n" not in str(caught.value)


def test_user_and_password_file_go_together(password_file):
    host = {"POSTROOM_RELAY_HOST": "[smtp.example.net]:587"}
    with pytest.raises(ConfigError, match="set both or neither"):
        load_settings({**host, "POSTROOM_RELAY_USER": "u"})
    with pytest.raises(ConfigError, match="set both or neither"):
        load_settings({**host, "POSTROOM_RELAY_PASSWORD_FILE": password_file})


def test_a_login_is_refused_without_tls(password_file):
    with pytest.raises(ConfigError, match="only sent under TLS"):
        load_settings({"POSTROOM_RELAY_HOST": "[smtp.example.net]:587",
                       "POSTROOM_RELAY_TLS": "none", "POSTROOM_RELAY_USER": "u",
                       "POSTROOM_RELAY_PASSWORD_FILE": password_file})


def test_a_login_needs_a_relay_host(password_file):
    with pytest.raises(ConfigError, match="POSTROOM_RELAY_HOST"):
        load_settings({"POSTROOM_RELAY_USER": "u",
                       "POSTROOM_RELAY_PASSWORD_FILE": password_file})


def test_there_is_no_password_variable():
    """The password comes from a file only: a POSTROOM_RELAY_PASSWORD is an unknown setting."""
    assert "POSTROOM_RELAY_PASSWORD" not in {spec.env for spec in SPECS}
    with pytest.raises(ConfigError, match="POSTROOM_RELAY_PASSWORD: unknown"):
        load_settings({"POSTROOM_RELAY_PASSWORD": "hunter2"})


def test_the_password_never_shows_in_the_effective_settings(password_file):
    env = {"POSTROOM_RELAY_HOST": "[smtp.example.net]:587", "POSTROOM_RELAY_USER": "u",
           "POSTROOM_RELAY_PASSWORD_FILE": password_file}
    shown = describe_effective(env)
    assert "s3cret-smarthost" not in shown


def test_a_ca_file_without_a_certificate_is_refused(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"POSTROOM_RELAY_TLS_CA_FILE.*no PEM certificate"):
        load_settings({"POSTROOM_RELAY_TLS_CA_FILE": str(bad)})
