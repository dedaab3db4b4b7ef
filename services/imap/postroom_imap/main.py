"""The imap service's declaration for `postroom serve imap`."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from postroom.runtime import ServiceContext
from postroom.service import ServiceSpec
from postroom_imap.service import start_listening


def start(ctx: ServiceContext) -> Deferred[Any]:
    return Deferred.fromCoroutine(start_listening(ctx))


SERVICE = ServiceSpec(
    name="imap",
    description="IMAP4rev1 (RFC 3501) with IDLE, UIDPLUS, MOVE, CONDSTORE and more, over the "
                "mailbox store; STARTTLS and implicit TLS",
    start=start,
    needs_tls=True,
    listen_settings=("imap_listen", "imap_tls_listen"),
)
