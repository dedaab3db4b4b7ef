"""The attachment check on arbitrary input: it always answers, never raises (hypothesis)."""

from __future__ import annotations

import base64
import gzip
import io
import tarfile
import zipfile

import py7zr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.mime.headers import parse_params
from postroom_dmarc.content import ACTIONS
from postroom_dmarc.content.archives import Budget, Limits, inspect
from postroom_dmarc.content.attachments import Policy, check
from postroom_dmarc.content.filenames import inspect_name, param_value

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a/readme.txt", b"hello" * 50)
        archive.writestr("tool.exe", b"MZ" + b"\x00" * 100)
    return buf.getvalue()


def _tgz() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        info = tarfile.TarInfo("x/evil.scr")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"abcd"))
    return buf.getvalue()


def _7z() -> bytes:
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as archive:
        archive.writestr(b"MZ" + b"\x00" * 60, "a/b.txt")
        archive.writestr(b"hello" * 40, "ok.txt")
    return buf.getvalue()


SEEDS = [_zip(), _tgz(), gzip.compress(b"hello" * 100), _7z()]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(len(data) // 2, len(data)))
    return bytes(data[:cut])


@FAST
@given(mutated())
def test_mutated_archives_always_give_a_report(data: bytes) -> None:
    report = inspect(data, "a", Budget(Limits(max_total_size=8 * 1024 * 1024)))
    assert all(f.kind in ("bomb", "uninspectable") for f in report.findings)


@FAST
@given(st.text(max_size=300))
def test_any_name_is_inspected(name: str) -> None:
    result = inspect_name(name)
    assert "\n" not in result.shown and "\r" not in result.shown
    assert all(ext == ext.lower() for ext in result.extensions)


@FAST
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_any_parameter_text_decodes(header: str) -> None:
    params = parse_params("attachment; " + header)[1]
    value = param_value(params, "filename")
    assert value is None or isinstance(value, str)


@FAST
@given(st.binary(max_size=2000), st.text(max_size=80),
       st.sampled_from(["base64", "quoted-printable", "7bit", "x-weird"]))
def test_any_part_gets_a_verdict(body: bytes, name: str, encoding: str) -> None:
    quoted = name.replace("\\", "").replace('"', "").replace("\r", "").replace("\n", "")
    payload = base64.encodebytes(body) if encoding == "base64" else body
    raw = (b"From: a@example.org\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=BB\r\n\r\n--BB\r\n"
           b"Content-Type: application/octet-stream\r\n"
           b"Content-Disposition: attachment; filename=\"" + quoted.encode("utf-8", "replace")
           + b"\"\r\nContent-Transfer-Encoding: " + encoding.encode() + b"\r\n\r\n"
           + payload + b"\r\n--BB--\r\n")
    result = check(raw, Policy())
    assert result.action in ACTIONS
    assert result.reason.isascii()


@FAST
@given(st.binary(max_size=3000))
def test_any_message_gets_a_verdict(raw: bytes) -> None:
    assert check(raw, Policy()).action in ACTIONS
