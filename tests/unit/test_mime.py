"""postroom.mime: sample messages against hand-computed ENVELOPE/BODYSTRUCTURE and byte ranges."""

import json
from pathlib import Path

from postroom.mime import (
    MessageMeta,
    analyze,
    base_subject,
    filter_header_fields,
    render_bodystructure,
    render_envelope,
    section_range,
)

MAIL = Path(__file__).resolve().parent.parent / "data" / "mail"


def load(name: str) -> tuple[bytes, MessageMeta]:
    raw = (MAIL / name).read_bytes()
    return raw, analyze(raw)


def sliced(raw: bytes, meta: MessageMeta, path: tuple[int, ...], text: str = "") -> bytes | None:
    span = section_range(meta, path, text)
    return None if span is None else raw[span[0] : span[1]]


def test_simple_message_envelope_matches_rfc3501_example():
    _, meta = load("simple.eml")
    assert render_envelope(meta) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )


def test_simple_message_bodystructure_counts_body_octets_and_lines():
    raw, meta = load("simple.eml")
    assert render_bodystructure(meta, extended=False) == (
        b'("text" "plain" ("charset" "US-ASCII") NIL NIL "7bit" 55 1)')
    assert sliced(raw, meta, (1,)) == b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
    assert meta.size == len(raw) == 399


def test_simple_message_header_and_text_sections_split_at_blank_line():
    raw, meta = load("simple.eml")
    header = sliced(raw, meta, (), "HEADER")
    assert header is not None and header.endswith(b"US-ASCII\r\n\r\n")
    assert header + sliced(raw, meta, (), "TEXT") == raw
    assert sliced(raw, meta, ()) == raw


def test_alternative_bodystructure_is_extended_with_boundary_param():
    _, meta = load("alternative.eml")
    assert render_bodystructure(meta, extended=True) == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 14 1 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "7bit" 21 1 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "b1") NIL NIL NIL)'
    )


def test_alternative_parts_exclude_the_line_break_before_the_boundary():
    raw, meta = load("alternative.eml")
    assert sliced(raw, meta, (1,)) == b"Lunch at noon?"
    assert sliced(raw, meta, (2,)) == b"<p>Lunch at noon?</p>"
    assert sliced(raw, meta, (2,), "MIME") == b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    assert sliced(raw, meta, (3,)) is None


def test_nested_bodystructure_with_attachment_and_message_rfc822():
    _, meta = load("nested.eml")
    assert render_bodystructure(meta, extended=True) == (
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 1 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 20 1 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "inner") NIL NIL NIL)'
        b'("application" "pdf" ("name" "report.pdf") "<pdf1@example.com>" "The report" "base64" 12'
        b' "Q2hlY2sgSW50ZWdyaXR5IQ==" ("attachment" ("filename" "report.pdf")) ("en" "de")'
        b' "http://example.com/report.pdf")'
        b'("message" "rfc822" NIL NIL NIL "7bit" 105'
        b' ("Sat, 03 Feb 2024 08:00:00 +0000" "Forwarded" (("Grace" NIL "grace" "example.com"))'
        b' (("Grace" NIL "grace" "example.com")) (("Grace" NIL "grace" "example.com"))'
        b' NIL NIL NIL NIL NIL)'
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 11 1 NIL NIL NIL NIL) 5'
        b' NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "outer") NIL NIL NIL)'
    )


def test_nested_body_without_extension_data():
    _, meta = load("nested.eml")
    body = render_bodystructure(meta, extended=False)
    assert body.startswith(b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 1)')
    assert b"NIL NIL NIL NIL" not in body.replace(b"NIL NIL NIL NIL NIL)", b"")
    assert body.endswith(b' "mixed")')


def test_nested_sections_slice_parts_of_parts():
    raw, meta = load("nested.eml")
    assert sliced(raw, meta, (1, 1)) == b"See attached."
    assert sliced(raw, meta, (1, 2)) == b"<b>See attached.</b>"
    assert sliced(raw, meta, (2,)) == b"JVBERi0xLjQK"
    assert sliced(raw, meta, (3,), "HEADER") == (
        b"From: Grace <grace@example.com>\r\nSubject: Forwarded\r\n"
        b"Date: Sat, 03 Feb 2024 08:00:00 +0000\r\n\r\n")
    assert sliced(raw, meta, (3,), "TEXT") == b"Inner text."
    assert sliced(raw, meta, (3, 1)) == b"Inner text."
    assert sliced(raw, meta, (3,), "MIME") == b"Content-Type: message/rfc822\r\n\r\n"
    assert sliced(raw, meta, (2,), "HEADER") is None
    assert sliced(raw, meta, (1, 1, 1)) is None


def test_group_addresses_use_nil_host_markers():
    _, meta = load("nested.eml")
    env = render_envelope(meta)
    assert (b'(("Dave" NIL "dave" "example.com")(NIL NIL "Team" NIL)(NIL NIL "erin" "example.com")'
            b'(NIL NIL "frank" "example.com")(NIL NIL NIL NIL))') in env


def test_rfc2047_words_stay_raw_in_envelope_and_decode_for_search():
    _, meta = load("rfc2047.eml")
    assert b'"=?utf-8?q?Gr=C3=BC=C3=9Fe?= =?utf-8?q?_aus_K=C3=B6ln?="' in render_envelope(meta)
    assert meta.header_values("subject") == ["Grüße aus Köln"]
    assert meta.header_values("from") == ["Keld Jørn Simonsen <keld@dkuug.dk>"]
    assert meta.header_values("to") == ["Jörg <joerg@example.de>"]


def test_raw_utf8_header_is_sent_as_a_literal():
    _, meta = load("raw-utf8-header.eml")
    env = render_envelope(meta)
    subject = "Grüße".encode()
    assert b"{%d}\r\n" % len(subject) + subject in env
    assert b"{13}\r\nJ\xc3\xb6rg M\xc3\xbcller" in env


def test_raw_utf8_header_can_be_rfc2047_encoded_instead():
    _, meta = load("raw-utf8-header.eml")
    env = render_envelope(meta, rfc2047=True)
    assert env.isascii()
    assert b'"=?utf-8?b?R3LDvMOfZQ==?="' in env


def test_latin1_header_decodes_without_error():
    _, meta = load("latin1-8bit.eml")
    assert meta.envelope.subject == "Café"
    assert meta.body.encoding == "8bit"
    assert not meta.degraded


def test_boundary_not_found_degrades_to_text_plain():
    raw, meta = load("broken-boundary.eml")
    assert meta.degraded
    assert render_bodystructure(meta, extended=False).startswith(b'("text" "plain"')
    assert meta.envelope.subject == "broken"
    assert sliced(raw, meta, (1,)) == raw[raw.index(b"--other") :]


def test_missing_close_boundary_keeps_parts_and_marks_degraded():
    raw, meta = load("no-close-boundary.eml")
    assert meta.degraded and "missing close boundary" in meta.defects
    assert sliced(raw, meta, (1,)) == b"first"
    assert sliced(raw, meta, (2,)) == b"truncated\r\n"


def test_message_without_headers_is_one_degraded_text_part():
    raw, meta = load("no-headers.eml")
    assert meta.degraded
    assert meta.body.body_start == 0 and meta.body.size == len(raw)
    assert render_envelope(meta) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_nul_bytes_never_reach_the_wire_or_json():
    _, meta = load("nul-bytes.eml")
    assert "\x00" not in json.dumps(meta.to_dict())
    assert b"\x00" not in render_envelope(meta)


def test_metadata_round_trips_through_json():
    for path in MAIL.glob("*.eml"):
        meta = analyze(path.read_bytes())
        assert MessageMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta, path.name


def test_sort_keys_hold_utc_date_base_subject_and_first_mailbox():
    _, meta = load("simple.eml")
    assert meta.sort["date"] == "1996-07-17T09:23:25+00:00"
    assert meta.sort["from"] == "gray"
    assert meta.sort["cc"] == "minutes"


def test_base_subject_strips_reply_and_forward_markers():
    assert base_subject("Re: [list] Fwd: Re: Hello (fwd)") == "hello"
    assert base_subject("=?utf-8?q?Re=3A_Gr=C3=BC=C3=9Fe?=") == "grüße"


def test_header_fields_filter_keeps_continuations_and_blank_line():
    raw, meta = load("simple.eml")
    header = sliced(raw, meta, (), "HEADER")
    assert header is not None
    assert filter_header_fields(header, ["CC", "subject"]) == (
        b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
        b"cc: minutes@CNRI.Reston.VA.US,\r\n John Klensin <KLENSIN@MIT.EDU>\r\n\r\n")
    excluded = filter_header_fields(header, ["cc", "subject"], exclude=True)
    assert b"cc:" not in excluded and excluded.startswith(b"Date:")


def test_encoded_message_rfc822_is_described_as_opaque():
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: message/rfc822\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nRnJvbTogYQ0KDQpi\r\n--b--\r\n")
    meta = analyze(raw)
    assert b'("application" "octet-stream" NIL NIL NIL "base64" 16)' in render_bodystructure(
        meta, extended=False)


def test_digest_parts_default_to_message_rfc822():
    raw = (b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: one\r\n\r\nx\r\n"
           b"--d--\r\n")
    meta = analyze(raw)
    part = meta.body.children[0]
    assert (part.type, part.subtype) == ("message", "rfc822")
    assert part.envelope is not None and part.envelope.subject == "one"


def test_empty_multipart_gets_one_empty_text_part():
    meta = analyze(b"Content-Type: multipart/mixed; boundary=e\r\n\r\n--e--\r\n")
    assert render_bodystructure(meta, extended=False) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")')


def test_lf_only_messages_get_offsets_in_their_own_bytes():
    raw = b"Content-Type: multipart/mixed; boundary=q\n\n--q\n\nab\n--q--\n"
    meta = analyze(raw)
    assert sliced(raw, meta, (1,)) == b"ab"


def _filter_by_regex(header, names, exclude=False):
    """The filter as it was written before issue 23 (one regex match a line): the reference."""
    import re
    start = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
    wanted = {n.lower().encode("ascii", "replace") for n in names}
    out, keep = [], False
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        match = start.match(line)
        name = match.group(1).lower() if match else b""
        keep = (name in wanted) != exclude and bool(match)
        if keep:
            out.append(line if line.endswith(b"\n") else line + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def test_header_fields_filter_agrees_with_the_field_name_grammar_on_odd_lines():
    header = (b"Subject : spaced before the colon\r\n"
              b"X Bad: a space inside the name\r\n"
              b": no name\r\n"
              b"no colon at all\r\n"
              b"\tcontinuation of a line that is no field\r\n"
              b"SUBJECT:\tupper case, tab\r\n"
              b"Sub\tject: tab inside\r\n"
              b"X-\x7fDel: control in the name\r\n"
              b"Subject: last, no line end")
    names = [["subject"], ["X Bad"], ["x bad", "SUBJECT", "x-\x7fdel"], [""], []]
    for wanted in names:
        for exclude in (False, True):
            assert filter_header_fields(header, wanted, exclude=exclude) == \
                _filter_by_regex(header, wanted, exclude=exclude), (wanted, exclude)


def test_header_fields_filter_agrees_with_the_grammar_on_random_headers():
    import random
    rng = random.Random(23)
    alphabet = b"Ab:- \t\r\n\x7f\x00z"
    for _ in range(3000):
        header = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        wanted = rng.choice([["ab"], ["A b", "z"], ["-"], ["b\t"]])
        exclude = rng.random() < 0.5
        assert filter_header_fields(header, wanted, exclude=exclude) == \
            _filter_by_regex(header, wanted, exclude=exclude), (header, wanted, exclude)


_CORPUS = [
    b"",
    b"\r\n",
    b"\n",
    b"From: a\r\n\r\n",
    b"From: a\n\n",
    b"From: a",  # no line end, no empty line
    b"Subject: one\r\n two\r\n\tthree\r\nTo: b\r\n\r\nFrom: in the body\r\n",
    b"To: x\r\nTO: y\r\nto : z\r\n\r\n",  # duplicates, blank before the colon
    b"X-Other: 1\r\nReceived: a\r\n b\r\n\r\n",  # nothing wanted
    b"Subject: gr\xc3\xbc\xc3\x9fe\r\nFrom: \xe9 <e@x>\r\n\r\n",  # non-ASCII
    b"Subject: mixed\nFrom: lf\r\n\r\n",  # LF and CRLF lines together
    b"Subject: bare\rFrom: after a bare CR\r\n\r\n",
    b"Subject: cr\r\r\nFrom: after CR CR LF\r\n\r\n",
    b"Subject: last is a continuation\r\n no line end",
    b" leading continuation\r\nFrom: a\r\n\r\n",
    b"From:\r\n\r\n",
    b"From: a\r\n\r\n\r\nTo: b\r\n",
    b"Fromage: no\r\nFrom\t: yes\r\nFrom x: no\r\n\r\n",
    b"\x00From: nul\r\nFrom: \x00\r\n\r\n",
]
_LISTS = [["FROM", "TO", "CC", "SUBJECT", "DATE", "MESSAGE-ID", "CONTENT-TYPE"], ["subject"],
          ["to"], ["From", "from"], ["x bad", "a:b", "f\xe9"], [], ["x"] * 17,
          [f"x-{i}" for i in range(20)] + ["from"]]


def test_header_fields_filter_agrees_with_the_grammar_on_a_varied_corpus():
    for header in _CORPUS:
        for wanted in _LISTS:
            for exclude in (False, True):
                assert filter_header_fields(header, wanted, exclude=exclude) == \
                    _filter_by_regex(header, wanted, exclude=exclude), (header, wanted, exclude)


def test_header_fields_filter_keeps_folds_duplicates_and_line_ends():
    header = (b"Subject: one\r\n two\r\nTo: x\nReceived: r\r\n\tr2\r\nTO : y\r\n"
              b"Subject: end\r\n tail")
    assert filter_header_fields(header, ["to", "SUBJECT"]) == (
        b"Subject: one\r\n two\r\nTo: x\nTO : y\r\nSubject: end\r\n tail\r\n")
    assert filter_header_fields(b"To: a", ["to"]) == b"To: a\r\n\r\n"
    assert filter_header_fields(b"", ["to"]) == b"\r\n"


def test_header_fields_filter_is_linear_on_hostile_blocks():
    import time
    lines = [b"to" + b" " * 200_000 + b"x\r\n", b"to:" + b"a" * 200_000 + b"\r\n",
             b"t\r\n" * 100_000, (b"to: a\r\n" + b" b\r\n" * 50_000)]
    names = ["to", "t" * 1000, "t", "from"]
    started = time.process_time()
    for header in lines:
        assert filter_header_fields(header, names) == \
            _filter_by_regex(header, names)
    assert time.process_time() - started < 5
