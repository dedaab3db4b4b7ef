"""Hostile names (issue 17): shell metacharacters and path tricks as part and archive member names.

The Haraka 2.8.8 hole was an attachment name reaching a shell. Here every
name below goes through the attachment check as a MIME part name (plain,
RFC 2231 and RFC 2047) and as a member name in zip, tar.gz and 7z archives,
and the test shows: the verdict is the one the name and content deserve; no
file appears (the marker paths do not exist, the working directory stays
empty); and, watched through ``sys.addaudithook``, no process is started
(``subprocess.Popen``, ``os.system``, ``os.exec*``, ``os.posix_spawn``,
``os.spawn*``, ``os.fork``), no file is opened for writing and no path with
anything from the message in it is opened at all.
"""

from __future__ import annotations

import io
import os
import secrets
import struct
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any
from urllib.parse import quote

import py7zr
import pytest

from postroom_dmarc.content.attachments import AttachmentCheck, Policy, check
from postroom_dmarc.verdict import CheckRequest

TOKEN = secrets.token_hex(6)
MARKERS = [Path(tempfile.gettempdir()) / f"pwned-{TOKEN}-{i}" for i in range(12)]

HOSTILE = [
    f"$(touch {MARKERS[0]})",
    f"`touch {MARKERS[1]}`",
    f"a; touch {MARKERS[2]}; b",
    f"a | touch {MARKERS[3]}",
    f"a && touch {MARKERS[4]}",
    f"a\ntouch {MARKERS[5]}\n",
    f"a\r\ntouch {MARKERS[6]}",
    f"\"'; touch {MARKERS[7]}; echo '\"",
    f"../../../../{MARKERS[8]}",
    f"a\x00; touch {MARKERS[9]}",
    f"{{touch,{MARKERS[10]}}} > {MARKERS[11]} 2>&1 < /dev/null",
    "x" * 10_000,
    "-rf --no-preserve-root /",
    "%s%n%x %(name)s {0} ${IFS}",
]
# (suffix added to each name, content, expected action)
CASES = [(".pdf", b"%PDF-1.4\n%%EOF\n", "accept"),
         (".exe", b"MZ", "reject"),
         (".txt", b"MZ\x90\x00" + b"\x00" * 0x3C + b"PE\x00\x00", "reject")]

_STARTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
           "os.forkpty", "pty.spawn", "os.startfile")
_WRITES = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link",
           "os.truncate", "os.chmod", "os.utime", "shutil.", "tempfile.mkstemp",
           "tempfile.mkdtemp")


class Watch:
    """What the audit hook saw while it was active."""

    def __init__(self) -> None:
        self.active = False
        self.events: list[tuple[str, Any]] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event.startswith(_STARTS) or event.startswith(_WRITES):
            self.events.append((event, args))
        elif event == "open":
            path, mode, flags = [*args, None, None][:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            text = os.fsdecode(path) if isinstance(path, (str, bytes)) else ""
            if writing or "pwned" in text or TOKEN in text or "touch" in text:
                self.events.append((event, args))


_WATCH = Watch()
sys.addaudithook(_WATCH)  # a hook cannot be removed; it does nothing while inactive


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Watch]:
    monkeypatch.chdir(tmp_path)
    check(b"Subject: warm-up\r\n\r\nx", Policy())  # lazy imports and tables load outside
    _WATCH.events.clear()
    _WATCH.active = True
    try:
        yield _WATCH
    finally:
        _WATCH.active = False
    assert _WATCH.events == [], _WATCH.events
    assert list(tmp_path.iterdir()) == []
    for marker in MARKERS:
        assert not marker.exists(), marker


def part_message(names: list[str], data: bytes) -> bytes:
    """One attachment per name, the names written in three ways (quoted, RFC 2231, RFC 2047)."""
    parts = [b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hostile\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"]
    import base64
    body = base64.encodebytes(data)
    for i, name in enumerate(names):
        quoted = name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace(
            "\n", " ").replace("\x00", " ")
        encoded = "=?utf-8?B?" + base64.b64encode(name.encode()).decode() + "?="
        header = [
            f'Content-Disposition: attachment; filename="{quoted}"',
            f"Content-Disposition: attachment; filename*=utf-8''{quote(name, safe='')}",
            f'Content-Type: application/octet-stream; name="{encoded}"',
        ][i % 3]
        parts.append(b"--BB\r\n" + header.encode() +
                     b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + body)
    parts.append(b"--BB--\r\n")
    return b"".join(parts)


def sevenzip_named(names: list[str], data: bytes) -> bytes:
    """A 7z archive with any member names: py7zr refuses to write names like "../x", so the
    archive is written with placeholders of the same length that are then replaced in its
    (unencoded) header, and the header CRCs redone."""
    placeholders = [f"{i:04d}" + "p" * (len(name) - 4) for i, name in enumerate(names)]
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as archive:
        archive.set_encoded_header_mode(False)
        for placeholder in placeholders:
            archive.writestr(data, placeholder)
    raw = bytearray(buf.getvalue())
    for name, placeholder in zip(names, placeholders, strict=True):
        old, new = placeholder.encode("utf-16-le"), name.encode("utf-16-le")
        assert len(old) == len(new) and raw.count(old) == 1
        at = raw.find(old)
        raw[at:at + len(old)] = new
    offset, size = struct.unpack_from("<QQ", raw, 12)
    header = bytes(raw[32 + offset:32 + offset + size])
    struct.pack_into("<I", raw, 28, zlib.crc32(header))
    struct.pack_into("<I", raw, 8, zlib.crc32(bytes(raw[12:32])))
    return bytes(raw)


def archive_message(kind: str, names: list[str], data: bytes) -> bytes:
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name in names:
                z.writestr(name, data)
    elif kind == "tar.gz":
        with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as t:
            for name in names:
                info = tarfile.TarInfo(name.replace("\x00", " "))
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    else:
        buf = io.BytesIO(sevenzip_named(names, data))
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "b@example.net", "hostile"
    msg.set_content("x\n")
    msg.add_attachment(buf.getvalue(), maintype="application", subtype="octet-stream",
                       filename=f"bundle.{kind}")
    return msg.as_bytes(policy=SMTP)


def request(raw: bytes) -> CheckRequest:
    return CheckRequest(client_ip="192.0.2.1", helo="h", mail_from="a@example.org",
                        recipients=("b@example.net",), message=raw, queue_id="QHOSTILE")


@pytest.mark.parametrize(("suffix", "data", "expected"), CASES)
def test_hostile_part_names(watched: Watch, suffix: str, data: bytes, expected: str) -> None:
    attachments = AttachmentCheck(Policy())
    for name in HOSTILE:
        result = attachments.run(request(part_message([name + suffix], data)), 1e12)
        assert result.action == expected, (name, suffix, result)
    # and all at once in one message
    assert attachments.run(request(part_message([n + suffix for n in HOSTILE], data)),
                           1e12).action == expected


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "7z"])
@pytest.mark.parametrize(("suffix", "data", "expected"), CASES)
def test_hostile_member_names(watched: Watch, kind: str, suffix: str, data: bytes,
                              expected: str) -> None:
    attachments = AttachmentCheck(Policy(uninspectable_action="accept"))
    for name in HOSTILE:
        raw = archive_message(kind, [name + suffix], data)
        result = attachments.run(request(raw), 1e12)
        assert result.action == expected, (kind, name, suffix, result)


def test_the_watch_sees_processes_and_writes(tmp_path: Path) -> None:
    """The hook this suite relies on does report what it is there to catch."""
    _WATCH.events.clear()
    _WATCH.active = True
    try:
        (tmp_path / f"pwned-{TOKEN}").write_bytes(b"x")
        with open(os.devnull, "rb"):
            pass
        import subprocess
        subprocess.run(["true"], check=True)
    finally:
        _WATCH.active = False
    seen = [event for event, _ in _WATCH.events]
    _WATCH.events.clear()
    assert "open" in seen and "subprocess.Popen" in seen, seen
