"""Listeners get POSTROOM_LISTEN_BACKLOG unless their endpoint names a backlog."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.protocol import ServerFactory
from twisted.internet.testing import MemoryReactorClock

from postroom.config import load_settings
from postroom.runtime import ServiceContext


def backlog_of(endpoint: str, **env: str) -> Any:
    reactor = MemoryReactorClock()
    ctx = ServiceContext("test", load_settings(env), reactor)  # type: ignore[arg-type]
    ctx.listen(endpoint, ServerFactory())
    (_port, _factory, backlog, _interface), = reactor.tcpServers
    return backlog


def test_a_listener_without_a_backlog_gets_the_setting_not_twisteds_50():
    assert backlog_of("tcp:2525:interface=127.0.0.1") == 1024
    assert backlog_of("tcp:2525", POSTROOM_LISTEN_BACKLOG="300") == 300


@pytest.mark.parametrize("endpoint", ["tcp:2525:backlog=7", "tcp:port=2525:backlog=7",
                                      "tcp6:2525:interface=\\:\\:1:backlog=7"])
def test_a_backlog_in_the_endpoint_wins(endpoint):
    assert backlog_of(endpoint) == 7
