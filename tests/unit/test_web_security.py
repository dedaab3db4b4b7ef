"""The web service's pure request checks: local paths, cross-site requests, proxies, cookies."""

from __future__ import annotations

import ipaddress

import pytest

from postroom_web import security
from postroom_web.auth import bearer_token

PROXY = (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil",
                                    "javascript:alert(1)", "", None, "domains",
                                    "/\x00x", "/ x"])
def test_a_next_that_is_not_a_local_path_becomes_the_overview(target: str | None) -> None:
    assert security.local_path(target) == "/"


def test_a_local_path_with_a_query_is_kept() -> None:
    assert security.local_path("/domains?offset=50") == "/domains?offset=50"


@pytest.mark.parametrize("headers", [
    {"origin": "https://evil.example"}, {"origin": "null"},
    {"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"},
    {"origin": "http://mail.example.org:8000.evil"},
])
def test_cross_site_requests_are_recognised(headers: dict[str, str]) -> None:
    assert security.cross_site(headers, "mail.example.org:8000")


@pytest.mark.parametrize("headers", [
    {}, {"origin": "http://mail.example.org:8000"}, {"sec-fetch-site": "same-origin"},
    {"sec-fetch-site": "none"}, {"origin": "https://MAIL.example.org:8000"},
])
def test_same_origin_requests_pass(headers: dict[str, str]) -> None:
    assert not security.cross_site(headers, "mail.example.org:8000")


def test_forwarded_for_is_believed_only_from_a_trusted_proxy() -> None:
    assert security.client_address("192.0.2.7", "198.51.100.1", PROXY) == "192.0.2.7"
    assert security.client_address("10.1.1.1", "198.51.100.1", PROXY) == "198.51.100.1"
    # a client's own X-Forwarded-For is ignored: the rightmost untrusted hop counts
    assert security.client_address("10.1.1.1", "203.0.113.9, 198.51.100.1, 10.2.2.2",
                                   PROXY) == "198.51.100.1"
    assert security.client_address("10.1.1.1", "not-an-address", PROXY) == "10.1.1.1"


def test_forwarded_proto_is_believed_only_from_a_trusted_proxy() -> None:
    assert security.forwarded_secure("10.1.1.1", "https", PROXY)
    assert not security.forwarded_secure("192.0.2.7", "https", PROXY)
    assert not security.forwarded_secure("10.1.1.1", "http", PROXY)


def test_the_session_cookie_is_http_only_strict_and_secure_when_asked() -> None:
    plain = security.cookie_header("postroom_session", "abc", secure=False, max_age=60)
    assert plain == b"postroom_session=abc; Path=/; HttpOnly; SameSite=Strict; Max-Age=60"
    assert security.cookie_header("s", "v", secure=True).endswith(b"; Secure")


def test_csrf_tokens_compare_exactly() -> None:
    assert security.tokens_equal("abc", "abc")
    assert not security.tokens_equal("abd", "abc")
    assert not security.tokens_equal(None, "abc")
    assert not security.tokens_equal("", "")


def test_the_bearer_scheme_is_read_case_insensitively() -> None:
    assert bearer_token("Bearer prt_x") == "prt_x"
    assert bearer_token("bearer  prt_x ") == "prt_x"
    assert bearer_token("Basic eDp5") == ""
    assert bearer_token(None) is None


def test_only_the_trusted_proxies_are_trusted() -> None:
    assert security.trusted("10.9.8.7", PROXY)
    assert not security.trusted("192.0.2.1", PROXY)
    assert not security.trusted("not an address", PROXY)
