"""Attachment names decoded as clients show them (RFC 2231, RFC 2047, zip flags), and their
tricks."""

from __future__ import annotations

import binascii
import io
import struct
import zipfile

from postroom.mime.headers import parse_params
from postroom_dmarc.content.filenames import (
    MAX_NAME,
    inspect_name,
    param_value,
    part_filename,
    zip_member_name,
)


def params(header: str) -> list[tuple[str, str]]:
    return parse_params(header)[1]


def test_plain_and_quoted_names() -> None:
    assert part_filename(params('attachment; filename="a b.pdf"'), []) == "a b.pdf"
    assert part_filename([], params("application/pdf; name=x.pdf")) == "x.pdf"
    # Content-Disposition wins over Content-Type
    assert part_filename(params("attachment; filename=d.pdf"),
                         params("application/pdf; name=t.exe")) == "d.pdf"
    assert part_filename([], []) is None


def test_rfc2231_single_extended_value_with_charset() -> None:
    value = param_value(params("attachment; filename*=utf-8''%E2%80%AEfdp.exe"), "filename")
    assert value == "\u202efdp.exe"
    latin = param_value(params("attachment; filename*=iso-8859-1'fr'r%E9sum%E9.exe"), "filename")
    assert latin == "r\u00e9sum\u00e9.exe"


def test_rfc2231_continuations_in_any_order_mixed_encoded_and_plain() -> None:
    header = ("attachment; filename*1=\"voice.pdf\"; filename*0*=utf-8''%C3%A9-in; "
              "filename*2*=%2Eexe")
    assert param_value(params(header), "filename") == "\u00e9-invoice.pdf.exe"


def test_rfc2231_gap_ends_the_value() -> None:
    header = "attachment; filename*0=a; filename*2=.exe"
    assert param_value(params(header), "filename") == "a"


def test_rfc2047_encoded_words_in_a_parameter() -> None:
    header = 'attachment; filename="=?utf-8?B?aW52b2ljZS5wZGYuZXhl?="'
    assert part_filename(params(header), []) == "invoice.pdf.exe"
    q = 'application/octet-stream; name="=?iso-8859-1?Q?caf=E9.scr?="'
    assert part_filename([], params(q)) == "caf\u00e9.scr"


def test_unknown_charset_falls_back_without_raising() -> None:
    assert param_value(params("a; filename*=x-nonsense''ab%FF.exe"), "filename") == "ab\u00ff.exe"


def _zip_with(name: bytes, flags: int, extra: bytes = b"") -> zipfile.ZipInfo:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        info = zipfile.ZipInfo("placeholder")
        archive.writestr(info, b"x")
    data = bytearray(buf.getvalue())
    # rewrite the central directory entry's name (same length) and flags by hand
    cd = data.rfind(b"PK\x01\x02")
    old = b"placeholder"
    assert len(name) == len(old)
    pos = data.find(old, cd)
    data[pos:pos + len(old)] = name
    struct.pack_into("<H", data, cd + 8, flags)
    if extra:
        # append the extra field to the central entry: bump its length and rebuild the end record
        struct.pack_into("<H", data, cd + 30, len(extra))
        data[pos + len(name):pos + len(name)] = extra
        end = data.rfind(b"PK\x05\x06")
        struct.pack_into("<I", data, end + 12, struct.unpack_from("<I", data, end + 12)[0]
                         + len(extra))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        return archive.infolist()[0]


def test_zip_names_cp437_without_the_utf8_flag_and_utf8_with_it() -> None:
    raw = "\u00e9t\u00e9.exe".encode("utf-8") + b"__"  # 11 bytes like "placeholder"
    assert len(raw) == 11
    as_cp437 = _zip_with(raw, 0)
    assert zip_member_name(as_cp437) == raw.decode("cp437")
    as_utf8 = _zip_with(raw, 0x800)
    assert zip_member_name(as_utf8) == "\u00e9t\u00e9.exe__"


def test_zip_unicode_path_extra_field_wins_when_its_crc_matches() -> None:
    raw = b"invoice.pdf"
    good = b"\x01" + struct.pack("<I", binascii.crc32(raw)) + "facture\u202efdp.exe".encode()
    info = _zip_with(raw, 0, struct.pack("<HH", 0x7075, len(good)) + good)
    assert zip_member_name(info) == "facture\u202efdp.exe"
    stale = b"\x01" + struct.pack("<I", 1234) + b"other.exe"
    info = _zip_with(raw, 0, struct.pack("<HH", 0x7075, len(stale)) + stale)
    assert zip_member_name(info) == "invoice.pdf"


def test_bidi_override_is_found_and_the_real_extension_kept() -> None:
    name = inspect_name("invoice\u202efdp.exe")
    assert "bidi control characters" in name.tricks
    assert name.extension == "exe" and "<U+202E>" in name.shown
    for ch in "\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069\u200e\u200f":
        assert "bidi control characters" in inspect_name(f"a{ch}b.txt").tricks


def test_invisible_lookalike_padding_and_trailing_dots() -> None:
    assert "invisible characters" in inspect_name("report\u200b.pdf").tricks
    lookalike = inspect_name("invoice\u2024pdf.exe")
    assert "look-alike dot" in lookalike.tricks and lookalike.extensions == ("exe",)
    assert "padding before the extension" in inspect_name("a.pdf" + " " * 40 + ".exe").tricks
    assert inspect_name("setup.exe. . ").extension == "exe"
    assert inspect_name("SETUP.EXE").extension == "exe"


def test_paths_controls_and_long_names() -> None:
    name = inspect_name("../../etc/cron.d/x.sh")
    assert name.effective == "x.sh" and "path in name" in name.tricks
    assert inspect_name("c:\\windows\\evil.exe").effective == "evil.exe"
    control = inspect_name("a\nb.exe")
    assert "control characters" in control.tricks and control.extension == "exe"
    assert "\n" not in control.shown
    long = inspect_name("a" * 10_000 + ".exe")
    assert "very long name" in long.tricks and len(long.shown) <= MAX_NAME


def test_normalisation_is_nfc() -> None:
    assert inspect_name("e\u0301.exe").shown == "\u00e9.exe"
