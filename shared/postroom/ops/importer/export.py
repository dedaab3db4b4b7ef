"""Write a user's mailboxes out as a Maildir++ tree that Dovecot and mutt read.

INBOX is the root's ``cur/``; other mailboxes are ``.Name`` folders with ``/``
written as ``.``. Each message keeps its flags in the ``:2,`` suffix and its
internal date as the file's modification time, so `postroom import maildir`
of the result gives back the same mailboxes.

Mail is private whatever the umask: folders are made 0700 and message files
0600 (set explicitly, as umask only ever removes bits), including those an
earlier export left; an existing root keeps the mode its owner gave it. Nothing is written
through a symbolic link found in the tree: such a folder stops the export with
ELOOP, and message files are created with ``O_EXCL | O_NOFOLLOW``.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from postroom.mutf7 import encode_mutf7
from postroom.ops.importer.load import _user_id
from postroom.ops.importer.maildir import info_suffix
from postroom.ops.importer.source import to_lf
from postroom.store.db import Database
from postroom.store.mailboxes import list_mailboxes
from postroom.store.models import MailboxEntry, Message


@dataclass(frozen=True)
class ExportResult:
    messages: int
    mailboxes: int

    def summary(self) -> str:
        return f"exported {self.messages} message(s) from {self.mailboxes} mailbox(es)"


DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _make_directory(path: Path, *, chmod_existing: bool = True) -> None:
    """``path`` as a real directory, mode 0700 when we make it (and, unless told, when it was)."""
    try:
        path.mkdir(mode=DIRECTORY_MODE)
        os.chmod(path, DIRECTORY_MODE)  # whatever the umask took away or left
        return
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise OSError(errno.ELOOP, "refusing to write through a symbolic link", str(path))
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory", str(path))
    if chmod_existing and stat.S_IMODE(info.st_mode) != DIRECTORY_MODE:
        os.chmod(path, DIRECTORY_MODE)


def _make_root(root: Path) -> None:
    """The export root and any missing parents, 0700; an existing root keeps its mode."""
    missing = []
    path = root
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        _make_directory(directory)
    _make_directory(root, chmod_existing=False)


def _write_private(path: Path, data: bytes, times: tuple[float, float]) -> None:
    """A new file 0600 holding ``data`` (a stale one in tmp/ is removed first, never followed)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC,
                 FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), FILE_MODE)
        handle.write(data)
        handle.flush()  # before utime: a later write would move the mtime again
        os.utime(handle.fileno(), times)


def _make_private(path: Path) -> None:
    """An earlier export's file made 0600 (opened without following links)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | _CLOEXEC)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _existing(cur: Path) -> dict[str, Path]:
    """Files an earlier export left in cur/, by their unique part (links are not ours)."""
    with os.scandir(cur) as entries:
        return {e.name.split(",", 1)[0]: cur / e.name for e in entries
                if e.is_file(follow_symlinks=False)}


def folder_path(root: Path, mailbox: str) -> Path:
    """INBOX is the root; ``Lists/Entwürfe`` is ``.Lists.Entw&APw-rfe`` (modified UTF-7)."""
    if mailbox == "INBOX":
        return root
    return root / ("." + ".".join(encode_mutf7(part.replace(".", "_"))
                                  for part in mailbox.split("/")))


def _mailboxes(session: Session, address: str) -> list[tuple[int, str, int]]:
    user_id = _user_id(session, address)
    return [(m.id, m.name, m.uidvalidity) for m in list_mailboxes(session, user_id)]


def _entries(session: Session, mailbox_id: int) -> list[tuple[int, list[str], Any, bytes]]:
    rows = session.execute(
        select(MailboxEntry.uid, MailboxEntry.flags, MailboxEntry.internaldate, Message.blob)
        .join(Message, Message.id == MailboxEntry.message_id)
        .where(MailboxEntry.mailbox_id == mailbox_id).order_by(MailboxEntry.uid))
    return [(r[0], list(r[1]), r[2], bytes(r[3])) for r in rows]


def export_maildir(database: Database, address: str, root: str | os.PathLike[str],
                   on_message: Callable[[str], None] | None = None) -> ExportResult:
    """Write every mailbox of ``address`` under ``root`` (created 0700 when missing).

    ``root`` is the operator's path and may itself be a link; links below it are refused.
    """
    base = Path(os.path.realpath(root))
    _make_root(base)
    host = socket.gethostname().replace("/", "_").replace(":", "_") or "postroom"
    total = 0
    boxes = database.run_sync(_mailboxes, address)
    for mailbox_id, name, uidvalidity in boxes:
        folder = folder_path(base, name)
        if folder != base:
            _make_directory(folder)
        for sub in ("cur", "new", "tmp"):
            _make_directory(folder / sub)
        # a rerun rewrites nothing: files are found by their unique part, flags updated
        existing = _existing(folder / "cur")
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
                _make_private(existing[unique])
                if existing[unique] != target:
                    existing[unique].replace(target)
                continue
            temporary = folder / "tmp" / unique
            _write_private(temporary, data, (stamp, internaldate.timestamp()))
            # tmp/ then rename: a reader never sees half a message (the Maildir rule)
            temporary.replace(target)
    return ExportResult(messages=total, mailboxes=len(boxes))
