"""Put imported messages into a user's mailboxes, once: rerunning an import adds nothing.

Idempotence without bookkeeping: within a mailbox, a message is identified by
its bytes (the SHA-256 the store already keys blobs on). A folder holding k
identical copies gets k entries the first time and none on a rerun, because an
import adds a copy only when the folder has more of them than the mailbox does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from postroom.logs import get_logger
from postroom.mime import analyze, metadata_dict
from postroom.mime.fulltext import DEFAULT_MAX_BYTES, text_or_unreadable
from postroom.ops.importer.progress import Progress
from postroom.ops.importer.source import SourceFolder, SourceMessage
from postroom.store import imports, mailboxes, messages
from postroom.store.db import Database
from postroom.store.errors import NotFound
from postroom.store.users import get_user

log = get_logger("import")


@dataclass
class ImportResult:
    """What an import did, per mailbox and in total."""

    imported: int = 0
    skipped: int = 0
    mailboxes_created: list[str] = field(default_factory=list)
    per_mailbox: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        created = f", created {', '.join(self.mailboxes_created)}" if self.mailboxes_created \
            else ""
        return (f"imported {self.imported} message(s) into {len(self.per_mailbox)} mailbox(es), "
                f"skipped {self.skipped} already present{created}")


def _user_id(session: Session, address: str) -> int:
    user = get_user(session, address)
    if user is None:
        raise NotFound(f"no user {address}")
    return user.id


def _import_one(session: Session, user_id: int, name: str, message: SourceMessage,
                occurrence: int, fts_max_bytes: int = DEFAULT_MAX_BYTES) -> bool:
    """Store and file one message unless its ``occurrence``-th copy is there already."""
    if imports.copies_present(session, user_id, name, message.sha256) >= occurrence:
        return False
    message_id = messages.store_message(session, message.data,
                                        metadata_dict(analyze(message.data)),
                                        text_or_unreadable(message.data, fts_max_bytes))
    mailboxes.deliver_to_mailbox(session, user_id=user_id, mailbox_name=name,
                                 message_id=message_id, spool_recipient_id=None,
                                 flags=list(message.flags), internaldate=message.internaldate)
    return True


def import_folders(database: Database, address: str, folders: Sequence[SourceFolder],
                   progress: Progress | None = None) -> ImportResult:
    """Import ``folders`` for the user ``address``; one transaction per message.

    ``database`` is a :class:`postroom.store.db.Database` (its ``run_sync`` is used,
    so call this from a plain thread such as the CLI's).
    """
    result = ImportResult()
    user_id = database.run_sync(_user_id, address)
    for folder in folders:
        name = "INBOX" if folder.name.upper() == "INBOX" else folder.name
        if database.run_sync(mailboxes.ensure_mailbox, user_id, name):
            result.mailboxes_created.append(name)
        seen: Counter[str] = Counter()
        count = 0
        for message in folder.messages:
            seen[message.sha256] += 1
            added = database.run_sync(_import_one, user_id, name, message,
                                      seen[message.sha256], database.fts_max_bytes)
            if added:
                count += 1
            else:
                result.skipped += 1
            if progress is not None:
                progress.advance(name)
        result.per_mailbox[name] = count
        result.imported += count
        log.info("mailbox imported", user=address, mailbox=name, imported=count,
                 messages=folder.count)
    return result
