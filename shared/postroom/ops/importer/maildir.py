"""Read a Maildir++ tree (Dovecot, Courier): folders, info-suffix flags, delivery dates.

Layout: the root's ``cur``/``new`` are INBOX; each ``.Name`` folder beside them
is a mailbox and dots separate levels (``.Lists.python`` is ``Lists/python``).
Flags come from the ``:2,`` info suffix (S seen, R replied, F flagged, T
trashed, D draft); ``new/`` holds unseen mail without one. The internal date
is the file's modification time, which is what Dovecot uses as received date.

The tree may come from anyone (an old server's user directories), so nothing
in it is followed out of it: every folder, ``cur``/``new`` and message file is
opened relative to its parent's descriptor with ``O_NOFOLLOW``, so a symbolic
link (to ``/etc/shadow``, to another user's Maildir) is never read, not even
one swapped in between the listing and the read, and each directory's real
path is checked to stay under the root. Only regular files are read (a FIFO or
a device would hang or never end). What is refused is logged
(``maildir entry skipped``, with the path and why) and the import goes on.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime

from postroom.logs import get_logger
from postroom.mutf7 import MailboxNameError, decode_mutf7
from postroom.ops.importer.source import SourceFolder, SourceMessage, to_crlf

log = get_logger("import")

FLAG_LETTERS = {"S": "\\Seen", "R": "\\Answered", "F": "\\Flagged", "T": "\\Deleted",
                "D": "\\Draft"}
LETTER_OF_FLAG = {flag: letter for letter, flag in FLAG_LETTERS.items()}
INFO_SEPARATOR = ":2,"


class NotAMaildir(ValueError):
    pass


Parts = tuple[str, ...]  # a path below the root, one name per level

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
# O_NONBLOCK: opening a FIFO planted in the tree must not wait for a writer
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC


def parse_flags(filename: str) -> tuple[str, ...]:
    """IMAP flags of a Maildir file name (letters other than S, R, F, T, D are keywords)."""
    _, sep, info = filename.rpartition(INFO_SEPARATOR)
    if not sep:
        return ()
    return tuple(FLAG_LETTERS[c] for c in sorted(set(info)) if c in FLAG_LETTERS)


def info_suffix(flags: list[str] | tuple[str, ...]) -> str:
    """The ``:2,`` suffix for IMAP flags, letters in ASCII order as Maildir requires."""
    return INFO_SEPARATOR + "".join(sorted(LETTER_OF_FLAG[f] for f in flags
                                           if f in LETTER_OF_FLAG))


def folder_name(dirname: str) -> str:
    """``.Lists.python`` -> ``Lists/python``; ``.INBOX.x`` (Dovecot's INBOX children) -> ``x``.

    Each level is decoded from modified UTF-7 as Dovecot and Courier write it
    (``.Entw&APw-rfe`` -> ``Entwürfe``); a level that is not valid modified
    UTF-7 (a tree written with Dovecot's UTF-8 option) is kept as it is.
    """
    name = dirname[1:]
    if name.upper().startswith("INBOX."):
        name = name[len("INBOX."):]
    return "/".join(decode_level(part) for part in name.split(".") if part)


def decode_level(part: str) -> str:
    """One level of a folder name from modified UTF-7; as it is when it is not that."""
    try:
        return decode_mutf7(part)
    except MailboxNameError:
        return part


def open_beneath(root: str, parts: Parts, *, directory: bool = False) -> int:
    """A descriptor for ``root/parts...``, never through a symbolic link below ``root``.

    Each level is opened relative to the one above with ``O_NOFOLLOW``, so a
    link anywhere below ``root`` fails with ELOOP (or ENOTDIR) whenever it
    appeared. ``root`` itself is the operator's path and is followed.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        for i, part in enumerate(parts):
            if part in ("", ".", "..") or "/" in part:
                raise OSError(errno.EINVAL, "not a name inside the tree", part)
            last = i == len(parts) - 1
            inner = os.open(part, _FILE if last and not directory else _DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _skip(root: str, parts: Parts, reason: str) -> None:
    log.warning("maildir entry skipped", path=os.path.join(root, *parts), reason=reason)


def _why(exc: OSError, root: str, parts: Parts) -> str:
    """Why ``open_beneath`` refused: for the log only (the refusal itself is race-free)."""
    if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
        try:
            if stat.S_ISLNK(os.lstat(os.path.join(root, *parts)).st_mode):
                return "symbolic link"
        except OSError:
            pass
        return "symbolic link" if exc.errno == errno.ELOOP else "not a directory"
    return exc.strerror or str(exc)


def _inside(root: str, parts: Parts) -> bool:
    """The real path of ``root/parts`` is ``root`` or below it (``root`` is a real path)."""
    real = os.path.realpath(os.path.join(root, *parts))
    return os.path.commonpath([root, real]) == root


def _directory(root: str, parts: Parts) -> int | None:
    """A descriptor for a real directory inside the tree; None (logged) for a link or worse."""
    try:
        fd = open_beneath(root, parts, directory=True)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _skip(root, parts, _why(exc, root, parts))
        return None
    if not _inside(root, parts):
        os.close(fd)
        _skip(root, parts, "outside the tree")
        return None
    return fd


def _is_maildir(root: str, parts: Parts) -> bool:
    for sub in ("cur", "new"):
        fd = _directory(root, (*parts, sub))
        if fd is None:
            return False
        os.close(fd)
    return True


def is_maildir(path: str | os.PathLike[str]) -> bool:
    """``path`` has real ``cur`` and ``new`` directories (not links to elsewhere)."""
    return _is_maildir(os.path.realpath(path), ())


def _files(root: str, folder: Parts) -> list[Parts]:
    """The folder's message files (regular files in cur/ and new/), oldest first."""
    found: list[tuple[float, str, Parts]] = []
    for sub in ("cur", "new"):
        fd = _directory(root, (*folder, sub))
        if fd is None:
            continue
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    parts = (*folder, sub, entry.name)
                    if entry.is_symlink():
                        _skip(root, parts, "symbolic link")
                    elif entry.is_file(follow_symlinks=False):
                        mtime = entry.stat(follow_symlinks=False).st_mtime
                        found.append((mtime, entry.name, parts))
                    elif not entry.is_dir(follow_symlinks=False):
                        _skip(root, parts, "not a regular file")
        finally:
            os.close(fd)
    return [parts for _mtime, _name, parts in sorted(found)]


def _read(root: str, parts: Parts) -> tuple[bytes, float] | None:
    """(content, mtime) of a regular file inside the tree; None (logged) otherwise."""
    try:
        fd = open_beneath(root, parts)
    except OSError as exc:
        _skip(root, parts, _why(exc, root, parts))  # replaced by a link since the listing, or gone
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            _skip(root, parts, "not a regular file")
            return None
        return handle.read(), info.st_mtime


def _messages(root: str, files: list[Parts]) -> Iterator[SourceMessage]:
    for parts in files:
        read = _read(root, parts)
        if read is None:
            continue
        data, mtime = read
        yield SourceMessage(data=to_crlf(data),
                            flags=parse_flags(parts[-1]) if parts[-2] == "cur" else (),
                            internaldate=datetime.fromtimestamp(mtime, UTC))


def folders(root: str) -> list[tuple[str, Parts]]:
    """(mailbox name, path below ``root``) of every folder, INBOX first, then by name.

    ``root`` is a real path (``os.path.realpath``); NotAMaildir when it is not one.
    """
    if not _is_maildir(root, ()):
        raise NotAMaildir(f"{root} is not a Maildir (no cur/ and new/ folders)")
    found: list[tuple[str, Parts]] = [("INBOX", ())]
    fd = open_beneath(root, (), directory=True)
    try:
        with os.scandir(fd) as entries:
            children = sorted((e.name, e.is_symlink(), e.is_dir(follow_symlinks=False))
                              for e in entries)
    finally:
        os.close(fd)
    for name, is_link, is_dir in children:
        if not name.startswith(".") or name in (".", ".."):
            continue
        if is_link:
            _skip(root, (name,), "symbolic link")
            continue
        if is_dir and _is_maildir(root, (name,)):
            folder = folder_name(name)
            if folder:
                found.append((folder, (name,)))
    return found


def message_files(root: str, folder: Parts) -> list[Parts]:
    """The folder's message files (regular files in cur/ and new/), oldest first."""
    return _files(root, folder)


def read_message(root: str, parts: Parts) -> tuple[bytes, float] | None:
    """(content, mtime) of a regular file inside the tree; None (logged) otherwise."""
    return _read(root, parts)


def scan(root: str | os.PathLike[str]) -> list[SourceFolder]:
    """Every folder of the tree at ``root``, INBOX first, then by name."""
    base = os.path.realpath(root)
    result = []
    for name, parts in folders(base):
        files = _files(base, parts)
        result.append(SourceFolder(name=name, count=len(files), messages=_messages(base, files)))
    return result
