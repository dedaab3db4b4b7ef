"""Storing an account's rules and its vacation-reply log (the tables of migration 0002)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from postroom.rules import RulesError, parse_rules
from postroom.store.addresses import normalise_address
from postroom.store.errors import NotFound
from postroom.store.models import User, mail_rules, vacation_replies


def _user_id(session: Session, address: str) -> int:
    found = session.execute(select(User.id).where(User.address == normalise_address(address))
                            ).scalar_one_or_none()
    if found is None:
        raise NotFound(f"no account {address}")
    return int(found)


def set_rules(session: Session, address: str, rules_json: str | list[Any]) -> int:
    """Replace an account's rules (JSON text or parsed list); returns how many rules.

    Raises RulesError (invalid JSON or rules; the message says where) or
    NotFound (no such account). An empty list removes the rules.
    """
    if isinstance(rules_json, str):
        try:
            data = json.loads(rules_json)
        except ValueError as exc:
            raise RulesError(f"rules: not valid JSON ({exc})") from None
    else:
        data = rules_json
    parsed = parse_rules(data)
    user_id = _user_id(session, address)
    if not parsed:
        session.execute(delete(mail_rules).where(mail_rules.c.user_id == user_id))
        return 0
    session.execute(
        insert(mail_rules).values(user_id=user_id, rules=data)
        .on_conflict_do_update(index_elements=[mail_rules.c.user_id],
                               set_={"rules": data, "updated_at": func.now()}))
    return len(parsed)


def get_rules(session: Session, address: str) -> list[Any]:
    """An account's rules as stored (the JSON list; empty when it has none)."""
    user_id = _user_id(session, address)
    stored = session.execute(select(mail_rules.c.rules).where(mail_rules.c.user_id == user_id)
                             ).scalar_one_or_none()
    return list(stored or [])


def claim_vacation_reply(session: Session, user_id: int, sender: str, days: int,
                         now: datetime) -> bool:
    """True (and recorded) when ``sender`` got no reply from the account in ``days`` days.

    One statement: two deliveries racing for the same sender cannot both win.
    """
    cutoff = now - timedelta(days=days)
    stmt = (insert(vacation_replies)
            .values(user_id=user_id, sender=sender.lower(), sent_at=now)
            .on_conflict_do_update(index_elements=[vacation_replies.c.user_id,
                                                   vacation_replies.c.sender],
                                   set_={"sent_at": now},
                                   where=vacation_replies.c.sent_at <= cutoff)
            .returning(vacation_replies.c.user_id))
    return session.execute(stmt).first() is not None
