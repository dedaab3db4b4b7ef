"""The pop3 service's declaration for `postroom serve pop3`."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from postroom.runtime import ServiceContext
from postroom.service import ServiceSpec
from postroom_pop3.service import start_listening


def start(ctx: ServiceContext) -> Deferred[Any]:
    return Deferred.fromCoroutine(start_listening(ctx))


SERVICE = ServiceSpec(
    name="pop3",
    description="POP3 (RFC 1939) with STLS and implicit TLS over the INBOX of each account",
    start=start,
    needs_tls=True,
    listen_settings=("pop3_listen", "pop3_tls_listen"),
)
