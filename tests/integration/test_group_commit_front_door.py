"""The port-25 front door over its group commit: a database that fails at the spool commit
is a 451 for the message (nothing queued), never a 250 (real sockets, dmarc process)."""

from __future__ import annotations

from postroom.store.db import Database
from tests.integration.test_mta_inbound import (  # noqa: F401 - the fixtures
    accounts,
    deliver_entries,
    dmarc_url,
    env,
    mx,
)
from tests.integration.test_mta_inbound_support import make_message, publish_sender, send
from tests.support.ports import free_port


def test_database_gone_at_the_spool_commit_is_451_and_nothing_is_queued(
        mx, dns_server, queue_client):  # noqa: F811 - mx is the imported fixture
    publish_sender(dns_server)
    dead = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/postroom", pool_size=1)
    dead.start()
    spooler = mx.policy.spooler
    live, spooler.database = spooler.database, dead  # RCPT still finds the recipient
    try:
        rcpts, data = send(mx.port, make_message("no database"))
    finally:
        spooler.database = live
        dead.stop()
    assert [code for code, _ in rcpts] == [250]
    assert (data[0], data[1][:5]) == (451, b"4.3.0")
    assert mx.spooled() == []
    assert deliver_entries(queue_client) == []
