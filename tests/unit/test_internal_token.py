"""POSTROOM_INTERNAL_TOKEN: the bearer check, loopback detection, the setting and its warning."""

from __future__ import annotations

import io
import json

import pytest
from twisted.web.test.requesthelper import DummyRequest

from postroom import logs
from postroom.config import load_settings
from postroom.health import MetricsResource
from postroom.internalauth import authorization_header, is_loopback, token_ok, warn_if_exposed
from postroom.metrics import Metrics

TOKEN = "s3cret-token-value"


@pytest.fixture
def log_lines(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(logs._sink, "stream", stream)
    monkeypatch.setattr(logs._sink, "threshold", logs.LEVELS["info"])
    return lambda: [json.loads(line) for line in stream.getvalue().splitlines()]


def metrics_request(header: bytes | None) -> DummyRequest:
    request = DummyRequest([b"metrics"])
    request.path = b"/metrics"
    if header is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [header])
    return request


def test_the_right_bearer_token_is_accepted():
    assert token_ok(authorization_header(TOKEN), TOKEN)


def test_the_bearer_scheme_is_case_insensitive():
    assert token_ok(b"bearer " + TOKEN.encode(), TOKEN)


@pytest.mark.parametrize("header", [
    None, b"", b"Bearer", b"Bearer wrong", b"Basic " + TOKEN.encode(),
    b"Bearer " + TOKEN.encode() + b"x", TOKEN.encode()])
def test_a_missing_or_wrong_token_is_refused(header):
    assert not token_ok(header, TOKEN)


@pytest.mark.parametrize("endpoint", [
    "tcp:8025:interface=127.0.0.1", "tcp:0:interface=127.0.0.53", "tcp6:8080:interface=\\:\\:1",
    "tcp:8080:interface=localhost", "unix:/run/postroom/dmarc.sock",
    "haproxy:tcp:8080:interface=127.0.0.1"])
def test_loopback_and_unix_endpoints_are_not_exposed(endpoint):
    assert is_loopback(endpoint)


@pytest.mark.parametrize("endpoint", [
    "tcp:8025", "tcp:8025:interface=0.0.0.0", "tcp:8080:interface=192.0.2.1",
    "tcp6:8080:interface=\\:\\:", "systemd:domain=INET:index=0"])
def test_wildcard_and_public_endpoints_are_exposed(endpoint):
    assert not is_loopback(endpoint)


def test_an_exposed_endpoint_without_token_logs_one_warning(log_lines):
    assert warn_if_exposed("/v1/check", ["tcp:8025", "tcp:8026"], None)
    [event] = log_lines()
    assert (event["level"], event["event"]) == ("warning", "internal endpoint unauthenticated")
    assert event["endpoint"] == "/v1/check"
    assert event["listeners"] == ["tcp:8025", "tcp:8026"]


def test_an_exposed_endpoint_with_a_token_logs_nothing(log_lines):
    assert not warn_if_exposed("/metrics", ["tcp:8080"], TOKEN)
    assert log_lines() == []


def test_a_loopback_endpoint_without_token_logs_nothing(log_lines):
    assert not warn_if_exposed("/metrics", ["tcp:8080:interface=127.0.0.1"], None)
    assert log_lines() == []


def test_the_token_setting_defaults_to_none():
    assert load_settings({}).internal_token is None


def test_the_token_can_come_from_a_file(tmp_path):
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    settings = load_settings({"POSTROOM_INTERNAL_TOKEN_FILE": str(secret)})
    assert settings.internal_token == TOKEN


def test_metrics_without_the_token_answer_401_with_a_bearer_challenge(log_lines):
    request = metrics_request(None)
    body = MetricsResource(Metrics("test", process_metrics=False), TOKEN).render_GET(request)
    assert request.responseCode == 401
    assert request.responseHeaders.getRawHeaders(b"www-authenticate") == [b"Bearer"]
    assert b"# HELP" not in body


def test_a_refused_token_is_never_logged(log_lines):
    request = metrics_request(b"Bearer not-" + TOKEN.encode())
    MetricsResource(Metrics("test", process_metrics=False), TOKEN).render_GET(request)
    [event] = log_lines()
    assert event["event"] == "internal request unauthorized"
    assert event["credentials"] == "wrong"
    assert TOKEN not in json.dumps(event)


def test_metrics_with_the_token_answer_the_registry():
    request = metrics_request(authorization_header(TOKEN))
    body = MetricsResource(Metrics("test", process_metrics=False), TOKEN).render_GET(request)
    assert request.responseCode in (None, 200)  # DummyRequest leaves the default unset
    assert b"target_info" in body
