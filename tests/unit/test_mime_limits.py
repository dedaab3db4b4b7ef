"""postroom.mime: hostile messages stay within limits and still get usable metadata."""

from postroom.mime import Limits, analyze, render_bodystructure, render_envelope, section_range


def nested(depth: int) -> bytes:
    head = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(depth - 1)) + b"--b%d\r\n\r\nleaf" % (depth - 1)
    tail = b"".join(b"\r\n--b%d--" % i for i in reversed(range(depth)))
    return b"Subject: deep\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n" + head + tail


def test_deep_nesting_falls_back_to_single_text_part():
    raw = nested(1000)
    meta = analyze(raw)
    assert meta.degraded and meta.defects == ["too deep"]
    assert meta.body.children == []
    assert render_bodystructure(meta, extended=False).startswith(b'("text" "plain"')
    assert meta.envelope.subject == "deep"


def test_nesting_within_limit_is_kept():
    meta = analyze(nested(5))
    assert not meta.degraded
    node, depth = meta.body, 0
    while node.children:
        node, depth = node.children[0], depth + 1
    assert depth == 5 and node.type == "text"


def test_too_many_parts_falls_back_to_single_text_part():
    parts = b"--p\r\n\r\nx\r\n" * 5000
    raw = b"Content-Type: multipart/mixed; boundary=p\r\n\r\n" + parts + b"--p--\r\n"
    meta = analyze(raw, Limits(max_parts=1000))
    assert meta.degraded and meta.defects == ["too many parts"]
    assert section_range(meta, (1,)) == (meta.body.body_start, len(raw))


def test_many_header_fields_are_capped():
    raw = b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"Subject: late\r\n\r\nbody"
    meta = analyze(raw, Limits(max_headers=100))
    assert meta.degraded and "too many header fields" in meta.defects
    assert meta.body.body_start == raw.index(b"\r\n\r\n") + 4


def test_huge_header_block_is_scanned_to_its_end():
    raw = b"Subject: big\r\n" + b"X: " + b"a" * 600_000 + b"\r\n\r\nbody"
    meta = analyze(raw, Limits(max_header_bytes=64 * 1024))
    assert meta.degraded
    assert raw[meta.body.body_start :] == b"body"
    assert len(meta.envelope.subject or "") < 100


def test_single_huge_line_body_is_measured():
    raw = b"Subject: long\r\n\r\n" + b"x" * 5_000_000
    meta = analyze(raw)
    assert meta.body.size == 5_000_000 and meta.body.lines == 1


def test_prototype_style_header_names_are_just_names():
    raw = b"__proto__: x\r\nconstructor: y\r\nSubject: ok\r\n\r\nbody"
    meta = analyze(raw)
    assert meta.envelope.subject == "ok" and not meta.degraded


def test_shell_metacharacters_in_filenames_are_quoted_data():
    raw = (b'Content-Type: multipart/mixed; boundary=s\r\n\r\n--s\r\nContent-Type: application/zip;'
           b' name="$(rm -rf ~);`id`.zip"\r\n'
           b'Content-Disposition: attachment; filename="a;b\\"c.zip"'
           b"\r\n\r\nUEsDBA==\r\n--s--\r\n")
    body = render_bodystructure(analyze(raw), extended=True)
    assert b'("name" "$(rm -rf ~);`id`.zip")' in body
    assert b'("filename" "a;b\\"c.zip")' in body


def test_invalid_charset_in_encoded_word_does_not_fail():
    meta = analyze(b"Subject: =?x-no-such?q?caf=E9?= =?utf-8?b?!!!?=\r\n\r\n")
    assert meta.header_values("subject")[0].startswith("caf")
    assert render_envelope(meta)


def test_bare_cr_in_header_value_is_sent_as_literal():
    meta = analyze(b"Subject: a\rb\r\n\r\n")
    assert b"{3}\r\na\rb" in render_envelope(meta)
