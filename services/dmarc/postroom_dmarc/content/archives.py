"""Archives looked into in-process, in memory, within a budget: never a shell, never the disk.

Zip (:mod:`zipfile`), tar (:mod:`tarfile`, streamed), gzip, bzip2 and xz
(:mod:`gzip`, :mod:`bz2`, :mod:`lzma`) and 7z (py7zr, pure Python, writing
into our own in-memory writers) are opened from bytes already in memory;
every member is read through a stream whose reads are charged to one
:class:`Budget` per message: members counted, uncompressed bytes counted
(the total is capped), compression ratio checked, a wall-clock deadline
checked on every read. Nothing is ever written to a file and no member name
is ever used as a path: names are only decoded (:mod:`.filenames`) and
judged. A nested archive is read (at most ``max_member_size`` bytes) into
memory and inspected one level deeper, up to ``max_depth``.

RAR, CAB, ARJ, ACE, LZH, zstd and compress(1) archives would need another
program: they are identified by their magic bytes only, and reported as
"cannot be inspected" like encrypted archives, archives nested too deep,
archives with too many members, corrupt ones and those whose inspection ran
out of time. An archive whose members would expand past the size cap or
ratio (a zip bomb) is reported as a bomb.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from postroom_dmarc.content.filenames import FileName, inspect_name, zip_member_name

HEAD = 4096  # bytes of each member kept for the type check
CHUNK = 64 * 1024

# (offset, magic, kind); kinds in INSPECTED are opened, the rest only identified
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"PK\x03\x04", "zip"), (0, b"PK\x05\x06", "zip"), (0, b"PK\x07\x08", "zip"),
    (0, b"\x1f\x8b", "gzip"), (0, b"BZh", "bzip2"), (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"), (0, b"Rar!\x1a\x07", "rar"),
    (0, b"MSCF\x00\x00\x00\x00", "cab"),
    (0, b"\x60\xea", "arj"), (7, b"**ACE**", "ace"), (0, b"\x28\xb5\x2f\xfd", "zstd"),
    (0, b"\x1f\x9d", "compress"), (257, b"ustar", "tar"),
)
INSPECTED = frozenset({"zip", "gzip", "bzip2", "xz", "7z", "tar"})
ARCHIVE_KINDS = frozenset(kind for _, _, kind in _MAGIC) | {"lzh"}


def sniff(head: bytes) -> str | None:
    """The archive format ``head`` starts with, or None."""
    for offset, magic, kind in _MAGIC:
        if head.startswith(magic, offset):
            return kind
    if len(head) > 7 and head[2:4] == b"-l" and head[4:5] in (b"h", b"z") and head[6:7] == b"-":
        return "lzh"
    return None


@dataclass(frozen=True)
class Limits:
    """Bounds of one message's archive inspection (POSTROOM_ATTACHMENT_* settings)."""

    max_depth: int = 4  # archives inside archives
    max_members: int = 1000  # across every archive of the message
    max_total_size: int = 100 * 1024 * 1024  # uncompressed bytes read, all archives together
    max_ratio: int = 100  # uncompressed / compressed, once past ratio_floor
    ratio_floor: int = 1024 * 1024
    max_member_size: int = 32 * 1024 * 1024  # a nested archive read into memory
    time_budget: float = 10.0


class Stop(Exception):
    """Inspection cannot go on; ``kind`` is ``bomb`` or ``uninspectable``."""

    def __init__(self, kind: str, what: str) -> None:
        super().__init__(what)
        self.kind = kind
        self.what = what
        self.where: str | None = None  # the innermost archive it happened in


@dataclass
class Budget:
    """What is left of one message's inspection: bytes, members and time."""

    limits: Limits
    clock: Callable[[], float] = time.monotonic
    deadline: float = 0.0
    bytes_read: int = 0
    members: int = 0

    def __post_init__(self) -> None:
        if not self.deadline:
            self.deadline = self.clock() + self.limits.time_budget

    def tick(self) -> None:
        if self.clock() > self.deadline:
            raise Stop("uninspectable", "inspection ran out of time")

    def charge(self, n: int) -> None:
        self.bytes_read += n
        if self.bytes_read > self.limits.max_total_size:
            raise Stop("bomb", "archive bomb: expands past the size limit")
        self.tick()

    def member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise Stop("uninspectable", "too many archive members")


@dataclass
class Member:
    """One file inside an archive: its decoded name, where it is, its first bytes."""

    name: FileName
    path: str  # outer archive names and this one, joined by " / ", for reasons
    size: int | None
    head: bytes = b""
    encrypted: bool = False


@dataclass
class Finding:
    """Something about an archive that decides the verdict: a bomb or an uninspectable one."""

    kind: str  # "bomb" or "uninspectable"
    what: str
    where: str


@dataclass
class Report:
    """Everything seen inside one attachment's archives."""

    members: list[Member] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # formats met, outermost first


def inspect(data: bytes, shown: str, budget: Budget) -> Report:
    """Look inside ``data`` (an attachment's decoded body, an archive by its magic bytes)."""
    report = Report()
    try:
        _archive(data, shown, 1, budget, report)
    except Stop as stop:
        report.findings.append(Finding(stop.kind, stop.what, stop.where or shown))
    return report


def _archive(data: bytes, where: str, depth: int, budget: Budget, report: Report) -> None:
    kind = sniff(data[:HEAD])
    if kind is None:
        return
    report.kinds.append(kind)
    if kind not in INSPECTED:
        report.findings.append(Finding("uninspectable", f"{kind} archive cannot be inspected",
                                       where))
        return
    if depth > budget.limits.max_depth:
        report.findings.append(Finding("uninspectable", "archives nested too deep", where))
        return
    budget.tick()
    try:
        if kind == "zip":
            _zip(data, where, depth, budget, report)
        elif kind == "7z":
            _sevenzip(data, where, depth, budget, report)
        else:
            _stream(data, kind, where, depth, budget, report)
    except Stop as stop:
        if stop.where is None:
            stop.where = where
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile.BadZipFile, tarfile.TarError, zlib.error,
        # lzma.LZMAError, OSError, EOFError, struct.error, py7zr's own errors...: whatever a
        # reader raises on a malformed archive, it is not inspected and not trusted
        report.findings.append(Finding("uninspectable", f"corrupt {kind} archive "
                                       f"({type(exc).__name__})", where))


def _member(report: Report, budget: Budget, raw_name: str, where: str, size: int | None,
            *, encrypted: bool = False) -> Member:
    budget.member()
    name = inspect_name(raw_name)
    member = Member(name, f"{where} / {name.shown}", size, encrypted=encrypted)
    report.members.append(member)
    return member


def _read_member(stream: Any, member: Member, depth: int, budget: Budget,
                 report: Report, *, charge: bool = True) -> None:
    """Keep the head; a nested archive is read whole (capped) and inspected one level down.

    ``charge``: count the bytes read here (False when ``stream`` already counts them).
    """
    head = _capped_read(stream, HEAD, budget, charge)
    member.head = head
    kind = sniff(head)
    if kind is None:
        return
    if kind not in INSPECTED or depth + 1 > budget.limits.max_depth:
        _archive(head, member.path, depth + 1, budget, report)  # reports what it cannot open
        return
    rest = _capped_read(stream, budget.limits.max_member_size - len(head) + 1, budget, charge)
    if len(head) + len(rest) > budget.limits.max_member_size:
        report.findings.append(Finding("uninspectable", "nested archive too large",
                                       member.path))
        return
    _archive(head + rest, member.path, depth + 1, budget, report)


def _capped_read(stream: Any, limit: int, budget: Budget, charge: bool = True) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < limit:
        chunk = stream.read(min(CHUNK, limit - got))
        if not chunk:
            break
        if charge:
            budget.charge(len(chunk))
        else:
            budget.tick()
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _check_ratio(expanded: int, compressed: int, limits: Limits) -> None:
    if expanded > limits.ratio_floor and expanded > limits.max_ratio * max(compressed, 1):
        raise Stop("bomb", "archive bomb: compression ratio over the limit")


# --- zip


def _zip(data: bytes, where: str, depth: int, budget: Budget, report: Report) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        declared = 0
        for info in infos:
            if info.is_dir():
                continue
            declared += info.file_size
            if declared > budget.limits.max_total_size:
                raise Stop("bomb", "archive bomb: members declare more than the size limit")
            _check_ratio(info.file_size, info.compress_size, budget.limits)
        for info in infos:
            if info.is_dir():
                continue
            encrypted = bool(info.flag_bits & 0x1) or info.compress_type == 99  # 99: WinZip AES
            member = _member(report, budget, zip_member_name(info), where, info.file_size,
                             encrypted=encrypted)
            if encrypted:
                report.findings.append(Finding("uninspectable", "encrypted archive", where))
                continue
            # ZipExtFile never yields more than the declared size, and checks the CRC
            with archive.open(info) as stream:
                _read_member(stream, member, depth, budget, report)


# --- tar, gzip, bzip2, xz (streams)


class _Charged:
    """A read-only stream whose reads are charged to the budget and checked for the ratio."""

    def __init__(self, inner: Any, budget: Budget, compressed: int) -> None:
        self.inner = inner
        self.budget = budget
        self.compressed = compressed
        self.expanded = 0
        self.pending = b""

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK
        if self.pending:
            out, self.pending = self.pending[:size], self.pending[size:]
            return out
        data: bytes = self.inner.read(min(size, CHUNK))
        self.expanded += len(data)
        self.budget.charge(len(data))
        _check_ratio(self.expanded, self.compressed, self.budget.limits)
        return data

    def unread(self, data: bytes) -> None:
        self.pending = data + self.pending


def _opener(kind: str, data: bytes) -> Any:
    raw = io.BytesIO(data)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(raw, mode="rb")
    if kind == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    return raw  # tar


def _inner_name(where: str) -> str:
    """``report.csv.gz`` holds ``report.csv`` (the name of the compressed file, less its suffix)."""
    base = where.rsplit(" / ", 1)[-1]
    for suffix in (".gz", ".bz2", ".xz", ".z", ".tgz", ".tbz2", ".txz"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)] + (".tar" if suffix.startswith(".t") else "")
    return base


def _stream(data: bytes, kind: str, where: str, depth: int, budget: Budget,
            report: Report) -> None:
    stream = _Charged(_opener(kind, data), budget, len(data))
    head = _capped_read(stream, 512, budget, False) if kind != "tar" else b""
    if kind == "tar" or head.startswith(b"ustar", 257):
        stream.unread(head)
        _tar(stream, where, depth, budget, report)
        return
    member = _member(report, budget, _inner_name(where), where, None)
    stream.unread(head)
    _read_member(stream, member, depth, budget, report, charge=False)
    # drain what is left: a compressed stream's size is only known by expanding it
    while stream.read(CHUNK):
        pass


def _tar(stream: _Charged, where: str, depth: int, budget: Budget, report: Report) -> None:
    # "r|": a forward-only stream, no seeking; each member is read through the charged stream
    with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8",  # type: ignore[call-overload]
                      errors="surrogateescape") as archive:
        for info in archive:
            budget.tick()
            name = info.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            if info.isdir():
                continue
            member = _member(report, budget, name, where, info.size if info.isreg() else None)
            if info.isreg():
                extracted = archive.extractfile(info)
                if extracted is not None:
                    _read_member(extracted, member, depth, budget, report, charge=False)


# --- 7z


class _SevenZipWriter:
    """py7zr's in-memory writer for one member: keeps its head (or all of a nested archive)."""

    def __init__(self, budget: Budget, keep_limit: int) -> None:
        self.budget = budget
        self.keep_limit = keep_limit
        self.kept = bytearray()
        self.written = 0
        self.nested: bool | None = None

    def write(self, data: bytes | bytearray) -> int:
        self.written += len(data)
        self.budget.charge(len(data))
        if self.nested is None and len(self.kept) + len(data) >= HEAD:
            self.nested = sniff(bytes(self.kept) + bytes(data[:HEAD])) in INSPECTED
        limit = self.keep_limit if self.nested or self.nested is None else HEAD
        room = limit + 1 - len(self.kept)
        if room > 0:
            self.kept += data[:room]
        return len(data)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def flush(self) -> None:
        pass

    def size(self) -> int:
        return self.written

    def close(self) -> None:
        pass


class _SevenZipFactory:
    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.writers: dict[str, _SevenZipWriter] = {}

    def create(self, filename: str) -> _SevenZipWriter:
        writer = _SevenZipWriter(self.budget, self.budget.limits.max_member_size)
        self.writers[filename] = writer
        return writer


def _sevenzip(data: bytes, where: str, depth: int, budget: Budget, report: Report) -> None:
    import py7zr  # imported when a 7z archive is met: it is large
    from py7zr.exceptions import Bad7zFile, PasswordRequired, UnsupportedCompressionMethodError

    try:
        archive = py7zr.SevenZipFile(io.BytesIO(data), mode="r")
    except PasswordRequired:
        report.findings.append(Finding("uninspectable", "encrypted archive", where))
        return
    except (Bad7zFile, UnsupportedCompressionMethodError) as exc:
        raise ValueError(str(exc)) from exc
    with archive:
        entries = [f for f in archive.files if not f.is_directory]
        declared = sum(f.uncompressed or 0 for f in entries)
        if declared > budget.limits.max_total_size - budget.bytes_read:
            raise Stop("bomb", "archive bomb: members declare more than the size limit")
        _check_ratio(declared, len(data), budget.limits)
        encrypted = archive.needs_password()
        members: dict[str, Member] = {}
        for entry in entries:
            member = _member(report, budget, entry.filename or "", where, entry.uncompressed,
                             encrypted=encrypted)
            # py7zr makes a path of each name even when it writes to our writers (refusing
            # names like "../x", looking the rest up under the working directory): it gets a
            # placeholder, never anything from the message
            placeholder = f"member-{entry.id}"
            entry._file_info["filename"] = placeholder
            members[placeholder] = member
        if encrypted:
            report.findings.append(Finding("uninspectable", "encrypted archive", where))
            return
        factory = _SevenZipFactory(budget)
        try:
            archive.extract(factory=factory)  # type: ignore[arg-type]
        except (Bad7zFile, UnsupportedCompressionMethodError) as exc:
            report.findings.append(Finding("uninspectable", f"7z members not readable "
                                           f"({type(exc).__name__})", where))
            return
    for filename, writer in factory.writers.items():
        found = members.get(filename)
        if found is None:
            continue
        member = found
        kept = bytes(writer.kept)
        member.head = kept[:HEAD]
        if writer.nested:
            if len(kept) > budget.limits.max_member_size:
                report.findings.append(Finding("uninspectable", "nested archive too large",
                                               member.path))
            else:
                _archive(kept, member.path, depth + 1, budget, report)
