"""Hostile attachment names through the live mta and dmarc services (issue 17, Haraka's hole).

Names carrying shell metacharacters and path tricks (each would create a
marker file if anything ran it or used it as a path) arrive as MIME part
names and as zip member names on port 25: a blocked one gets 554 5.7.1 and
is not spooled, a harmless one is accepted, no marker file appears, and the
services' working directory gains nothing. (In-process, with an audit hook
proving no process starts and no such path is opened:
tests/unit/test_content_hostile.py.)
"""

from __future__ import annotations

import base64
import io
import secrets
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.hostile import LEDGER, Suite, address, no_traceback, smtp_session
from tests.support.procs import REPO_ROOT

TOKEN = secrets.token_hex(6)
MARKER = Path(tempfile.gettempdir()) / f"pwned-{TOKEN}"
NAMES = [
    f"$(touch {MARKER})", f"`touch {MARKER}`", f"a; touch {MARKER}; b", f"a | touch {MARKER}",
    f"a && touch {MARKER}", f"a\ntouch {MARKER}\n", f"\"'; touch {MARKER}; echo '\"",
    f"../../../../{MARKER}", f"a\x00; touch {MARKER}", "x" * 10_000,
]
PDF = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"


def _message(marker: bytes, parts: list[tuple[str, bytes]]) -> bytes:
    out = [b"From: someone@sender.example\r\nTo: carol@hostile.test\r\nSubject: " + marker +
           b"\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
           b"--BB\r\nContent-Type: text/plain\r\n\r\nfiles\r\n"]
    for name, data in parts:
        encoded = quote(name, safe="")
        # RFC 2231 continuations, folded: a 10,000-character name still fits in 998-octet lines
        pieces = [encoded[i:i + 300] for i in range(0, len(encoded), 300)]
        header = "Content-Disposition: attachment" + "".join(
            f";\r\n\tfilename*{n}*={'utf-8' + chr(39) * 2 if n == 0 else ''}{piece}"
            for n, piece in enumerate(pieces))
        body = base64.encodebytes(data).replace(b"\n", b"\r\n")
        out.append(b"--BB\r\nContent-Type: application/octet-stream\r\n" + header.encode() +
                   b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + body)
    out.append(b"--BB--\r\n")
    return b"".join(out)


def _zip(names: list[str], data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            archive.writestr(name, data)
    return buf.getvalue()


def _send(suite: Suite, message: bytes) -> tuple[int, bytes]:
    with smtp_session(suite, "smtp-25") as conn:
        conn.send(b"MAIL FROM:<someone@sender.example>\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"RCPT TO:<" + address("carol").encode() + b">\r\n")
        assert conn.smtp()[0] == 250
        conn.send(b"DATA\r\n")
        assert conn.smtp()[0] == 354
        conn.send(message + b".\r\n")
        reply = conn.smtp()
        no_traceback(conn)
        return reply


@pytest.mark.parametrize(("suffix", "data", "blocked"),
                         [(".exe", b"MZ\x90\x00", True), (".pdf", PDF, False)])
@pytest.mark.parametrize("where", ["part", "zip member"])
def test_hostile_names_get_the_right_verdict_and_run_nothing(
        hostile_suite: Suite, suffix: str, data: bytes, blocked: bool, where: str) -> None:
    before_cwd = {p.name for p in REPO_ROOT.iterdir()}
    for name in NAMES:
        marker = f"attach-{secrets.token_hex(6)}".encode()
        if where == "part":
            parts = [(name + suffix, data)]
        else:
            parts = [("bundle.zip", _zip([name.replace("\x00", " ") + suffix], data))]
        code, text = _send(hostile_suite, _message(marker, parts))
        LEDGER.tried_on("smtp-25")
        spooled = hostile_suite.spool_count(marker)
        if blocked:
            LEDGER.check("smtp-25", code == 554 and text.startswith(b"5.7.1 ") and spooled == 0,
                         f"{where} {name[:40]!r}{suffix} answered {code} {text[:80]!r}")
            assert code == 554 and text.startswith(b"5.7.1 attachment "), (name[:40], text)
            assert spooled == 0
        else:
            assert code == 250, (name[:40], text)
            assert spooled == 1
        assert not MARKER.exists()
    assert {p.name for p in REPO_ROOT.iterdir()} == before_cwd
    assert not list(Path(tempfile.gettempdir()).glob(f"*{TOKEN}*"))
