"""Pure parts of BINARY (transfer decoding) and COMPRESS=DEFLATE (bounded inflation)."""

from __future__ import annotations

import base64
import zlib

import pytest

from postroom.mime import analyze
from postroom_imap.binary import UnknownCte, binary_section, decode_base64, decode_cte
from postroom_imap.compress import INFLATE_STEP, Deflate
from postroom_imap.syntax import Command, CommandReader
from postroom_imap.syntax_types import Compress, FetchItem, Section


@pytest.mark.parametrize("data", [b"", b"a", b"\x00\xff" * 100, bytes(range(256)) * 3])
def test_base64_as_mail_writers_wrap_it_decodes(data: bytes) -> None:
    wrapped = base64.encodebytes(data).replace(b"\n", b"\r\n")
    assert decode_base64(wrapped) == data


def test_base64_junk_and_missing_padding_are_tolerated() -> None:
    assert decode_base64(b"aGVs bG8*\r\n") == b"hello"
    assert decode_base64(b"aGVsbG8gd29ybGQ=\r\nignored after the pad") == b"hello world"
    assert decode_base64(b"QQ") == b"A"
    assert decode_base64(b"Q") == b""


def test_transfer_encodings() -> None:
    assert decode_cte(b"caf=C3=A9 soft=\r\nbreak", "Quoted-Printable") == "café softbreak".encode()
    assert decode_cte(b"\x00raw", "binary") == b"\x00raw"
    assert decode_cte(b"x", " 8BIT ") == b"x"
    with pytest.raises(UnknownCte) as caught:
        decode_cte(b"begin 644 x", "x-uuencode")
    assert caught.value.response().startswith("[UNKNOWN-CTE]")


def test_binary_section_of_a_single_part_message_is_its_decoded_body() -> None:
    blob = (b"Subject: x\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(b"\x00\x01\x02"))
    meta = analyze(blob)
    assert binary_section(blob, meta, (1,)) == b"\x00\x01\x02"
    assert binary_section(blob, meta, ()) == blob
    assert binary_section(blob, meta, (2,)) == b""


def test_binary_size_does_not_set_seen_but_binary_does() -> None:
    assert not FetchItem("BINARY.SIZE", Section((1,))).sets_seen
    assert not FetchItem("BINARY", Section((1,)), peek=True).sets_seen
    assert FetchItem("BINARY", Section((1,))).sets_seen


def test_inflation_gives_bounded_steps_however_much_the_input_expands() -> None:
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = squeeze.compress(b"A" * (32 * 1024 * 1024)) + squeeze.flush(zlib.Z_SYNC_FLUSH)
    deflate = Deflate()
    deflate.feed(bomb)
    total = 0
    while True:
        step = deflate.inflate()
        assert len(step) <= INFLATE_STEP
        assert deflate.backlog <= len(bomb)
        if not step:
            break
        total += len(step)
    assert total == 32 * 1024 * 1024 and deflate.backlog == 0


def test_both_directions_round_trip_and_garbage_marks_the_stream_broken() -> None:
    server, client_in = Deflate(), zlib.decompressobj(-15)
    assert client_in.decompress(server.compress(b"* OK hello\r\n")) == b"* OK hello\r\n"
    client_out = zlib.compressobj(6, zlib.DEFLATED, -15)
    server.feed(client_out.compress(b"a NOOP\r\n") + client_out.flush(zlib.Z_SYNC_FLUSH))
    assert server.inflate() == b"a NOOP\r\n"
    broken = Deflate()
    broken.feed(b"\xff\xff\xff\xff not deflate")
    assert broken.inflate() == b"" and broken.broken


def test_compress_command_pauses_the_reader_and_leaves_what_follows_unread() -> None:
    reader = CommandReader(authenticated=True)
    events = reader.feed(b"a COMPRESS deflate\r\n\x01\x02compressed")
    assert events == [Command("a", "COMPRESS", Compress("DEFLATE"), size=20)]
    assert reader.paused
    assert reader.take_pending() == b"\x01\x02compressed"
    assert reader.pending == 0


def test_catenate_urls_of_rfc4469_parse() -> None:
    from postroom_imap.catenate import MessageUrl, parse_url

    assert parse_url("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME") == MessageUrl(
        "Drafts", 385759045, 20, Section((1,), "MIME"))
    assert parse_url("/INBOX/;uid=9") == MessageUrl("INBOX", None, 9, None)
    assert parse_url("/a%20b%2Fc/;UID=3/;SECTION=HEADER.FIELDS%20(FROM)") == MessageUrl(
        "a b/c", None, 3, Section((), "HEADER.FIELDS", ("FROM",)))
    for bad in ("imap://host/INBOX/;UID=1", "/INBOX", "/INBOX/;UID=0", "/INBOX/;UID=x",
                "/;UID=1", "/INBOX/;UID=1/;PARTIAL=0.5", "/INBOX;UIDVALIDITY=/;UID=1",
                "/INBOX/;UID=1/;SECTION=BOGUS", "/" + "a" * 5000 + "/;UID=1"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_catenate_parses_text_and_url_parts_beside_plain_messages() -> None:
    from postroom_imap.syntax_types import Append, CatText, CatUrl

    reader = CommandReader(authenticated=True)
    events = reader.feed(b'a APPEND INBOX (\\Seen) CATENATE (URL "/INBOX/;UID=1" TEXT {3+}\r\n'
                         b"abc) {2+}\r\nhi\r\n")
    command = events[-1]
    assert isinstance(command, Command) and isinstance(command.args, Append)
    first, second = command.args.messages
    assert first.flags == ("\\Seen",) and first.catenate == (CatUrl("/INBOX/;UID=1"),
                                                            CatText(b"abc"))
    assert second.data == b"hi" and second.catenate == ()


def test_compressed_commands_pipelined_behind_compress_are_run() -> None:
    from tests.unit.test_imap_protocol import Harness

    h = Harness(tls=True)
    h.login()
    client_out = zlib.compressobj(6, zlib.DEFLATED, -15)
    client_in = zlib.decompressobj(-15)
    pipelined = client_out.compress(b"n NOOP\r\nc COMPRESS DEFLATE\r\n") + client_out.flush(
        zlib.Z_SYNC_FLUSH)
    reply = h.send(b"z COMPRESS DEFLATE\r\n" + pipelined)
    h.clock.advance(0)  # the backlog is inflated a step a reactor turn
    head = b"z OK DEFLATE active\r\n"
    assert reply.startswith(head)
    rest = reply[len(head):] + h.transport.value()[len(reply):]
    assert client_in.decompress(rest) == (
        b"n OK NOOP completed\r\nc NO [COMPRESSIONACTIVE] DEFLATE active via COMPRESS\r\n")


def test_badurl_echoes_the_url_bare_without_brackets_or_controls() -> None:
    from postroom_imap.catenate import BadUrl

    assert BadUrl("/INBOX/;UID=99").response() == (
        "[BADURL /INBOX/;UID=99] URL does not name a message here")
    assert BadUrl("/a]b\r\n*\x00").response().startswith("[BADURL /ab*] ")
    assert BadUrl("]\r\n").response().startswith("[BADURL /] ")
