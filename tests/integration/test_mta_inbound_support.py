"""Helpers for the inbound MTA tests: the port-25 listener run in the test reactor, SMTP clients.

The listener is started by the real ``start_inbound(ctx)`` on a ServiceContext
over the session's database, so the tests exercise the production wiring
(settings, thread pools, Enqueuer, dmarc client, PROXY listener) on real
sockets, with the real dmarc service as a separate process.
"""

from __future__ import annotations

import functools
import smtplib
import socket
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred

from postroom.auth.passwords import hash_password
from postroom.config import load_settings
from postroom.mailauth import dkimsign
from postroom.runtime import ServiceContext
from postroom.store import domains, spool, users
from postroom_mta.inbound import start_inbound
from tests.support.redisdb import in_reactor

HOSTNAME = "mx.receiver.test"
SENDER_DOMAIN = "example.com"
PRIVATE, PUBLIC_TXT = dkimsign.generate_keys("ed25519-sha256")


def dmarc_env(dns_env: Mapping[str, str], port: int, database_url: str,
              redis_url: str) -> dict[str, str]:
    """Environment of the dmarc service process the tests ask (it stores verdicts; no reports)."""
    return {**dns_env, "POSTROOM_DNS_TIMEOUT": "1s", "POSTROOM_HOSTNAME": HOSTNAME,
            "POSTROOM_DMARC_LISTEN": f"tcp:{port}:interface=127.0.0.1",
            "POSTROOM_DATABASE_URL": database_url, "POSTROOM_REDIS_URL": redis_url,
            "POSTROOM_DMARC_REPORTS": "false"}


def make_message(subject: str = "hello", *, sign: bool = True, extra: bytes = b"") -> bytes:
    body = (b"From: Alice <alice@example.com>\r\nTo: bob@receiver.test\r\n"
            b"Subject: " + subject.encode() + b"\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n"
            b"Message-ID: <" + subject.encode() + b"@example.com>\r\n" + extra
            + b"\r\nHello Bob.\r\n")
    if not sign:
        return body
    return dkimsign.sign(body, SENDER_DOMAIN, "sel", PRIVATE, "ed25519-sha256") + body


def publish_sender(dns_server: Any, *, spf_ip: str = "127.0.0.1", policy: str = "reject",
                   dkim: bool = True) -> None:
    """SPF, DKIM key and DMARC policy of the remote sending domain."""
    dns_server.set_records(SENDER_DOMAIN, "TXT", [f"v=spf1 ip4:{spf_ip} -all"])
    dns_server.set_records(f"_dmarc.{SENDER_DOMAIN}", "TXT", [f"v=DMARC1; p={policy}"])
    if dkim:
        dns_server.set_records(f"sel._domainkey.{SENDER_DOMAIN}", "TXT", [PUBLIC_TXT])


def add_accounts(database: Any) -> None:
    database.run_sync(domains.add_domain, "receiver.test")
    cheap = functools.partial(hash_password, ln=4)
    database.run_sync(users.add_user, "bob@receiver.test", "a long password 1", hash_fn=cheap)


class InboundServer:
    """``start_inbound`` on a ServiceContext in the test reactor; ``port`` (and ``proxy_port``)."""

    def __init__(self, database: Any, env: Mapping[str, str]) -> None:
        self.database = database
        self.settings = load_settings({"POSTROOM_HOSTNAME": HOSTNAME,
                                       "POSTROOM_MTA_LISTEN": "tcp:0:interface=127.0.0.1", **env})
        self.ctx: Any = None
        self.policy: Any = None

    def start(self) -> InboundServer:
        from twisted.internet import reactor

        def boot() -> Deferred[Any]:
            self.ctx = ServiceContext("mta", self.settings, reactor, database=self.database)
            return Deferred.fromCoroutine(start_inbound(self.ctx))

        self.policy = in_reactor(boot)
        return self

    def _port(self, index: int) -> int:
        return int(self.ctx.listeners[index][1].getHost().port)

    @property
    def port(self) -> int:
        return self._port(0)

    @property
    def proxy_port(self) -> int:
        return self._port(1)

    def stop(self) -> None:
        if self.ctx is None:
            return
        # the session's database outlives this listener: keep shutdown from stopping it
        self.ctx.database = None
        in_reactor(lambda: Deferred.fromCoroutine(self.ctx.shutdown()), timeout=30)
        self.ctx = None

    def spooled(self) -> list[spool.SpoolInfo]:
        summaries = self.database.run_sync(spool.list_spool)
        return [self.database.run_sync(spool.get_spool, s.queue_id) for s in summaries]

    def blob(self, queue_id: str) -> bytes:
        from sqlalchemy import select

        from postroom.store.models import Message, SpoolMessage

        def read(session: Any) -> bytes:
            return bytes(session.execute(
                select(Message.blob).join(SpoolMessage, SpoolMessage.message_id == Message.id)
                .where(SpoolMessage.queue_id == queue_id)).scalar_one())

        return self.database.run_sync(read)


def send(port: int, message: bytes, *, rcpts: tuple[str, ...] = ("bob@receiver.test",),
         sender: str = "alice@example.com", helo: str = "mail.example.com",
         sock: socket.socket | None = None) -> tuple[list[tuple[int, bytes]], tuple[int, bytes]]:
    """One transaction: (RCPT replies, DATA reply); DATA is (0, b"") when no RCPT passed."""
    client = smtplib.SMTP(timeout=20)
    if sock is None:
        client.connect("127.0.0.1", port)
    else:
        client.sock = sock
        client.file = None
        code, text = client.getreply()
        assert code == 220, (code, text)
    try:
        client.ehlo(helo)
        client.mail(sender)
        replies = [client.rcpt(r) for r in rcpts]
        data: tuple[int, bytes] = (0, b"")
        if any(code == 250 for code, _ in replies):
            data = client.data(message)
        client.quit()
    finally:
        client.close()
    return replies, data


def queue_id_of(reply: tuple[int, bytes]) -> str:
    text = reply[1].decode()
    assert "queued as " in text, text
    return text.rsplit("queued as ", 1)[1].strip()


def test_messages_are_signed_by_the_sender_domain():
    assert make_message().startswith(b"DKIM-Signature:")
