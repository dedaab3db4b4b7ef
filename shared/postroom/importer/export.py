"""Write a user's mailboxes out as a Maildir++ tree that Dovecot and mutt read.

INBOX is the root's ``cur/``; other mailboxes are ``.Name`` folders with ``/``
written as ``.``. Each message keeps its flags in the ``:2,`` suffix and its
internal date as the file's modification time, so `postroom import maildir`
of the result gives back the same mailboxes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from postroom.importer.load import _user_id
from postroom.importer.maildir import info_suffix
from postroom.importer.source import to_lf
from postroom.store.mailboxes import list_mailboxes
from postroom.store.models import MailboxEntry, Message


@dataclass(frozen=True)
class ExportResult:
    messages: int
    mailboxes: int

    def summary(self) -> str:
        return f"exported {self.messages} message(s) from {self.mailboxes} mailbox(es)"


def folder_path(root: Path, mailbox: str) -> Path:
    if mailbox == "INBOX":
        return root
    return root / ("." + mailbox.replace(".", "_").replace("/", "."))


def _mailboxes(session: Session, address: str) -> list[tuple[int, str, int]]:
    user_id = _user_id(session, address)
    return [(m.id, m.name, m.uidvalidity) for m in list_mailboxes(session, user_id)]


def _entries(session: Session, mailbox_id: int) -> list[tuple[int, list[str], Any, bytes]]:
    rows = session.execute(
        select(MailboxEntry.uid, MailboxEntry.flags, MailboxEntry.internaldate, Message.blob)
        .join(Message, Message.id == MailboxEntry.message_id)
        .where(MailboxEntry.mailbox_id == mailbox_id).order_by(MailboxEntry.uid))
    return [(r[0], list(r[1]), r[2], bytes(r[3])) for r in rows]


def export_maildir(database: Any, address: str, root: str | os.PathLike[str],
                   on_message: Callable[[str], None] | None = None) -> ExportResult:
    """Write every mailbox of ``address`` under ``root`` (created when missing)."""
    base = Path(root)
    host = socket.gethostname().replace("/", "_").replace(":", "_") or "postroom"
    total = 0
    boxes = database.run_sync(_mailboxes, address)
    for mailbox_id, name, uidvalidity in boxes:
        folder = folder_path(base, name)
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        # a rerun rewrites nothing: files are found by their unique part, flags updated
        existing = {p.name.split(",", 1)[0]: p for p in (folder / "cur").iterdir()}
        for uid, flags, internaldate, blob in database.run_sync(_entries, mailbox_id):
            stamp = int(internaldate.timestamp())
            # uid and uidvalidity make the name unique and stable across reruns
            unique = f"{stamp}.V{uidvalidity}U{uid}.{host}"
            data = to_lf(blob)
            target = folder / "cur" / f"{unique},S={len(data)}{info_suffix(flags)}"
            total += 1
            if on_message is not None:
                on_message(name)
            if unique in existing:
                if existing[unique] != target:
                    existing[unique].replace(target)
                continue
            temporary = folder / "tmp" / unique
            temporary.write_bytes(data)
            os.utime(temporary, (stamp, internaldate.timestamp()))
            # tmp/ then rename: a reader never sees half a message (the Maildir rule)
            temporary.replace(target)
    return ExportResult(messages=total, mailboxes=len(boxes))
