"""The managesieve service's declaration for `postroom serve managesieve`."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from postroom.runtime import ServiceContext
from postroom.service import ServiceSpec
from postroom_managesieve.service import start_listening


def start(ctx: ServiceContext) -> Deferred[Any]:
    return Deferred.fromCoroutine(start_listening(ctx))


SERVICE = ServiceSpec(
    name="managesieve",
    description="ManageSieve (RFC 5804) with STARTTLS: upload, check and activate Sieve scripts",
    start=start,
    needs_tls=True,
    listen_settings=("managesieve_listen",),
)
