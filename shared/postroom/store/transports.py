"""Smarthost routes per recipient domain: the one owner of the SQL on ``relay_transports``.

An entry maps a domain (``example.com``) or its subdomains (``.example.com``)
to a next hop in Postfix syntax (``[smtp.example.net]:587``), a TLS mode and an
optional SASL login whose password is referenced (a file path, or the name of
a secret under /run/secrets), never stored. The operator's CLI writes
(`postroom relay`); the mta reads (:func:`routes_for`) and decides with
:func:`postroom.net.nexthop.choose_route`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from postroom.net.nexthop import (
    STARTTLS,
    Route,
    normalise_key,
    parse_nexthop,
    parse_tls_mode,
    transport_keys,
)
from postroom.store.errors import InvalidRoute, NotFound
from postroom.store.models import relay_transports as t

# a secret's name (Docker/Kubernetes: /run/secrets/<name>); anything else must be an absolute path
_SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
SECRETS_DIR = "/run/secrets"


@dataclass(frozen=True)
class TransportEntry:
    """One row, as the CLI lists it (the password only by reference)."""

    domain: str
    nexthop: str
    tls: str
    username: str | None
    password_ref: str | None
    created_at: datetime


def password_path(ref: str) -> str:
    """The file a password reference names: a path as is, a secret name in /run/secrets."""
    return ref if ref.startswith("/") else f"{SECRETS_DIR}/{ref}"


def _check_ref(ref: str) -> str:
    ref = ref.strip()
    if ref.startswith("/") and len(ref) < 4096 and "\n" not in ref:
        return ref
    if _SECRET_NAME.fullmatch(ref):
        return ref
    raise InvalidRoute("the password reference must be an absolute file path or a secret name "
                       "(a file in /run/secrets), never the password itself")


def _route(domain: str, nexthop: str, tls: str, username: str | None,
           password_ref: str | None) -> Route:
    """The checked Route of an entry; raises InvalidRoute with what is wrong."""
    try:
        return Route(parse_nexthop(nexthop), parse_tls_mode(tls), username,
                     password_ref, source=f"transport:{domain}")
    except ValueError as exc:
        raise InvalidRoute(str(exc)) from None


def set_transport(session: Session, domain: str, nexthop: str, *, tls: str = STARTTLS,
                  username: str | None = None, password_ref: str | None = None) -> TransportEntry:
    """Add or replace the route for ``domain`` (``.domain``: its subdomains)."""
    try:
        key = normalise_key(domain)
    except ValueError as exc:
        raise InvalidRoute(str(exc)) from None
    if password_ref is not None:
        password_ref = _check_ref(password_ref)
    route = _route(key, nexthop, tls, username or None, password_ref)
    values = {"nexthop": str(route.nexthop), "tls": route.tls, "username": route.username,
              "password_ref": route.password_ref}
    stmt = pg_insert(t).values(domain=key, **values)
    stmt = stmt.on_conflict_do_update(index_elements=[t.c.domain], set_=values)
    session.execute(stmt)
    row = session.execute(select(t).where(t.c.domain == key)).one()
    return TransportEntry(**row._asdict())


def remove_transport(session: Session, domain: str) -> None:
    """Remove ``domain``'s entry; NotFound when there is none."""
    try:
        key = normalise_key(domain)
    except ValueError as exc:
        raise InvalidRoute(str(exc)) from None
    if int(getattr(session.execute(delete(t).where(t.c.domain == key)), "rowcount", 0)) == 0:
        raise NotFound(f"no relay transport for {key}")


def list_transports(session: Session) -> list[TransportEntry]:
    """Every entry, by domain."""
    rows = session.execute(select(t).order_by(t.c.domain)).all()
    return [TransportEntry(**row._asdict()) for row in rows]


def routes_for(session: Session, domains: Iterable[str]) -> dict[str, Route]:
    """The entries that could apply to ``domains`` (exact and parent keys), as Routes by key.

    One indexed statement for all of a message's domains. An entry that no longer
    parses (written by hand) is left out: such a domain is then routed as if it had none.
    """
    keys = sorted({key for domain in domains for key in transport_keys(domain)})
    if not keys:
        return {}
    routes: dict[str, Route] = {}
    for row in session.execute(select(t).where(t.c.domain.in_(keys))).all():
        try:
            routes[row.domain] = _route(row.domain, row.nexthop, row.tls, row.username,
                                        row.password_ref)
        except InvalidRoute:
            continue
    return routes
