"""What an importer reads: messages with their flags and internal date, folder by folder."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class SourceMessage:
    """One message to import; ``data`` has CRLF line ends, as the store keeps mail."""

    data: bytes
    flags: tuple[str, ...]
    internaldate: datetime

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class SourceFolder:
    """A folder to import into mailbox ``name`` (``/`` separates levels)."""

    name: str
    count: int
    messages: Iterator[SourceMessage]


def to_crlf(data: bytes) -> bytes:
    """LF (Maildir, mbox) to CRLF line ends, leaving existing CRLFs alone."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")
