"""METADATA (RFC 5464): server and per-mailbox annotations of an account, with their limits.

Entries live in ``server_annotations`` (per account) and
``mailbox_annotations`` (per mailbox: RENAME keeps them, DELETE removes them).
Names arrive checked and lower-cased. ``/shared`` entries belong to the
account like ``/private`` ones: there are no shared mailboxes or ACLs to share
them through. A change takes an advisory lock per account, so the count and
total checks hold under concurrent SETMETADATA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from postroom.store.errors import NotFound

# the advisory lock space of annotation changes (pg_advisory_xact_lock(key, user id))
_LOCK_KEY = 5464


@dataclass(frozen=True)
class Limits:
    max_size: int  # bytes of one value (METADATA MAXSIZE)
    max_entries: int  # entries on the server, and on each mailbox (METADATA TOOMANY)
    max_total: int  # bytes of every value of the account together (METADATA TOOMANY)


class TooLarge(Exception):
    """A value is over ``Limits.max_size``."""

    def __init__(self, max_size: int) -> None:
        super().__init__(f"value over {max_size} bytes")
        self.max_size = max_size


class TooMany(Exception):
    """The change would pass ``max_entries`` or ``max_total``."""


def _mailbox_id(s: Session, user_id: int, mailbox: str) -> int | None:
    """None for the server (""), the mailbox's id, or NotFound."""
    if mailbox == "":
        return None
    name = "INBOX" if mailbox.upper() == "INBOX" else mailbox
    found = s.execute(text("SELECT id FROM mailboxes WHERE user_id = :u AND name = :n"),
                      {"u": user_id, "n": name}).scalar()
    if found is None:
        raise NotFound("no such mailbox")
    return int(found)


def _table(box: int | None) -> tuple[str, str, str]:
    """(table, owner column, the condition selecting the owner's rows)."""
    if box is None:
        return "server_annotations", "user_id", "user_id = :owner"
    return "mailbox_annotations", "mailbox_id", "mailbox_id = :owner"


def _like(name: str) -> str:
    return name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"


def get(s: Session, user_id: int, mailbox: str, names: Sequence[str],
        depth: str = "0") -> list[tuple[str, bytes | None]]:
    """Each name asked with its value (None: no such entry), then its descendants to ``depth``.

    Descendants (DEPTH 1 or infinity) are listed only where they exist.
    """
    box = _mailbox_id(s, user_id, mailbox)
    table, _, where = _table(box)
    owner = user_id if box is None else box
    rows: dict[str, bytes] = dict(s.execute(text(
        f"SELECT name, value FROM {table} WHERE {where} AND name = ANY(:names)"),  # noqa: S608 -- table and condition are constants
        {"owner": owner, "names": list(names)}).all())
    out: list[tuple[str, bytes | None]] = []
    for name in names:
        value = rows.get(name)
        out.append((name, None if value is None else bytes(value)))
        if depth == "0":
            continue
        below = s.execute(text(
            f"SELECT name, value FROM {table} WHERE {where} "  # noqa: S608 -- constants
            "AND name LIKE :p ESCAPE '\\' ORDER BY name"),
            {"owner": owner, "p": _like(name)}).all()
        for child, child_value in below:
            if depth == "1" and "/" in child[len(name) + 1:]:
                continue
            out.append((str(child), bytes(child_value)))
    return out


def set_entries(s: Session, user_id: int, mailbox: str,
                entries: Sequence[tuple[str, bytes | None]], limits: Limits) -> None:
    """Set (or with None remove) entries, all or none; TooLarge, TooMany or NotFound."""
    for _, value in entries:
        if value is not None and len(value) > limits.max_size:
            raise TooLarge(limits.max_size)
    s.execute(text("SELECT pg_advisory_xact_lock(:k, :u)"), {"k": _LOCK_KEY, "u": user_id})
    box = _mailbox_id(s, user_id, mailbox)
    table, owner_column, where = _table(box)
    owner = user_id if box is None else box
    removed = [name for name, value in entries if value is None]
    if removed:
        s.execute(text(f"DELETE FROM {table} WHERE {where} AND name = ANY(:names)"),  # noqa: S608 -- constants
                  {"owner": owner, "names": removed})
    for name, value in entries:
        if value is None:
            continue
        s.execute(text(
            f"INSERT INTO {table} ({owner_column}, name, value) VALUES (:owner, :n, :v) "  # noqa: S608 -- constants
            f"ON CONFLICT ({owner_column}, name) DO UPDATE SET value = EXCLUDED.value"),
            {"owner": owner, "n": name, "v": value})
    if len(removed) == len(entries):
        return
    count = s.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"),  # noqa: S608 -- constants
                      {"owner": owner}).scalar_one()
    if int(count) > limits.max_entries:
        raise TooMany("too many entries")
    total = s.execute(text(
        "SELECT coalesce((SELECT sum(octet_length(value)) FROM server_annotations "
        "WHERE user_id = :u), 0) + coalesce((SELECT sum(octet_length(a.value)) "
        "FROM mailbox_annotations a JOIN mailboxes b ON b.id = a.mailbox_id "
        "WHERE b.user_id = :u), 0)"), {"u": user_id}).scalar_one()
    if int(total) > limits.max_total:
        raise TooMany("annotation storage full")
