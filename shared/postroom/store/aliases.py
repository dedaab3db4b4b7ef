"""Aliases and address resolution: exact aliases, plus-addressing and catch-alls."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, delete, exists, func, select, text
from sqlalchemy.orm import Session

from postroom.store.addresses import (
    normalise_address,
    normalise_domain,
    split_address,
    valid_domains,
)
from postroom.store.common import check_page, domain_id, insert_unique, search_text
from postroom.store.errors import AliasLoop, InvalidAddress, NotFound
from postroom.store.models import Alias, Domain, User

# alias chains longer than this are a configuration loop, not a design
MAX_ALIAS_DEPTH = 10
# addresses a loop check visits at most (a domain's whole alias graph, in practice)
MAX_LOOP_WALK = 10000


@dataclass(frozen=True)
class AliasInfo:
    id: int
    source: str
    destination: str
    created_at: datetime


@dataclass(frozen=True)
class Target:
    """A final recipient: a local account (``user_id`` set) or a remote address to forward to."""

    address: str
    user_id: int | None
    # the +detail of a plus-address, for later filing rules
    detail: str | None = None


def _source(source: str) -> tuple[str, str]:
    """(stored form, domain) of an alias source: an address, or ``@domain`` for a catch-all."""
    if source.strip().startswith("@"):
        domain = normalise_domain(source.strip()[1:])
        return f"@{domain}", domain
    localpart, domain = split_address(source)
    return f"{localpart}@{domain}", domain


def add_alias(session: Session, source: str, destination: str, *,
              delimiter: str = "+") -> AliasInfo:
    """Forward ``source`` (in a local domain; ``@domain`` = catch-all) to ``destination``.

    Raises AliasLoop when mail to ``source`` would come back to it (see :func:`find_loop`).
    """
    stored, domain = _source(source)
    dest = normalise_address(destination)
    ident = domain_id(session, domain)
    loop = find_loop(session, stored, dest, delimiter=delimiter)
    if loop is not None:
        raise AliasLoop(f"alias {stored} -> {dest} would make a loop: "
                        + " -> ".join([stored, *loop]))

    def insert() -> Alias:
        row = Alias(domain_id=ident, source=stored, destination=dest)
        session.add(row)
        session.flush()
        return row

    row = insert_unique(session, insert, f"alias {stored} -> {dest} already exists")
    session.refresh(row)
    return AliasInfo(id=row.id, source=row.source, destination=row.destination,
                     created_at=row.created_at)


# every domain has these (RFC 5321 4.5.1: postmaster; RFC 2142 section 4: abuse)
ROLE_LOCALPARTS = ("postmaster", "abuse")


def first_user(session: Session, domain: str) -> str | None:
    """The address of the domain's first account (the oldest), or None when it has none."""
    ident = domain_id(session, normalise_domain(domain))
    return session.execute(select(User.address).where(User.domain_id == ident)
                           .order_by(User.created_at, User.id).limit(1)).scalar_one_or_none()


def user_count(session: Session, domain_ident: int) -> int:
    return int(session.execute(select(func.count()).select_from(User)
                               .where(User.domain_id == domain_ident)).scalar_one())


def ensure_role_addresses(session: Session, domain: str,
                          target: str | None = None) -> list[AliasInfo]:
    """Make postmaster@ and abuse@ of ``domain`` deliverable (docs/mda.md, "Role addresses").

    Each role address that is neither an alias source nor an account becomes an
    alias of ``target`` (POSTROOM_ROLE_ADDRESS_TARGET) or, without one, of the
    domain's first account. With neither, nothing is created: adding the
    domain's first account does it (users.add_user). The aliases created.
    """
    name = normalise_domain(domain)
    destination = normalise_address(target) if target else first_user(session, name)
    if destination is None:
        return []
    created = []
    for localpart in ROLE_LOCALPARTS:
        source = f"{localpart}@{name}"
        taken = session.execute(select(
            exists().where(Alias.source == source) | exists().where(User.address == source)
        )).scalar()
        if taken or source == destination:
            continue
        created.append(add_alias(session, source, destination))
    return created


def drop_role_alias(session: Session, address: str) -> int:
    """Remove the aliases from role address ``address`` (an account of that name is added)."""
    return int(getattr(session.execute(delete(Alias).where(Alias.source == address)),
                       "rowcount", 0))


def ensure_all_role_addresses(session: Session, domains: list[str] | None = None,
                              target: str | None = None) -> dict[str, list[AliasInfo]]:
    """:func:`ensure_role_addresses` for ``domains`` (every local domain by default):
    `postroom domain ensure-role-addresses`, for domains made before it existed."""
    names = ([normalise_domain(d) for d in domains] if domains else
             list(session.execute(select(Domain.name).order_by(Domain.name)).scalars()))
    return {name: ensure_role_addresses(session, name, target) for name in names}


def find_loop(session: Session, source: str, destination: str, *,
              delimiter: str = "+") -> list[str] | None:
    """The way back to ``source`` if the alias ``source`` -> ``destination`` were added (the
    addresses from ``destination`` on, ending with ``source``), or None when there is none.

    The walk follows what resolution follows (an exact alias, else an account, the same
    two without the ``+detail``, else the domain's catch-all, written ``@domain``), with the
    new alias counted. An alias of an active account to itself is no loop: beside other
    destinations it keeps the account's own copy (resolution delivers it).
    """
    if destination == source:
        if _user(session, source) is not None:
            return None
        return [source]
    parents: dict[str, str | None] = {destination: None}
    todo = [destination]
    while todo and len(parents) < MAX_LOOP_WALK:
        node = todo.pop()
        for hop in _hops(session, node, delimiter, source, destination):
            if hop in parents:
                continue
            parents[hop] = node
            if hop == source:
                path: list[str] = []
                step: str | None = hop
                while step is not None:
                    path.append(step)
                    step = parents[step]
                return path[::-1]
            todo.append(hop)
    return None


def _hops(session: Session, node: str, delimiter: str, new_source: str,
          new_destination: str) -> list[str]:
    """Where resolution goes from ``node`` (an address or ``@domain``), the new alias included."""
    def aliased(name: str) -> list[str]:
        found = _destinations(session, name)
        return [*found, new_destination] if name == new_source else found

    if node.startswith("@"):
        return aliased(node)
    localpart, domain = node.rsplit("@", 1)
    if not _is_local(session, domain):
        return []
    found = aliased(node)
    if found:
        return found
    if _user(session, node) is not None:
        return []
    if delimiter and delimiter in localpart:
        base = localpart.split(delimiter, 1)[0]
        if base:
            return [f"{base}@{domain}"]  # that address decides, catch-all included
    return [f"@{domain}"]


def list_aliases(session: Session, domain: str | None = None) -> list[AliasInfo]:
    """Every alias, or those of one domain, by source then destination."""
    query = select(Alias)
    if domain is not None:
        query = query.join(Domain, Domain.id == Alias.domain_id).where(
            Domain.name == normalise_domain(domain))
    rows = session.execute(query.order_by(Alias.source, Alias.destination)).scalars()
    return [AliasInfo(id=r.id, source=r.source, destination=r.destination,
                      created_at=r.created_at) for r in rows]


def list_aliases_page(session: Session, *, domains: set[str] | None, offset: int, limit: int,
                      search: str | None) -> tuple[list[AliasInfo], int]:
    """One page of the aliases, by source then destination, and how many match in all.

    ``domains``: only aliases of these domains (the source's; None: every one);
    ``search``: a substring of the source or the destination. The order is the
    (source, destination) unique index's.
    """
    check_page(offset, limit)
    conditions: list[ColumnElement[bool]] = []
    if domains is not None:
        conditions.append(Alias.domain_id.in_(
            select(Domain.id).where(Domain.name.in_(sorted(valid_domains(domains))))))
    found = search_text(search)
    if found is not None:
        conditions.append(Alias.source.contains(found, autoescape=True)
                          | Alias.destination.contains(found, autoescape=True))
    total = session.execute(
        select(func.count()).select_from(Alias).where(*conditions)).scalar_one()
    rows = session.execute(select(Alias).where(*conditions)
                           .order_by(Alias.source, Alias.destination)
                           .offset(offset).limit(limit)).scalars()
    return ([AliasInfo(id=r.id, source=r.source, destination=r.destination,
                       created_at=r.created_at) for r in rows], int(total))


def remove_alias(session: Session, source: str, destination: str | None = None) -> int:
    """Remove one alias, or every destination of ``source``; NotFound when none matched."""
    stored, _ = _source(source)
    query = delete(Alias).where(Alias.source == stored)
    if destination is not None:
        query = query.where(Alias.destination == normalise_address(destination))
    count = int(getattr(session.execute(query), "rowcount", 0))
    if not count:
        raise NotFound(f"no alias {stored}" + (f" -> {destination}" if destination else ""))
    return count


def _destinations(session: Session, source: str) -> list[str]:
    return list(session.execute(select(Alias.destination).where(Alias.source == source)
                                .order_by(Alias.id)).scalars())


def _user(session: Session, address: str) -> int | None:
    return session.execute(select(User.id).where(User.address == address,
                                                 User.active.is_(True))).scalar_one_or_none()


def _is_local(session: Session, domain: str) -> bool:
    return session.execute(select(Domain.id).where(Domain.name == domain)).first() is not None


def resolve_address(session: Session, address: str, *, delimiter: str = "+") -> list[Target]:
    """The final recipients of ``address``; empty means no such recipient here.

    Order, as Postfix's virtual maps do it: an exact alias; an account; the same
    two for the address without its ``+detail``; the domain's catch-all. Alias
    destinations in local domains are resolved again (loops stop at
    MAX_ALIAS_DEPTH); remote destinations are returned for forwarding.
    """
    try:
        normal = normalise_address(address)
    except InvalidAddress:
        return []
    local, user_id = _first_step(session, normal)
    if not local:
        return [Target(address=normal, user_id=None)]
    if user_id is not None:
        return [Target(address=normal, user_id=user_id)]
    targets: dict[str, Target] = {}
    _resolve(session, normal, delimiter, 0, {normal}, targets)
    return list(targets.values())


_FIRST_STEP = text(
    "SELECT EXISTS (SELECT 1 FROM domains WHERE name = :domain),"
    " EXISTS (SELECT 1 FROM aliases WHERE source = :address),"
    " (SELECT id FROM users WHERE address = :address AND active)")


def _first_step(session: Session, address: str) -> tuple[bool, int | None]:
    """(domain is local, account id when ``address`` is an account with no alias over it).

    One statement answers the common case (mail for an existing account) that
    the general walk answers in three; anything else takes the general walk.
    """
    domain = address.rsplit("@", 1)[1]
    # plain SQL: this runs at every RCPT of every front door, where ORM compilation showed
    row = session.execute(_FIRST_STEP, {"domain": domain, "address": address}).one()
    if not row[0]:
        return False, None
    if row[1] or row[2] is None:
        return True, None
    return True, int(row[2])


def recipient_status(session: Session, local: str, domain: str, *,
                     delimiter: str = "+") -> tuple[str, str | None]:
    """An SMTP RCPT's fate: ("ok", address) | ("unknown", address or None) | ("relay", None).

    "relay" when ``domain`` is not local; "unknown" when the address is invalid
    or resolves to nobody. One statement for an existing account.
    """
    try:
        domain = normalise_domain(domain)
    except ValueError:
        return "relay", None
    try:
        address = normalise_address(f"{local}@{domain}")
    except InvalidAddress:
        # the domain decides first: a bad address in a foreign domain is still relaying
        return ("unknown" if _is_local(session, domain) else "relay"), None
    is_local, user_id = _first_step(session, address)
    if not is_local:
        return "relay", None
    if user_id is not None:
        return "ok", address
    targets: dict[str, Target] = {}
    _resolve(session, address, delimiter, 0, {address}, targets)
    return ("ok" if targets else "unknown"), address


def _resolve(session: Session, address: str, delimiter: str, depth: int, seen: set[str],
             out: dict[str, Target]) -> None:
    localpart, domain = address.rsplit("@", 1)
    if not _is_local(session, domain):
        out.setdefault(address, Target(address=address, user_id=None))
        return
    detail = None
    candidates = [address]
    if delimiter and delimiter in localpart:
        base, detail = localpart.split(delimiter, 1)
        if base:
            candidates.append(f"{base}@{domain}")
    for candidate in candidates:
        aliased = _destinations(session, candidate)
        if aliased:
            _expand(session, aliased, delimiter, depth, seen, out)
            return
        user_id = _user(session, candidate)
        if user_id is not None:
            out.setdefault(candidate, Target(address=candidate, user_id=user_id,
                                             detail=detail if candidate != address else None))
            return
    catch_all = _destinations(session, f"@{domain}")
    if catch_all:
        _expand(session, catch_all, delimiter, depth, seen, out)


def _expand(session: Session, destinations: list[str], delimiter: str, depth: int,
            seen: set[str], out: dict[str, Target]) -> None:
    if depth >= MAX_ALIAS_DEPTH:
        return
    for dest in destinations:
        if dest in seen:
            # an alias that lists an account's own address keeps a local copy: deliver it
            user_id = _user(session, dest)
            if user_id is not None:
                out.setdefault(dest, Target(address=dest, user_id=user_id))
            continue
        _resolve(session, dest, delimiter, depth + 1, seen | {dest}, out)
