"""Archives looked into in memory within a budget: nesting, bombs, members, encryption, formats."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zipfile

import py7zr
import pytest

from postroom_dmarc.content import archives
from postroom_dmarc.content.archives import Budget, Limits, inspect, sniff


def zipped(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


def tarred(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sevenzipped(files: dict[str, bytes], password: str | None = None) -> bytes:
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w", password=password,
                            header_encryption=password is not None) as archive:
        for name, data in files.items():
            archive.writestr(data, name)
    return buf.getvalue()


def run(data: bytes, limits: Limits | None = None, name: str = "a") -> archives.Report:
    return inspect(data, name, Budget(limits or Limits()))


def kinds(report: archives.Report) -> list[str]:
    return [f.kind for f in report.findings]


def test_sniff_formats() -> None:
    assert sniff(zipped({"a": b"x"})) == "zip"
    assert sniff(gzip.compress(b"x")) == "gzip"
    assert sniff(bz2.compress(b"x")) == "bzip2"
    assert sniff(lzma.compress(b"x")) == "xz"
    assert sniff(tarred({"a": b"x"}, "w")) == "tar"
    assert sniff(sevenzipped({"a": b"x"})) == "7z"
    assert sniff(b"Rar!\x1a\x07\x01\x00") == "rar"
    assert sniff(b"%PDF-1.7") is None


def test_zip_members_with_names_and_heads() -> None:
    report = run(zipped({"docs/readme.txt": b"hello", "bin/tool.exe": b"MZ\x90\x00"}), name="a.zip")
    assert [m.name.effective for m in report.members] == ["readme.txt", "tool.exe"]
    assert report.members[1].head == b"MZ\x90\x00"
    assert report.members[1].path == "a.zip / bin/tool.exe"
    assert report.findings == []


def test_tar_gz_bz2_xz_and_plain_compressed_files() -> None:
    for mode in ("w", "w:gz", "w:bz2", "w:xz"):
        report = run(tarred({"x/evil.scr": b"MZ", "ok.txt": b"fine"}, mode))
        assert [m.name.effective for m in report.members] == ["evil.scr", "ok.txt"], mode
        assert report.members[0].head == b"MZ"
    single = run(gzip.compress(b"MZ\x90"), name="invoice.exe.gz")
    assert [m.name.effective for m in single.members] == ["invoice.exe"]
    assert single.members[0].head == b"MZ\x90"


def test_7z_members_and_content() -> None:
    report = run(sevenzipped({"a/b/payload.js": b"WScript.Echo(1)", "ok.txt": b"hi"}))
    names = {m.name.effective: m for m in report.members}
    assert set(names) == {"payload.js", "ok.txt"}
    assert names["payload.js"].head == b"WScript.Echo(1)"
    assert report.findings == []


def test_encrypted_7z_is_uninspectable() -> None:
    report = run(sevenzipped({"x.exe": b"MZ"}, password="secret"))
    assert kinds(report) == ["uninspectable"]
    assert "encrypted" in report.findings[0].what


def test_encrypted_zip_is_uninspectable_but_its_names_are_seen() -> None:
    data = bytearray(zipped({"hidden.exe": b"MZ" * 10}, zipfile.ZIP_STORED))
    # set the "encrypted" flag bit in the local and central headers, as a ZipCrypto archive has
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        pos = data.find(sig)
        offset = 6 if sig == b"PK\x03\x04" else 8
        data[pos + offset] |= 0x01
    report = run(bytes(data))
    assert kinds(report) == ["uninspectable"] and "encrypted" in report.findings[0].what
    assert report.members[0].name.extension == "exe" and report.members[0].encrypted


def test_rar_and_other_formats_are_identified_only() -> None:
    report = run(b"Rar!\x1a\x07\x01\x00" + b"\x00" * 100)
    assert kinds(report) == ["uninspectable"] and "rar" in report.findings[0].what
    inner = run(zipped({"inner.rar": b"Rar!\x1a\x07\x00" + b"\x00" * 50}))
    assert kinds(inner) == ["uninspectable"] and "rar" in inner.findings[0].what


def test_nesting_depth_is_bounded() -> None:
    data = b"MZ"
    for level in range(6):
        data = zipped({f"level{level}.zip" if level else "evil.exe": data})
    report = run(data, Limits(max_depth=3))
    assert kinds(report) == ["uninspectable"]
    assert "nested too deep" in report.findings[0].what
    shallow = run(zipped({"in.zip": zipped({"evil.exe": b"MZ"})}), Limits(max_depth=3))
    assert [m.name.effective for m in shallow.members] == ["in.zip", "evil.exe"]


def test_zip_bomb_by_ratio() -> None:
    data = zipped({"zeros.bin": b"\x00" * (20 * 1024 * 1024)})
    assert len(data) < 100_000
    report = run(data)
    assert kinds(report) == ["bomb"] and "ratio" in report.findings[0].what


def test_zip_bomb_by_total_size() -> None:
    # many members, each under the ratio, together over the size limit
    member = bytes(range(256)) * 4096  # 1 MiB, hardly compressible
    data = zipped({f"part{i}.bin": member for i in range(6)}, zipfile.ZIP_STORED)
    report = run(data, Limits(max_total_size=4 * 1024 * 1024))
    assert kinds(report) == ["bomb"] and "size limit" in report.findings[0].what


def test_gzip_bomb_by_ratio_and_by_size() -> None:
    report = run(gzip.compress(b"\x00" * (8 * 1024 * 1024)), name="x.gz")
    assert kinds(report) == ["bomb"] and "ratio" in report.findings[0].what
    big = run(gzip.compress(bytes(range(256)) * 16384), Limits(max_total_size=1024 * 1024,
                                                                 max_ratio=10_000))
    assert kinds(big) == ["bomb"] and "size limit" in big.findings[0].what


def test_nested_bomb_is_found_inside_another_archive() -> None:
    inner = zipped({"zeros.bin": b"\x00" * (20 * 1024 * 1024)})
    report = run(zipped({"inner.zip": inner}, zipfile.ZIP_STORED), name="outer.zip")
    assert kinds(report) == ["bomb"]
    assert report.findings[0].where == "outer.zip / inner.zip"


def test_many_members_stop_at_the_limit() -> None:
    data = zipped({f"f{i}.txt": b"x" for i in range(50)})
    report = run(data, Limits(max_members=20))
    assert kinds(report) == ["uninspectable"] and "too many" in report.findings[0].what
    assert len(report.members) == 20


def test_time_budget() -> None:
    ticks = iter(range(1000))
    budget = Budget(Limits(time_budget=3), clock=lambda: float(next(ticks)))
    report = inspect(zipped({f"f{i}.txt": b"x" for i in range(50)}), "a.zip", budget)
    assert kinds(report) == ["uninspectable"] and "time" in report.findings[0].what


@pytest.mark.parametrize("data", [
    b"PK\x03\x04" + b"\x00" * 30,
    b"\x1f\x8b" + b"\xff" * 40,
    b"BZh9" + b"\x00" * 40,
    b"\xfd7zXZ\x00" + b"\x00" * 40,
    b"7z\xbc\xaf\x27\x1c" + b"\x00" * 40,
    b"\x00" * 257 + b"ustar" + b"\xff" * 300,
])
def test_corrupt_archives_are_uninspectable_not_errors(data: bytes) -> None:
    report = run(data)
    assert kinds(report) == ["uninspectable"], report.findings
