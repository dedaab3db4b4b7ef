"""Helpers shared by the repository modules: unique inserts and domain lookups."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from postroom.store.errors import AlreadyExists, NotFound
from postroom.store.models import Domain

T = TypeVar("T")


def insert_unique(session: Session, work: Callable[[], T], message: str) -> T:
    """Run ``work`` (which adds and flushes) in a savepoint; a unique violation -> AlreadyExists.

    The savepoint keeps the caller's transaction usable after the violation, and
    catching the violation (rather than checking first) is right under concurrency.
    """
    try:
        with session.begin_nested():
            return work()
    except IntegrityError as exc:
        if getattr(exc.orig, "pgcode", None) == "23505":  # unique_violation
            raise AlreadyExists(message) from None
        raise


def domain_id(session: Session, name: str) -> int:
    """The id of local domain ``name`` (already normalised), or NotFound."""
    found = session.execute(select(Domain.id).where(Domain.name == name)).scalar_one_or_none()
    if found is None:
        raise NotFound(f"unknown domain {name}")
    return found
