"""One canonical login name: what login resolves, the limiter and the login cache count on."""

from __future__ import annotations

import pytest

from postroom.auth.authcache import AuthCache
from postroom.auth.sasl import NeedSecrets, ScramSha256Mechanism
from postroom.store.addresses import MAX_LOGIN_NAME_CHARS, login_name

SPELLINGS = [
    "alice@example.com",
    "ALICE@example.com.",
    "<alice@example.com>",
    " alice@Example.COM\t",
    "alice@example.com....",
    "alice@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0e\uff43\uff4f\uff4d",  # full-width
    "alice@EXAMPLE.\uff43\uff4f\uff4d",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_of_an_account_has_its_canonical_name(spelling: str) -> None:
    assert login_name(spelling) == "alice@example.com"


@pytest.mark.parametrize("name", ["alice", "alice@", "@example.com", "alice@@example.com",
                                  "al ice@example.com", "alice@exa_mple.com", ""])
def test_a_name_no_account_can_have_is_none(name: str) -> None:
    assert login_name(name) is None


def test_an_over_long_name_is_none_whatever_it_ends_with() -> None:
    assert login_name("alice@example.com" + "." * 400) == "alice@example.com"
    assert login_name("alice@example.com" + "." * MAX_LOGIN_NAME_CHARS) is None


def test_a_cached_login_is_found_under_every_spelling() -> None:
    cache: AuthCache[int] = AuthCache()
    cache.put("alice@example.com", "secret", 7, ticket=cache.ticket("alice@example.com"))
    assert [cache.get(s, "secret") for s in SPELLINGS] == [7] * len(SPELLINGS)


def test_a_failure_under_another_spelling_forgets_the_cached_login() -> None:
    cache: AuthCache[int] = AuthCache()
    cache.put("alice@example.com", "secret", 7, ticket=cache.ticket("alice@example.com"))
    cache.invalidate("<ALICE@example.com.>")
    assert cache.get("alice@example.com", "secret") is None


def test_a_name_no_account_can_have_is_never_cached() -> None:
    cache: AuthCache[int] = AuthCache()
    cache.put("not an address", "secret", 7, ticket=cache.ticket("not an address"))
    assert cache.get("not an address", "secret") is None and len(cache) == 0


def _fake_salt(username: str) -> str:
    mechanism = ScramSha256Mechanism(nonce_factory=lambda: "server")
    step = mechanism.start(f"n,,n={username},r=client".encode())
    assert isinstance(step, NeedSecrets)
    challenge = mechanism.provide_secrets(None)
    return dict(part.split("=", 1) for part in challenge.data.decode().split(","))["s"]


def test_scram_gives_an_unknown_account_one_salt_under_every_spelling() -> None:
    # a real account's salt is the same under every spelling: a fake one must be too, or
    # comparing the salts of two spellings would tell whether the account exists
    assert {_fake_salt(s) for s in SPELLINGS if "," not in s} == {_fake_salt(SPELLINGS[0])}
    assert _fake_salt("bob@example.com") != _fake_salt("alice@example.com")
