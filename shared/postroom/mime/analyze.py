"""Parse a raw message once into MessageMeta: parts with byte offsets, envelope, search fields."""

from __future__ import annotations

import email.utils
import itertools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

from postroom.mime.addresses import parse_addresses
from postroom.mime.headers import (
    HeaderBlock,
    decode_words,
    param,
    parse_params,
    scan_header,
    to_text,
)
from postroom.mime.model import Address, Envelope, HeaderField, Limits, MessageMeta, Part

# Header fields kept for SEARCH and SORT without touching the blob again.
SEARCH_FIELDS = (
    "from", "to", "cc", "bcc", "subject", "date", "message-id", "in-reply-to", "references",
    "reply-to", "sender",
)
_IDENTITY_ENCODINGS = ("7bit", "8bit", "binary")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-z]+$")


class _TooComplex(Exception):
    """Raised when a limit is exceeded; the message falls back to a single part."""


def _text(block: HeaderBlock, name: str, limits: Limits) -> str | None:
    value = block.first(name)
    return None if value is None else to_text(value, limits.max_value_chars)


def _lines(raw: bytes, start: int, end: int) -> int:
    if end <= start:
        return 0
    count = raw.count(b"\n", start, end)
    return count if raw[end - 1] == 0x0A else count + 1


def _delimiters(
    raw: bytes, start: int, end: int, boundary: bytes
) -> tuple[list[tuple[int, int]], bool]:
    """(line start, next line start) of each delimiter line, and whether a close one was seen."""
    marker = b"--" + boundary
    found: list[tuple[int, int]] = []
    pos = start
    while True:
        i = raw.find(marker, pos, end)
        if i < 0:
            return found, False
        pos = i + len(marker)
        if i != start and raw[i - 1] != 0x0A:
            continue
        nl = raw.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl
        after = end if nl < 0 else nl + 1
        if raw.startswith(b"--", pos, line_end):
            found.append((i, after))
            return found, True
        if not raw[pos:line_end].strip(b" \t\r"):
            found.append((i, after))
            pos = after


def envelope_from(block: HeaderBlock, limits: Limits) -> Envelope:
    """The RFC 3501 ENVELOPE of a header block; sender and reply-to default to from."""
    def addrs(name: str) -> list:
        text = _text(block, name, limits)
        return parse_addresses(text) if text else []

    from_ = addrs("from")
    return Envelope(
        date=_text(block, "date", limits),
        subject=_text(block, "subject", limits),
        from_=from_,
        sender=addrs("sender") or list(from_),
        reply_to=addrs("reply-to") or list(from_),
        to=addrs("to"),
        cc=addrs("cc"),
        bcc=addrs("bcc"),
        in_reply_to=_text(block, "in-reply-to", limits),
        message_id=_text(block, "message-id", limits),
    )


class _Builder:
    def __init__(self, raw: bytes, limits: Limits) -> None:
        self.raw = raw
        self.limits = limits
        self.parts = 0
        self.defects: list[str] = []
        self.top: HeaderBlock | None = None

    def defect(self, text: str) -> None:
        if text not in self.defects:
            self.defects.append(text)

    def entity(self, start: int, end: int, depth: int, default: tuple[str, str]) -> Part:
        return self._entity(start, end, depth, default)[0]

    def _entity(
        self, start: int, end: int, depth: int, default: tuple[str, str]
    ) -> tuple[Part, HeaderBlock]:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise _TooComplex("too many parts")
        block = scan_header(self.raw, start, end, self.limits)
        if self.top is None:
            self.top = block
        for text in block.defects:
            self.defect(text)
        part = self._leaf_fields(block, end, default)
        if part.type == "multipart":
            self._multipart(part, depth)
        elif part.type == "message" and part.subtype == "rfc822":
            if part.encoding not in _IDENTITY_ENCODINGS:
                # An encoded message/rfc822 cannot be described as one in IMAP.
                self.defect("encoded message/rfc822")
                part.type, part.subtype, part.params = "application", "octet-stream", []
            else:
                if depth >= self.limits.max_depth:
                    raise _TooComplex("too deep")
                inner, inner_block = self._entity(
                    part.body_start, end, depth + 1, ("text", "plain"))
                part.children = [inner]
                part.envelope = envelope_from(inner_block, self.limits)
        part.lines = _lines(self.raw, part.body_start, part.end)
        return part, block

    def _leaf_fields(self, block: HeaderBlock, end: int, default: tuple[str, str]) -> Part:
        ctype_raw = _text(block, "content-type", self.limits)
        kind, params = parse_params(ctype_raw) if ctype_raw else ("", [])
        main, _, sub = kind.partition("/")
        main, sub = main.strip(), sub.strip()
        if not (_TOKEN.match(main) and _TOKEN.match(sub)):
            if ctype_raw is not None:
                self.defect("invalid content-type")
            # RFC 2045 section 5.2: a missing or invalid type means text/plain.
            main, sub = default
            params = params if ctype_raw is not None and main == "text" else []
            if (main, sub) == ("text", "plain") and param(params, "charset") is None:
                params = [("charset", "us-ascii"), *params]
        cte = _text(block, "content-transfer-encoding", self.limits)
        encoding = (cte or "7bit").strip().lower()
        disposition_raw = _text(block, "content-disposition", self.limits)
        disposition: str | None = None
        disposition_params: list[tuple[str, str]] = []
        if disposition_raw:
            disposition, disposition_params = parse_params(disposition_raw)
            disposition = disposition or None
        language_raw = _text(block, "content-language", self.limits)
        language = [x.strip() for x in language_raw.split(",") if x.strip()] if language_raw else []
        return Part(
            type=main, subtype=sub, params=params,
            header_start=block.start, body_start=block.body_start, end=end, lines=0,
            id=_text(block, "content-id", self.limits),
            description=_text(block, "content-description", self.limits),
            encoding=encoding or "7bit",
            md5=_text(block, "content-md5", self.limits),
            disposition=disposition, disposition_params=disposition_params,
            language=language[:16],
            location=_text(block, "content-location", self.limits),
        )

    def _as_text(self, part: Part, why: str) -> None:
        self.defect(why)
        part.type, part.subtype, part.params = "text", "plain", [("charset", "us-ascii")]

    def _multipart(self, part: Part, depth: int) -> None:
        boundary = param(part.params, "boundary")
        if not boundary:
            self._as_text(part, "multipart without boundary")
            return
        if depth >= self.limits.max_depth:
            raise _TooComplex("too deep")
        marks, closed = _delimiters(
            self.raw, part.body_start, part.end, boundary.encode("utf-8", "surrogateescape"))
        if not marks:
            self._as_text(part, "boundary not found")
            return
        if not closed:
            self.defect("missing close boundary")
        default = ("message", "rfc822") if part.subtype == "digest" else ("text", "plain")
        bounds = [(a, b) for a, b in marks]
        if not closed:
            bounds.append((part.end, part.end))
        for (_, start), (next_line, _) in itertools.pairwise(bounds):
            stop = next_line
            if next_line != part.end or closed:
                # The line break before a delimiter belongs to the delimiter.
                if stop > start and self.raw[stop - 1] == 0x0A:
                    stop -= 1
                    if stop > start and self.raw[stop - 1] == 0x0D:
                        stop -= 1
            part.children.append(self.entity(start, max(stop, start), depth + 1, default))
        if not part.children:
            # IMAP needs at least one part; describe an empty one as servers do.
            self.defect("multipart without parts")
            start = marks[0][1]
            part.children.append(Part(
                type="text", subtype="plain", params=[("charset", "us-ascii")],
                header_start=start, body_start=start, end=start, lines=0))


_DATE_ERRORS = (TypeError, ValueError, IndexError, OverflowError)


def _date_keys(date_text: str | None) -> tuple[str | None, str | None]:
    """The Date: header's instant in UTC (ISO 8601), and its calendar date as written, in its
    own zone (RFC 3501 6.4.4), from one parse.

    The instant is what ``parsedate_to_datetime`` gives, a zone-less date taken
    as UTC (``parsedate_tz`` says such a zone as 0, the same instant).
    """
    if not date_text:
        return None, None
    try:
        parts = email.utils.parsedate_tz(date_text)
    except _DATE_ERRORS:
        return None, None
    if parts is None:
        return None, None
    try:
        zone = timezone(timedelta(seconds=parts[9] or 0))
        instant: str | None = datetime(*parts[:6], tzinfo=zone).astimezone(UTC).isoformat()
    except _DATE_ERRORS:
        instant = None
    try:
        day: str | None = date(parts[0], parts[1], parts[2]).isoformat()
    except _DATE_ERRORS:
        day = None
    return instant, day


def _address_text(addrs: list[Address]) -> str:
    """Addresses as a client shows them: ``Display Name <mailbox@host>``, decoded."""
    out = []
    for a in addrs:
        if a.host is None:  # group start/end markers
            continue
        spec = f"{a.mailbox or ''}@{a.host}"
        out.append(f"{decode_words(a.name)} <{spec}>" if a.name else spec)
    return ", ".join(out)


def _display(addrs: list[Address]) -> str:
    """RFC 5957 display: the first address's decoded display name, else its addr-spec."""
    first = next((a for a in addrs if a.host is not None), None)
    if first is None:
        return ""
    if first.name and decode_words(first.name).strip():
        return " ".join(decode_words(first.name).split())
    return f"{first.mailbox or ''}@{first.host}"


def _sort_keys(envelope: Envelope, date_text: str | None,
               headers: list[HeaderField] | None = None) -> dict[str, object]:
    keys: dict[str, object] = {"date": None, "subject": "", "from": "", "to": "", "cc": ""}
    keys["date"], keys["sent_day"] = _date_keys(date_text)
    keys["subject"] = base_subject(envelope.subject or "")
    for name, addrs in (("from", envelope.from_), ("to", envelope.to), ("cc", envelope.cc)):
        first = next((a for a in addrs if a.host is not None), None)
        keys[name] = (first.mailbox or "").lower() if first else ""
    keys["display_from"] = _display(envelope.from_)
    keys["display_to"] = _display(envelope.to)
    # SEARCH FROM/TO/CC/BCC text: the decoded fields plus each address as a client shows it
    text = {}
    for name, addrs in (("from", envelope.from_), ("to", envelope.to), ("cc", envelope.cc),
                        ("bcc", envelope.bcc)):
        decoded = [h.decoded for h in headers or () if h.name == name]
        text[name] = "\n".join([*decoded, _address_text(addrs)])
    keys["text"] = text
    # what SORT and THREAD need besides: one small object to read per message
    references = next((h.raw for h in headers or () if h.name == "references"), None)
    keys["thread"] = {"subject": envelope.subject, "message_id": envelope.message_id,
                      "in_reply_to": envelope.in_reply_to, "references": references}
    return keys


_WSP = " \t"
_SPACES = re.compile(r"[ \t\r\n]+")


def _skip_wsp(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WSP:
        pos += 1
    return pos


def _blob_end(text: str, pos: int) -> int | None:
    """After ``subj-blob`` ("[" *BLOBCHAR "]" *WSP) at ``pos``, or None."""
    if pos >= len(text) or text[pos] != "[":
        return None
    close = pos + 1
    while close < len(text) and text[close] not in "[]":
        close += 1
    if close >= len(text) or text[close] != "]":
        return None
    return _skip_wsp(text, close + 1)


def _refwd_end(text: str, pos: int) -> int | None:
    """After ``subj-refwd`` (("re" / "fw" ["d"]) *WSP [subj-blob] ":") at ``pos``, or None."""
    low = text[pos:pos + 3].lower()
    if low.startswith("re"):
        pos += 2
    elif low.startswith("fwd"):
        pos += 3
    elif low.startswith("fw"):
        pos += 2
    else:
        return None
    pos = _skip_wsp(text, pos)
    after = _blob_end(text, pos)
    if after is not None:
        pos = after
    return pos + 1 if pos < len(text) and text[pos] == ":" else None


def _leader_end(text: str) -> int:
    """Length of the leading ``subj-leader`` run (WSP, or blobs then a reply marker)."""
    pos = 0
    while True:
        if pos < len(text) and text[pos] in _WSP:
            pos += 1
            continue
        probe = pos
        while (after := _blob_end(text, probe)) is not None:
            probe = after
        end = _refwd_end(text, probe)
        if end is None:
            return pos
        pos = end


def _strip_trailer(text: str) -> str:
    """Step 2: remove trailing ``(fwd)`` and white space (one backwards pass)."""
    end = len(text)
    while True:
        while end > 0 and text[end - 1] in _WSP:
            end -= 1
        if end >= 5 and text[end - 5:end].lower() == "(fwd)":
            end -= 5
            continue
        return text[:end]


def subject_base(subject: str) -> tuple[str, bool]:
    """RFC 5256 section 2.1: (base subject, whether a reply/forward marker was removed)."""
    # (1) decode, collapse white space
    text = _SPACES.sub(" ", decode_words(subject))
    reply = False
    while True:
        stripped = _strip_trailer(text)  # (2)
        reply = reply or stripped.lower() != text.rstrip(_WSP).lower()
        text = stripped
        while True:  # (5): (3) and (4) until nothing changes
            before = text
            lead = _leader_end(text)  # (3)
            if text[:lead].strip(_WSP):
                reply = True
            text = text[lead:]
            blob = _blob_end(text, 0)  # (4)
            if blob is not None and text[blob:].strip(_WSP):
                text = text[blob:]
            if text == before:
                break
        # (6) [fwd: ...]
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            reply = True
            continue
        return text.lower(), reply


def base_subject(subject: str) -> str:
    """RFC 5256 section 2.1 base subject, lower-cased (SORT and THREAD compare it so)."""
    return subject_base(subject)[0]


def reply_subject(subject: str) -> bool:
    """Whether extracting the base subject removed a reply or forward marker (RFC 5256 3)."""
    return subject_base(subject)[1]


def _search_fields(block: HeaderBlock, limits: Limits) -> list[HeaderField]:
    out = []
    for name, value in block.fields:
        if name in SEARCH_FIELDS:
            raw = to_text(value, limits.max_value_chars)
            out.append(HeaderField(name=name, raw=raw, decoded=decode_words(raw)))
    return out


def _fallback_part(raw: bytes, limits: Limits) -> tuple[Part, HeaderBlock]:
    try:
        block = scan_header(raw, 0, len(raw), limits)
    except Exception:  # noqa: BLE001 -- last resort: describe the blob as one body
        block = HeaderBlock(start=0, body_start=0)
    body_start = block.body_start
    encoding = "8bit" if any(b > 0x7F for b in raw[body_start : body_start + 65536]) else "7bit"
    part = Part(type="text", subtype="plain", params=[("charset", "us-ascii")],
                header_start=0, body_start=body_start, end=len(raw),
                lines=_lines(raw, body_start, len(raw)), encoding=encoding)
    return part, block


def _fallback(raw: bytes, limits: Limits, why: str) -> MessageMeta:
    part, block = _fallback_part(raw, limits)
    envelope = envelope_from(block, limits)
    return MessageMeta(
        size=len(raw), lines=_lines(raw, 0, len(raw)), envelope=envelope, body=part,
        headers=(fields := _search_fields(block, limits)),
        sort=_sort_keys(envelope, _text(block, "date", limits), fields),
        degraded=True, defects=[why],
    )


@dataclass(frozen=True)
class Structure:
    """The parts of a message as :func:`analyze` finds them, without what IMAP alone needs."""

    body: Part
    degraded: bool
    defects: list[str]


def analyze_structure(raw: bytes, limits: Limits | None = None) -> Structure:
    """``analyze(raw).body``, ``.degraded`` and ``.defects``, and nothing else.

    For callers that judge the parts (the attachment policy): the top-level
    ENVELOPE, SORT keys and SEARCH fields, a third of :func:`analyze`'s work on
    a small message, are not computed. Never raises.
    """
    limits = limits or Limits()
    raw = bytes(raw)
    builder = _Builder(raw, limits)
    try:
        body = builder.entity(0, len(raw), 0, ("text", "plain"))
    except _TooComplex as exc:
        return Structure(_fallback_part(raw, limits)[0], True, [str(exc)])
    except Exception as exc:  # noqa: BLE001 -- mail is never rejected for being odd
        return Structure(_fallback_part(raw, limits)[0], True,
                         [f"parser error: {type(exc).__name__}"])
    assert builder.top is not None
    if not builder.top.fields:
        builder.defect("no header fields")
    return Structure(body, bool(builder.defects), builder.defects)


def analyze(raw: bytes, limits: Limits | None = None) -> MessageMeta:
    """Describe ``raw`` for IMAP; never raises, odd mail gets ``degraded=True`` metadata."""
    limits = limits or Limits()
    raw = bytes(raw)
    builder = _Builder(raw, limits)
    try:
        body = builder.entity(0, len(raw), 0, ("text", "plain"))
    except _TooComplex as exc:
        return _fallback(raw, limits, str(exc))
    except Exception as exc:  # noqa: BLE001 -- mail is never rejected for being odd
        return _fallback(raw, limits, f"parser error: {type(exc).__name__}")
    top = builder.top
    assert top is not None
    if not top.fields:
        builder.defect("no header fields")
    envelope = envelope_from(top, limits)
    return MessageMeta(
        size=len(raw),
        lines=_lines(raw, 0, len(raw)),
        envelope=envelope,
        body=body,
        headers=(fields := _search_fields(top, limits)),
        sort=_sort_keys(envelope, _text(top, "date", limits), fields),
        degraded=bool(builder.defects),
        defects=builder.defects,
    )
