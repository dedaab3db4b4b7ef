"""Port 25 and our SRS addresses: a valid one goes back to the original sender through the
relay, a forged or expired one is refused at RCPT (docs/relay.md, "Forwarding: SRS and ARC")."""

from __future__ import annotations

import time

import pytest

from postroom.mailauth import srs
from tests.integration.test_mta_inbound_support import (
    InboundServer,
    add_accounts,
    dmarc_env,
    make_message,
    publish_sender,
    send,
)
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess

LOCAL_DOMAIN = "receiver.test"
DAY = 86400.0


@pytest.fixture(scope="module")
def dmarc_url(dns_server_session, database_url, redis_url):
    port = free_port()
    with ServiceProcess("dmarc", dmarc_env(dns_server_session.env, port, database_url,
                                           redis_url)):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "srs.keys"
    srs.write_key_file(str(path))
    return path


@pytest.fixture
def mx(database, clean_db, database_url, redis_url, redis_prefix, dns_server, dmarc_url,
       key_file, twisted_reactor):
    add_accounts(database)
    env = {"POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
           "POSTROOM_REDIS_PREFIX": redis_prefix, "POSTROOM_DMARC_URL": dmarc_url,
           "POSTROOM_SRS_KEY_FILE": str(key_file), **dns_server.env}
    server = InboundServer(database, env).start()
    yield server
    server.stop()


def rewriter(key_file) -> srs.SRS:
    return srs.SRS(srs.load_keys(str(key_file)))


def test_a_valid_srs_recipient_is_queued_for_the_original_sender_on_outbound(
        mx, dns_server, key_file, queue_client):
    publish_sender(dns_server)
    address = rewriter(key_file).forward("carol@elsewhere.test", LOCAL_DOMAIN)
    rcpts, data = send(mx.port, make_message("srs"), rcpts=("bob@receiver.test", address))
    assert [code for code, _ in rcpts] == [250, 250] and data[0] == 250
    [info] = mx.spooled()
    assert sorted((r.address, r.stream) for r in info.recipients) == [
        ("bob@receiver.test", "deliver"), ("carol@elsewhere.test", "outbound")]
    streams = {name: queue_client.redis.xrange(queue_client.stream_key(name))
               for name in ("deliver", "outbound")}
    assert len(streams["deliver"]) == 1 and len(streams["outbound"]) == 1


@pytest.mark.parametrize("why", ["forged", "expired", "other key"])
def test_an_invalid_srs_recipient_is_refused_with_550(mx, dns_server, key_file, why):
    publish_sender(dns_server)
    if why == "forged":
        address = rewriter(key_file).forward("carol@elsewhere.test", LOCAL_DOMAIN)
        address = address.replace("carol", "mallory")
    elif why == "expired":
        address = rewriter(key_file).forward("carol@elsewhere.test", LOCAL_DOMAIN,
                                             now=time.time() - 30 * DAY)
    else:
        address = srs.SRS((b"not ours",)).forward("carol@elsewhere.test", LOCAL_DOMAIN)
    rcpts, data = send(mx.port, make_message("bad srs"), rcpts=(address,))
    [(code, text)] = rcpts
    assert code == 550 and b"SRS" in text
    assert data == (0, b"") and mx.spooled() == []
