"""The doctor's real probes never fetch a policy from an internal address."""

from __future__ import annotations

import pytest

from postroom.ops.doctor import NetProbes


def test_a_policy_host_on_an_internal_address_is_refused():
    with pytest.raises(OSError, match="internal address"):
        NetProbes(timeout=1)._public("localhost")


def test_a_closed_port_is_reported_not_raised():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    assert NetProbes(timeout=1).connect("127.0.0.1", port)
