"""Local domains: add, list, remove."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, delete, func, select, text
from sqlalchemy.orm import Session

from postroom.store.addresses import normalise_domain, valid_domains
from postroom.store.aliases import ensure_role_addresses
from postroom.store.common import check_page, domain_id, insert_unique, search_text
from postroom.store.errors import InUse
from postroom.store.models import Alias, Domain, User


@dataclass(frozen=True)
class DomainInfo:
    id: int
    name: str
    created_at: datetime
    users: int = 0
    aliases: int = 0


def add_domain(session: Session, name: str, *, role_target: str | None = None) -> DomainInfo:
    """Add a local domain (stored lowercase, IDNs as A-labels); AlreadyExists when present.

    With ``role_target`` (POSTROOM_ROLE_ADDRESS_TARGET), postmaster@ and abuse@ of the
    new domain become its aliases at once; without, the domain's first account gets
    them when it is added (aliases.ensure_role_addresses).
    """
    normal = normalise_domain(name)

    def insert() -> Domain:
        row = Domain(name=normal)
        session.add(row)
        session.flush()
        return row

    row = insert_unique(session, insert, f"domain {normal} already exists")
    session.refresh(row)
    if role_target:
        ensure_role_addresses(session, normal, role_target)
    return DomainInfo(id=row.id, name=row.name, created_at=row.created_at)


def list_domains(session: Session) -> list[DomainInfo]:
    """Every local domain with its number of users and aliases, by name."""
    users = select(func.count()).where(User.domain_id == Domain.id).scalar_subquery()
    aliases = select(func.count()).where(Alias.domain_id == Domain.id).scalar_subquery()
    rows = session.execute(
        select(Domain.id, Domain.name, Domain.created_at, users, aliases).order_by(Domain.name))
    return [DomainInfo(id=r[0], name=r[1], created_at=r[2], users=r[3], aliases=r[4])
            for r in rows]


def list_domains_page(session: Session, *, names: set[str] | None, offset: int, limit: int,
                      search: str | None) -> tuple[list[DomainInfo], int]:
    """One page of :func:`list_domains` and how many there are in all.

    ``names``: only these domains (a domain manager's; None: every one);
    ``search``: a substring of the name. Ordered by name (the unique index);
    the users and aliases are counted for the page's rows only.
    """
    check_page(offset, limit)
    conditions: list[ColumnElement[bool]] = []
    if names is not None:
        conditions.append(Domain.name.in_(sorted(valid_domains(names))))
    found = search_text(search)
    if found is not None:
        conditions.append(Domain.name.contains(found, autoescape=True))
    total = session.execute(
        select(func.count()).select_from(Domain).where(*conditions)).scalar_one()
    page = (select(Domain.id, Domain.name, Domain.created_at).where(*conditions)
            .order_by(Domain.name).offset(offset).limit(limit).subquery())
    users = select(func.count()).where(User.domain_id == page.c.id).scalar_subquery()
    aliases = select(func.count()).where(Alias.domain_id == page.c.id).scalar_subquery()
    rows = session.execute(select(page.c.id, page.c.name, page.c.created_at, users, aliases)
                           .order_by(page.c.name))
    return ([DomainInfo(id=r[0], name=r[1], created_at=r[2], users=r[3], aliases=r[4])
             for r in rows], int(total))


def is_local_domain(session: Session, name: str) -> bool:
    """True when ``name`` is one of our domains (the MTA's relay check).

    Asked per recipient domain of every relayed message: one plain statement
    (docs/decisions/0005), no ORM.
    """
    try:
        normal = normalise_domain(name)
    except ValueError:
        return False
    return bool(session.execute(_IS_LOCAL_DOMAIN, {"name": normal}).scalar())


_IS_LOCAL_DOMAIN = text("SELECT EXISTS (SELECT 1 FROM domains WHERE name = :name)")


def remove_domain(session: Session, name: str) -> None:
    """Remove a domain with its aliases and DKIM keys; InUse while it still has users."""
    normal = normalise_domain(name)
    ident = domain_id(session, normal)
    count = session.execute(
        select(func.count()).select_from(User).where(User.domain_id == ident)).scalar_one()
    if count:
        raise InUse(f"domain {normal} still has {count} user(s): remove them first")
    session.execute(delete(Domain).where(Domain.id == ident))
