"""The web service's declaration for `postroom serve web`."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from postroom.runtime import ServiceContext
from postroom.service import ServiceSpec
from postroom_web.service import start_listening


def start(ctx: ServiceContext) -> Deferred[Any]:
    return Deferred.fromCoroutine(start_listening(ctx))


SERVICE = ServiceSpec(
    name="web",
    description="The web console and REST API (/api/v1, OpenAPI at /api/v1/openapi.json)",
    start=start,
    listen_settings=("web_listen", "web_tls_listen"),
)
