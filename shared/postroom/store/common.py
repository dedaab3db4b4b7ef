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


# --- pages of a list (the web console and REST API): LIMIT/OFFSET on an indexed order

#: the most rows one page may ask for
MAX_PAGE_LIMIT = 1000
#: a search text longer than this matches nothing anyone typed
MAX_SEARCH_CHARS = 254


def check_page(offset: int, limit: int) -> None:
    """ValueError unless 0 <= offset and 1 <= limit <= MAX_PAGE_LIMIT."""
    if offset < 0:
        raise ValueError("offset must not be negative")
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_LIMIT}")


def search_text(search: str | None) -> str | None:
    """The lowercased substring to look for (names and addresses are stored lowercase), or
    None for no search; ValueError when it is too long. LIKE's wildcards in it are escaped
    by the callers (``contains(..., autoescape=True)``)."""
    if search is None or not search.strip():
        return None
    if len(search) > MAX_SEARCH_CHARS:
        raise ValueError(f"search text over {MAX_SEARCH_CHARS} characters")
    return search.strip().lower()
