"""Read a Maildir++ tree (Dovecot, Courier): folders, info-suffix flags, delivery dates.

Layout: the root's ``cur``/``new`` are INBOX; each ``.Name`` folder beside them
is a mailbox and dots separate levels (``.Lists.python`` is ``Lists/python``).
Flags come from the ``:2,`` info suffix (S seen, R replied, F flagged, T
trashed, D draft); ``new/`` holds unseen mail without one. The internal date
is the file's modification time, which is what Dovecot uses as received date.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from postroom.importer.source import SourceFolder, SourceMessage, to_crlf

FLAG_LETTERS = {"S": "\\Seen", "R": "\\Answered", "F": "\\Flagged", "T": "\\Deleted",
                "D": "\\Draft"}
LETTER_OF_FLAG = {flag: letter for letter, flag in FLAG_LETTERS.items()}
INFO_SEPARATOR = ":2,"


class NotAMaildir(ValueError):
    pass


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
    """``.Lists.python`` -> ``Lists/python``; ``.INBOX.x`` (Dovecot's INBOX children) -> ``x``."""
    name = dirname[1:]
    if name.upper().startswith("INBOX."):
        name = name[len("INBOX."):]
    return "/".join(part for part in name.split(".") if part)


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _files(folder: Path) -> list[Path]:
    files: list[Path] = []
    for sub in ("cur", "new"):
        directory = folder / sub
        if directory.is_dir():
            files.extend(p for p in directory.iterdir() if p.is_file()
                         and not p.name.startswith("."))
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


def _messages(files: list[Path]) -> Iterator[SourceMessage]:
    for path in files:
        stat = path.stat()
        yield SourceMessage(data=to_crlf(path.read_bytes()),
                            flags=parse_flags(path.name) if path.parent.name == "cur" else (),
                            internaldate=datetime.fromtimestamp(stat.st_mtime, UTC))


def scan(root: str | os.PathLike[str]) -> list[SourceFolder]:
    """Every folder of the tree at ``root``, INBOX first, then by name."""
    base = Path(root)
    if not is_maildir(base):
        raise NotAMaildir(f"{base} is not a Maildir (no cur/ and new/ folders)")
    folders = [("INBOX", base)]
    for child in sorted(base.iterdir()):
        if child.name.startswith(".") and child.name not in (".", "..") and is_maildir(child):
            name = folder_name(child.name)
            if name:
                folders.append((name, child))
    result = []
    for name, path in folders:
        files = _files(path)
        result.append(SourceFolder(name=name, count=len(files), messages=_messages(files)))
    return result
