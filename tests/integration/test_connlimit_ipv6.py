"""The per-address connection limit counts an IPv6 client by its /64, on a real listener.

The services bind to 127.0.0.0/8 in tests, so the IPv6 clients arrive through
the mta's PROXY protocol listener (the way a load balancer hands them on):
each connection is a real socket whose client address is the one in its
PROXY header.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from postroom.smtp import replies as R
from tests.integration.test_mta_inbound_support import InboundServer, add_accounts
from tests.support.ports import free_port


@pytest.fixture
def mx(database, clean_db, database_url, redis_url, redis_prefix, dns_server,
       twisted_reactor) -> Iterator[InboundServer]:
    add_accounts(database)
    server = InboundServer(database, {
        "POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
        "POSTROOM_REDIS_PREFIX": redis_prefix, **dns_server.env,
        # no message is sent: nothing asks the policy service
        "POSTROOM_DMARC_URL": f"http://127.0.0.1:{free_port()}",
        "POSTROOM_MTA_PROXY_LISTEN": "tcp:0:interface=127.0.0.1",
        "POSTROOM_MTA_PROXY_TRUSTED": "127.0.0.1/32",
        "POSTROOM_MAX_CONNECTIONS_PER_IP": "2"}).start()
    yield server
    server.stop()


def greeting(port: int, client: str, opened: list[socket.socket]) -> bytes:
    """The first reply line to a connection that a trusted proxy says comes from ``client``."""
    family = "TCP6" if ":" in client else "TCP4"
    local = "::1" if family == "TCP6" else "127.0.0.1"
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    opened.append(sock)
    sock.sendall(f"PROXY {family} {client} {local} 40000 25\r\n".encode())
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n")[0]


def test_ipv6_clients_of_one_slash_64_share_the_connection_limit(mx: InboundServer) -> None:
    opened: list[socket.socket] = []
    try:
        assert greeting(mx.proxy_port, "2001:db8:1:2::1", opened).startswith(b"220 ")
        assert greeting(mx.proxy_port, "2001:db8:1:2:ffff:ffff:ffff:fffe",
                        opened).startswith(b"220 ")
        # a third address of the same /64 is the same client, over its limit of 2
        refused = greeting(mx.proxy_port, "2001:db8:1:2:dead::3", opened)
        assert refused.startswith(f"{R.TOO_MANY_CONNECTIONS.code} ".encode()), refused
        # the next /64 is another client
        assert greeting(mx.proxy_port, "2001:db8:1:3::1", opened).startswith(b"220 ")
    finally:
        for sock in opened:
            sock.close()
