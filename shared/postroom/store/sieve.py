"""Each account's Sieve scripts (the ``sieve_scripts`` table of migration 0014).

The one owner of the SQL on ``sieve_scripts``: `postroom sieve`, ManageSieve
(RFC 5804) and the mda (which reads the active script at delivery) call these.
A script is stored as its text; whether it is valid Sieve is the caller's
question (``postroom.sieve.check_script``), and so are the per-account limits
(``POSTROOM_SIEVE_MAX_SCRIPTS``, ``POSTROOM_SIEVE_MAX_SCRIPT_BYTES``; see
:func:`scripts_usage`). Changes take an advisory lock per account, so a
rename, a delete and an activation racing for one account run one after the
other; the partial unique index keeps at most one active script anyway.

None of these functions commits: the caller's transaction does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from postroom.store.common import insert_unique
from postroom.store.errors import InUse, InvalidName
from postroom.store.models import sieve_scripts

# the advisory lock space of script changes (pg_advisory_xact_lock(key, user id))
_LOCK_KEY = 5228
#: the longest script name, in characters (RFC 5804 leaves it to the server)
MAX_NAME_CHARS = 128


@dataclass(frozen=True)
class ScriptInfo:
    """One script of an account, without its text (ManageSieve LISTSCRIPTS)."""

    name: str
    active: bool
    size: int  # bytes of UTF-8
    updated_at: datetime


def check_name(name: str) -> str:
    """``name`` when it is a script name RFC 5804 section 1.6 allows (non-empty, no control
    characters, no line or paragraph separator; at most MAX_NAME_CHARS), else InvalidName."""
    if not isinstance(name, str) or not name:
        raise InvalidName("a script name must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidName(f"a script name is at most {MAX_NAME_CHARS} characters")
    for char in name:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029) \
                or 0xD800 <= code <= 0xDFFF:
            raise InvalidName("a script name must not contain control characters")
    return name


def _lock(session: Session, user_id: int) -> None:
    session.execute(text("SELECT pg_advisory_xact_lock(:k, :u)"), {"k": _LOCK_KEY, "u": user_id})


def list_scripts(session: Session, user_id: int) -> list[ScriptInfo]:
    """The account's scripts, by name."""
    rows = session.execute(
        select(sieve_scripts.c.name, sieve_scripts.c.active, sieve_scripts.c.size,
               sieve_scripts.c.updated_at)
        .where(sieve_scripts.c.user_id == user_id).order_by(sieve_scripts.c.name)).all()
    return [ScriptInfo(r.name, bool(r.active), int(r.size), r.updated_at) for r in rows]


def get_script(session: Session, user_id: int, name: str) -> str | None:
    """The text of the account's script ``name``, or None when it has none of that name."""
    found = session.execute(
        select(sieve_scripts.c.content).where(sieve_scripts.c.user_id == user_id,
                                              sieve_scripts.c.name == name)
    ).scalar_one_or_none()
    return None if found is None else str(found)


def put_script(session: Session, user_id: int, name: str, content: str) -> None:
    """Create the script ``name`` or replace its text (an active script stays active).

    InvalidName for a name RFC 5804 refuses. The text is not checked here.
    """
    check_name(name)
    size = len(content.encode("utf-8"))
    _lock(session, user_id)
    done = session.execute(
        update(sieve_scripts)
        .where(sieve_scripts.c.user_id == user_id, sieve_scripts.c.name == name)
        .values(content=content, size=size, updated_at=func.now()))
    if not getattr(done, "rowcount", 0):
        session.execute(insert(sieve_scripts).values(user_id=user_id, name=name,
                                                      content=content, size=size))


def delete_script(session: Session, user_id: int, name: str) -> bool:
    """Delete the script ``name``; False when there is none. InUse when it is the active
    one (RFC 5804 DELETESCRIPT: deactivate it first)."""
    _lock(session, user_id)
    active = session.execute(
        select(sieve_scripts.c.active).where(sieve_scripts.c.user_id == user_id,
                                             sieve_scripts.c.name == name)
    ).scalar_one_or_none()
    if active is None:
        return False
    if active:
        raise InUse(f"script {name!r} is active: deactivate it first")
    session.execute(delete(sieve_scripts).where(sieve_scripts.c.user_id == user_id,
                                                sieve_scripts.c.name == name))
    return True


def rename_script(session: Session, user_id: int, old: str, new: str) -> bool:
    """Rename the script ``old`` to ``new`` (keeping whether it is active); False when there
    is no ``old``. AlreadyExists when ``new`` is taken, InvalidName for a name refused."""
    check_name(new)
    _lock(session, user_id)

    def work() -> int:
        done = session.execute(
            update(sieve_scripts)
            .where(sieve_scripts.c.user_id == user_id, sieve_scripts.c.name == old)
            .values(name=new, updated_at=func.now()))
        return int(getattr(done, "rowcount", 0))

    if old == new:
        return get_script(session, user_id, old) is not None
    return insert_unique(session, work, f"a script named {new!r} already exists") > 0


def set_active(session: Session, user_id: int, name: str | None) -> bool:
    """Make ``name`` the account's one active script (None: no script is active).

    False (and nothing changed) when there is no script ``name``.
    """
    _lock(session, user_id)
    if name is not None and get_script(session, user_id, name) is None:
        return False
    # two statements: a non-deferrable unique index is checked row by row within one
    others = update(sieve_scripts).where(sieve_scripts.c.user_id == user_id,
                                         sieve_scripts.c.active)
    if name is not None:
        others = others.where(sieve_scripts.c.name != name)
    session.execute(others.values(active=False))
    if name is not None:
        session.execute(update(sieve_scripts)
                        .where(sieve_scripts.c.user_id == user_id, sieve_scripts.c.name == name,
                               sieve_scripts.c.active.is_(False))
                        .values(active=True))
    return True


def active_script(session: Session, user_id: int) -> tuple[str, str] | None:
    """(name, text) of the account's active script, or None when none is active."""
    row = session.execute(
        select(sieve_scripts.c.name, sieve_scripts.c.content)
        .where(sieve_scripts.c.user_id == user_id, sieve_scripts.c.active)).first()
    return None if row is None else (str(row.name), str(row.content))


def scripts_usage(session: Session, user_id: int) -> tuple[int, int]:
    """(how many scripts, their bytes together) of the account: what the limits count."""
    row = session.execute(
        select(func.count(), func.coalesce(func.sum(sieve_scripts.c.size), 0))
        .where(sieve_scripts.c.user_id == user_id)).one()
    return int(row[0]), int(row[1])
