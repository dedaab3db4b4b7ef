"""What a service is to the runtime: a name, what it needs, and a start function.

Each service package exposes ``SERVICE = ServiceSpec(...)`` and registers it in
the ``postroom.services`` entry-point group; `postroom serve NAME` finds it
there, so this library never imports a service. The runtime
(:mod:`postroom.runtime`) builds a :class:`ServiceContext` (settings, logger,
database, Redis, TLS, metrics, health) and calls ``start(ctx)``; the service
opens its listeners or consumers through the context and registers what must
happen on SIGTERM with :meth:`ServiceContext.on_stop`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from postroom.runtime import ServiceContext

ENTRY_POINT_GROUP = "postroom.services"


@dataclass(frozen=True)
class ServiceSpec:
    """A service's declaration.

    ``start`` is called on the reactor thread once the context is ready and may
    return a Deferred; the service is healthy when it has fired and every
    health check passes.
    """

    name: str
    description: str
    start: Callable[[ServiceContext], Deferred[Any] | None]
    needs_database: bool = True
    needs_redis: bool = True
    needs_tls: bool = False
    # settings attributes that name this service's listeners, for `postroom up` output
    listen_settings: tuple[str, ...] = field(default_factory=tuple)


class UnknownService(LookupError):
    pass


def available_services() -> dict[str, Any]:
    """Entry points of every installed service, by name (not yet imported)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_service(name: str) -> ServiceSpec:
    services = available_services()
    if name not in services:
        known = ", ".join(sorted(services)) or "none installed"
        raise UnknownService(f"no service named {name!r} (known: {known})")
    spec = services[name].load()
    if not isinstance(spec, ServiceSpec):
        raise UnknownService(f"entry point {name!r} is not a ServiceSpec")
    return spec
