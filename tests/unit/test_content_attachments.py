"""The attachment policy: blocked types, double extensions, deceptive names, lying types,
archives."""

from __future__ import annotations

import base64
import io
import zipfile
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from postroom.mime import Limits as MimeLimits
from postroom_dmarc.content import ContentResult, combine
from postroom_dmarc.content.archives import Limits
from postroom_dmarc.content.attachments import Policy, check, dangerous_type, shown

PE = b"MZ" + b"\x90" * 0x3A + (0x40).to_bytes(4, "little") + b"PE\x00\x00" + b"\x00" * 200
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\ntrailer\n<< >>\n%%EOF\n"


def message(*attachments: tuple[str, bytes], ctype: str = "application/octet-stream") -> bytes:
    msg = EmailMessage()
    msg["From"] = "a@example.org"
    msg["To"] = "b@example.net"
    msg["Subject"] = "files"
    msg.set_content("see attached\n")
    main, sub = ctype.split("/")
    for name, data in attachments:
        msg.add_attachment(data, maintype=main, subtype=sub, filename=name)
    return msg.as_bytes(policy=SMTP)


def raw_part(header: str, body: bytes) -> bytes:
    """A message whose one attachment has exactly ``header`` (for hand-written parameters)."""
    return (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=BB\r\n\r\n--BB\r\n"
            b"Content-Type: text/plain\r\n\r\nhi\r\n--BB\r\n" + header.encode() +
            b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(body) +
            b"--BB--\r\n")


POLICY = Policy()


def verdict(raw: bytes, policy: Policy = POLICY) -> ContentResult:
    return check(raw, policy)


def test_clean_messages_are_accepted() -> None:
    assert verdict(message()).action == "accept"
    result = verdict(message(("report.pdf", PDF)), )
    assert result.action == "accept" and result.details["category"] == "clean"
    assert result.details["attachments"][0]["name"] == "report.pdf"
    assert verdict(message(("notes.txt", b"plain words\n"))).action == "accept"


@pytest.mark.parametrize("ext", ["exe", "scr", "com", "pif", "bat", "cmd", "js", "jse", "vbs",
                                 "vbe", "wsf", "wsh", "hta", "jar", "msi", "msp", "lnk", "ps1",
                                 "psm1", "iso", "img", "vhd", "vhdx", "cpl", "reg", "scf", "chm",
                                 "application", "gadget", "appx", "msix"])
def test_default_blocked_extensions_are_rejected(ext: str) -> None:
    result = verdict(message((f"file.{ext}", b"data")))
    assert result.action == "reject"
    assert result.reason == f'attachment "file.{ext}" blocked: blocked file type .{ext}'
    assert result.details["category"] == "blocked_extension"


def test_extension_case_and_trailing_dots_do_not_help() -> None:
    assert verdict(message(("SETUP.EXE", b"x"))).action == "reject"
    assert verdict(message(("setup.exe.", b"x"))).action == "reject"


def test_double_extension() -> None:
    result = verdict(message(("invoice.pdf.exe", b"x")))
    assert result.action == "reject" and "double extension .pdf.exe" in result.reason
    assert result.details["category"] == "double_extension"
    assert verdict(message(("backup.tar.gz", b"not really gzip"))).action == "accept"


def test_bidi_and_invisible_names() -> None:
    rlo = verdict(message(("invoice\u202efdp.txt", b"x")))
    assert rlo.action == "reject" and rlo.details["category"] == "bidi"
    assert "\\u202e" not in rlo.reason or rlo.reason.isascii()
    assert rlo.reason.isascii()
    zw = verdict(message(("report\u200b.pdf", PDF)))
    assert zw.action == "reject" and zw.details["category"] == "invisible_characters"
    pad = verdict(message(("report.pdf" + " " * 30 + ".txt", b"x")))
    assert pad.action == "reject" and pad.details["category"] == "padding"


def test_rfc2231_and_rfc2047_names_are_decoded_before_judging() -> None:
    rfc2231 = raw_part("Content-Type: application/octet-stream\r\n"
                       "Content-Disposition: attachment; filename*0*=utf-8''invoice%2Epdf; "
                       "filename*1=\".exe\"", b"x")
    assert verdict(rfc2231).details["category"] == "double_extension"
    rfc2047 = raw_part('Content-Type: application/octet-stream; '
                       'name="=?utf-8?B?c2V0dXAuZXhl?="', b"x")
    assert verdict(rfc2047).reason == 'attachment "setup.exe" blocked: blocked file type .exe'


def test_content_type_lies_are_found_by_magic_bytes() -> None:
    result = verdict(message(("invoice.pdf", PE), ctype="application/pdf"))
    assert result.action == "reject"
    assert result.reason == ('attachment "invoice.pdf" blocked: content is a Windows '
                             'executable named .pdf')
    assert result.details["category"] == "type_mismatch"
    nameless = verdict(raw_part("Content-Type: application/octet-stream", PE))
    assert nameless.action == "reject" and "Windows executable" in nameless.reason
    elf = verdict(message(("photo.jpg", b"\x7fELF\x02\x01\x01" + b"\x00" * 60)))
    assert elf.action == "reject" and "ELF" in elf.reason


def test_dangerous_types() -> None:
    assert dangerous_type(PE) == "a Windows executable"
    assert dangerous_type(b"L\x00\x00\x00\x01\x14\x02\x00" + b"\x00" * 60) == "a Windows shortcut"
    iso = bytearray(0x9000)
    iso[0x8001:0x8006] = b"CD001"
    assert dangerous_type(bytes(iso)) == "a disk image"
    assert dangerous_type(PDF) is None


def test_archive_members_are_judged_like_attachments() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("docs/readme.txt", b"hi")
        archive.writestr("docs/invoice.pdf", PE)
    result = verdict(message(("docs.zip", buf.getvalue())))
    assert result.action == "reject"
    assert result.reason == ('attachment "docs.zip / docs/invoice.pdf" blocked: content is a '
                             'Windows executable named .pdf')


def test_uninspectable_and_bomb_actions_follow_the_policy() -> None:
    rar = message(("files.rar", b"Rar!\x1a\x07\x01\x00" + b"\x00" * 64))
    assert verdict(rar).action == "quarantine"
    assert verdict(rar).reason == 'attachment "files.rar" not inspected: rar archive cannot be ' \
        "inspected"
    assert verdict(rar, Policy(uninspectable_action="reject")).action == "reject"
    accepted = verdict(rar, Policy(uninspectable_action="accept"))
    assert accepted.action == "accept" and accepted.details["category"] == "uninspectable"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros", b"\x00" * (20 * 1024 * 1024))
    bomb = verdict(message(("a.zip", buf.getvalue())))
    assert bomb.action == "reject" and bomb.details["category"] == "archive_bomb"
    assert verdict(message(("x.exe", b"x")), Policy(blocked_action="quarantine")).action == \
        "quarantine"


def test_blocked_extensions_are_configurable_and_the_policy_can_be_off() -> None:
    custom = Policy(blocked_extensions=frozenset({"docm"}))
    assert verdict(message(("x.exe", b"x")), custom).action == "accept"
    assert verdict(message(("x.docm", b"x")), custom).action == "reject"
    off = verdict(message(("x.exe", PE)), Policy(enabled=False))
    assert off.action == "accept" and off.details["category"] == "off"


def test_too_complex_mime_is_uninspectable() -> None:
    raw = message(*[(f"f{i}.txt", b"x") for i in range(12)])
    result = verdict(raw, Policy(mime=MimeLimits(max_parts=5)))
    assert result.action == "quarantine" and "MIME structure" in result.reason


def test_a_deadline_gives_uninspectable() -> None:
    ticks = iter(range(10_000))
    raw = message(*[(f"f{i}.txt", b"x") for i in range(5)])
    result = check(raw, Policy(limits=Limits(time_budget=1)), clock=lambda: float(next(ticks)))
    assert result.action == "quarantine" and "time" in result.reason


def test_shown_names_are_ascii_bounded_and_quoted() -> None:
    assert shown('a"b\\c') == 'a\\"b\\\\c'
    assert shown("\u202e\r\n") == "\\u202e\\u000d\\u000a"
    assert len(shown("x" * 500)) == 63


def test_combine_orders_actions() -> None:
    def r(action: str) -> ContentResult:
        return ContentResult(action, action)
    assert combine([]).action == "accept"
    assert combine([r("accept"), r("quarantine")]).action == "quarantine"
    assert combine([r("quarantine"), r("tempfail")]).action == "tempfail"
    assert combine([r("reject"), r("tempfail")]).action == "reject"
    with pytest.raises(ValueError):
        r("maybe")


def _encrypted_zip(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(name, b"MZ" * 20)
    data = bytearray(buf.getvalue())
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.find(sig) + offset] |= 0x01  # the "encrypted" flag, as ZipCrypto sets it
    return bytes(data)


def test_encrypted_archives_are_uninspectable_unless_a_name_is_blocked() -> None:
    hidden = verdict(message(("secret.zip", _encrypted_zip("report.txt"))))
    assert hidden.action == "quarantine" and hidden.details["category"] == "encrypted"
    named = verdict(message(("secret.zip", _encrypted_zip("setup.exe"))))
    assert named.action == "reject" and "setup.exe" in named.reason


def test_inline_answers_only_when_there_is_nothing_to_decode() -> None:
    from postroom_dmarc.content.attachments import AttachmentCheck
    from postroom_dmarc.verdict import CheckRequest

    def req(raw: bytes) -> CheckRequest:
        return CheckRequest("192.0.2.1", "h", "a@example.org", ("b@example.net",), raw, "Q")

    check_ = AttachmentCheck(Policy())
    plain = check_.inline(req(message()))
    assert plain is not None and plain.action == "accept"
    assert check_.inline(req(message(("report.pdf", PDF)))) is None
    assert check_.inline(req(message(("notes.txt", b"x")))) is None  # named: judged in the pool
    assert check_.inline(req(b"Subject: x\r\n\r\n" + b"x" * 200_000)) is None  # large
    assert check_.inline(req(b"Subject: x\r\n\r\nbegin 644 a.exe\r\nend\r\n")) is None
    qp = b"Subject: x\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=62egin\r\n"
    assert check_.inline(req(qp)) is None
    off = AttachmentCheck(Policy(enabled=False)).inline(req(message(("x.exe", PE))))
    assert off is not None and off.action == "accept"


def test_attachments_inside_a_base64_forwarded_message_are_judged() -> None:
    inner = message(("setup.exe", b"x"))
    outer = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=BB\r\n\r\n--BB\r\n"
             b"Content-Type: text/plain\r\n\r\nsee below\r\n--BB\r\n"
             b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             + base64.encodebytes(inner) + b"--BB--\r\n")
    result = verdict(outer)
    assert result.action == "reject" and "setup.exe" in result.reason


def test_uuencoded_file_names_in_text_are_judged() -> None:
    body = b"hello\r\nbegin 644 invoice.pdf.exe\r\nM86)C\r\n`\r\nend\r\n"
    raw = b"From: a@example.org\r\nSubject: uu\r\n\r\n" + body
    result = verdict(raw)
    assert result.action == "reject" and "double extension" in result.reason
    fine = b"From: a@example.org\r\nSubject: uu\r\n\r\nbegin 644 notes.txt\r\nend\r\n"
    assert verdict(fine).action == "accept"
