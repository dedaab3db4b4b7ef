"""The TLS policy a smarthost route gets: required and verified, implicit for `tls`, the login."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from postroom.logs import get_logger
from postroom.net.nexthop import Route, parse_nexthop
from postroom.net.tls import make_self_signed
from postroom_mta.smarthost import (
    SmarthostError,
    SmarthostOptions,
    Smarthosts,
    read_password,
)
from postroom_mta.smtpclient import OPPORTUNISTIC, Credentials, UnverifiedCreator

HOP = parse_nexthop("[smtp.relay.test]:587")


class Immediate:
    """A reactor whose thread hop runs the function at once (these functions only read a file)."""

    def __init__(self) -> None:
        self.clock = task.Clock()

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, *args, **kwargs):
        return self.clock.callLater(*args, **kwargs)

    def callFromThread(self, fn, *args, **kwargs):
        fn(*args, **kwargs)


class InlinePool(ThreadPool):
    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        try:
            onResult(True, func(*args, **kw))
        except Exception as exc:  # handed to the Deferred, as the real pool does
            onResult(False, Failure(exc))


def smarthosts(options: SmarthostOptions) -> Smarthosts:
    return Smarthosts(None, options, pool=InlinePool(), reactor=Immediate(),  # type: ignore[arg-type]
                      log=get_logger("test"))


def policy(hosts: Smarthosts, route: Route):
    """The policy, synchronously: nothing here really waits."""
    results: list = []
    defer.ensureDeferred(hosts.policy(route)).addBoth(results.append)
    [result] = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


@pytest.fixture
def password(tmp_path: Path) -> Path:
    path = tmp_path / "pw"
    path.write_text("open sesame\nignored second line\n")
    return path


def test_starttls_route_requires_verified_tls_and_carries_the_login(password):
    hosts = smarthosts(SmarthostOptions())
    tls = policy(hosts, Route(HOP, "starttls", "me@one.test", str(password)))
    assert tls.required and not tls.implicit
    assert tls.creator is not UnverifiedCreator
    assert tls.auth == Credentials("me@one.test", "open sesame")


def test_tls_route_is_implicit():
    tls = policy(smarthosts(SmarthostOptions()), Route(HOP, "tls"))
    assert tls.required and tls.implicit and tls.auth is None


def test_none_route_is_opportunistic():
    assert policy(smarthosts(SmarthostOptions()), Route(HOP, "none")) is OPPORTUNISTIC


def test_verification_off_accepts_any_certificate():
    tls = policy(smarthosts(SmarthostOptions(verify=False)), Route(HOP, "starttls"))
    assert tls.required and tls.creator is UnverifiedCreator


def test_a_private_ca_file_is_used(tmp_path):
    make_self_signed(tmp_path / "ca.pem", tmp_path / "ca.key", "ca.test")
    hosts = smarthosts(SmarthostOptions(ca_file=str(tmp_path / "ca.pem")))
    assert policy(hosts, Route(HOP)).creator is not UnverifiedCreator


def test_equal_routes_get_equal_policies_so_sessions_are_reused(password):
    hosts = smarthosts(SmarthostOptions())
    route = Route(HOP, "starttls", "me@one.test", str(password))
    assert policy(hosts, route) == policy(hosts, route)
    other = Route(HOP, "starttls", "you@one.test", str(password))
    assert policy(hosts, route) != policy(hosts, other)


def test_an_unreadable_password_defers(tmp_path):
    with pytest.raises(SmarthostError) as caught:
        read_password(str(tmp_path / "missing"))
    assert caught.value.reply.code == 451
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(SmarthostError, match="empty"):
        read_password(str(empty))
