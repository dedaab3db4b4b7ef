"""Spam learning's one read: a user's message by id, for rspamd (the learn worker)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def message_for_learning(s: Session, user_id: int, message_id: int) -> bytes | None:
    """The message's bytes while ``user_id`` still has it in some mailbox, else None.

    A message the user deleted meanwhile is not learnt; the ownership check
    keeps a forged stream entry from reading anyone else's mail.
    """
    row = s.execute(text(
        "SELECT m.blob FROM messages m WHERE m.id = :m AND EXISTS ("
        "SELECT 1 FROM mailbox_entries e JOIN mailboxes b ON b.id = e.mailbox_id "
        "WHERE e.message_id = m.id AND b.user_id = :u)"), {"m": message_id, "u": user_id}).first()
    return bytes(row[0]) if row is not None and row[0] is not None else None
