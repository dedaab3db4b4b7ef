"""Read an mbox file (mboxrd and mboxo): messages split on ``From `` lines, flags from Status.

``>From `` quoting is undone (mboxrd: one ``>`` less on any ``>+From `` line).
The internal date is the date on the separator line, else the Date header,
else the file's modification time. Flags follow mutt and Dovecot: ``Status:``
R is \\Seen, ``X-Status:`` A answered, F flagged, T draft, D deleted.
"""

from __future__ import annotations

import email.utils
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from postroom.ops.importer.source import SourceFolder, SourceMessage, to_crlf

_QUOTED_FROM = re.compile(rb"^>(>*From )")
_X_STATUS = {"A": "\\Answered", "F": "\\Flagged", "T": "\\Draft", "D": "\\Deleted"}


class NotAnMbox(ValueError):
    pass


def _split(data: bytes) -> Iterator[tuple[bytes, list[bytes]]]:
    """(separator line, body lines) for each message."""
    separator: bytes | None = None
    lines: list[bytes] = []
    previous_blank = True
    for line in data.splitlines(keepends=True):
        if line.startswith(b"From ") and previous_blank:
            if separator is not None:
                yield separator, lines
            separator, lines = line, []
        elif separator is not None:
            lines.append(line)
        previous_blank = line.strip(b"\r\n") == b""
    if separator is not None:
        yield separator, lines


def _separator_date(line: bytes) -> datetime | None:
    # "From sender@example.org Thu Nov 26 20:44:00 2026": the last five words are the date
    words = line.decode("ascii", "replace").split()
    if len(words) < 7:
        return None
    try:
        parsed = datetime.strptime(" ".join(words[-5:]), "%a %b %d %H:%M:%S %Y")
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC)


def _header(head: bytes, name: bytes) -> str | None:
    match = re.search(rb"(?im)^" + name + rb":[ \t]*(.*?)\r?$", head)
    return match.group(1).decode("ascii", "replace").strip() if match else None


def _flags(head: bytes) -> tuple[str, ...]:
    flags = set()
    if "R" in (_header(head, b"Status") or ""):
        flags.add("\\Seen")
    for letter in _header(head, b"X-Status") or "":
        if letter in _X_STATUS:
            flags.add(_X_STATUS[letter])
    return tuple(sorted(flags))


def _message(separator: bytes, lines: list[bytes], fallback: datetime) -> SourceMessage:
    # the blank line before the next separator belongs to the mbox format, not the message
    if lines and lines[-1].strip(b"\r\n") == b"":
        lines = lines[:-1]
    body = b"".join(_QUOTED_FROM.sub(rb"\1", line) for line in lines)
    head = body.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    date = _separator_date(separator)
    if date is None:
        header_date = _header(head, b"Date")
        try:
            date = email.utils.parsedate_to_datetime(header_date) if header_date else None
        except (TypeError, ValueError):
            date = None
    if date is not None and date.tzinfo is None:
        date = date.replace(tzinfo=UTC)
    return SourceMessage(data=to_crlf(body), flags=_flags(head), internaldate=date or fallback)


def scan(path: str | os.PathLike[str], mailbox: str) -> list[SourceFolder]:
    """The messages of one mbox file, as a single folder to import into ``mailbox``."""
    file = Path(path)
    data = file.read_bytes()
    if data and not data.startswith(b"From "):
        raise NotAnMbox(f"{file} is not an mbox file (it does not start with a From line)")
    fallback = datetime.fromtimestamp(file.stat().st_mtime, UTC)
    parts = list(_split(data))
    messages = (_message(sep, lines, fallback) for sep, lines in parts)
    return [SourceFolder(name=mailbox, count=len(parts), messages=messages)]
