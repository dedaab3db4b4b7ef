"""The attachment policy: blocked file types, deceptive names, lying types, archives, bombs.

:func:`check` walks the message with :func:`postroom.mime.analyze_structure` (bounded
in depth, parts and header bytes), decodes each leaf part's body in memory
and judges every attachment, and every member of every archive inside one
(:mod:`.archives`), by the same rules:

* its name (:mod:`.filenames`): a blocked extension
  (``POSTROOM_ATTACHMENT_BLOCKED_EXTENSIONS``), a double extension such as
  ``invoice.pdf.exe``, bidi controls, invisible characters, look-alike dots
  or padding that hide the real extension; a NUL in a name is judged both
  as written and as cut there (what C-string code sees);
* its content: the magic bytes of executables, shortcuts, disk images and
  the like (our own short table, and puremagic's for everything else)
  block a file whatever it is called, so a ``.pdf`` that is a PE executable
  is refused;
* archives: bombs are blocked; encrypted archives, formats we cannot open
  (rar, ...) and archives past a limit follow the "cannot inspect" policy.

Blocked files get ``POSTROOM_ATTACHMENT_BLOCKED_ACTION`` (reject by default),
uninspectable ones ``POSTROOM_ATTACHMENT_UNINSPECTABLE_ACTION`` (quarantine).
Names are data here, never paths or commands: nothing from the message
reaches a file name, a shell or a subprocess.
"""

from __future__ import annotations

import binascii
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from postroom.config import ATTACHMENT_BLOCKED_DEFAULT, Settings
from postroom.logs import get_logger
from postroom.mime import Limits as MimeLimits
from postroom.mime import Part, analyze_structure
from postroom_dmarc.content import ContentResult, archives
from postroom_dmarc.content.filenames import FileName, inspect_name, part_filename

if TYPE_CHECKING:
    from postroom_dmarc.verdict import CheckRequest

log = get_logger("attachments")

CHECK = "attachments"

# the default of POSTROOM_ATTACHMENT_BLOCKED_EXTENSIONS, declared once in postroom.config
DEFAULT_BLOCKED = tuple(ATTACHMENT_BLOCKED_DEFAULT.split(","))
# what a double extension pretends to be (the first of two: "invoice.pdf.exe")
_DECOYS = frozenset({
    "pdf", "doc", "docx", "docm", "xls", "xlsx", "xlsm", "ppt", "pptx", "odt", "ods", "rtf",
    "txt", "csv", "jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "mp3", "mp4", "avi", "mov",
    "wav", "zip", "rar", "7z", "html", "htm", "xml", "eml", "msg", "ics", "vcf",
})
# tricks that hide what a file is; the others (control characters, a path) are only noted
_DECEPTIVE = {"bidi control characters": "bidi",
              "invisible characters": "invisible characters",
              "look-alike dot": "look-alike dot",
              "padding before the extension": "padding"}

MAX_SHOWN = 60  # characters of a name in a reason
# the API's answers from the DNS cache stop there too (postroom_dmarc.verdict)
INLINE_MAX_MESSAGE = 128 * 1024
MAX_DETAILS = 50  # attachments and findings listed in the trace details


@dataclass(frozen=True)
class Policy:
    """The attachment policy (POSTROOM_ATTACHMENT_*)."""

    enabled: bool = True
    blocked_extensions: frozenset[str] = frozenset(DEFAULT_BLOCKED)
    blocked_action: str = "reject"
    uninspectable_action: str = "quarantine"
    limits: archives.Limits = field(default_factory=archives.Limits)
    mime: MimeLimits = field(default_factory=MimeLimits)


def policy_from_settings(settings: Settings) -> Policy:
    """The policy from POSTROOM_ATTACHMENT_* (checked by postroom.config)."""
    limits = archives.Limits(max_depth=settings.attachment_max_depth,
                             max_members=settings.attachment_max_members,
                             max_total_size=settings.attachment_max_uncompressed,
                             max_ratio=settings.attachment_max_ratio,
                             time_budget=settings.attachment_time_budget)
    return Policy(enabled=settings.attachment_policy,
                  blocked_extensions=frozenset(settings.attachment_blocked_extensions),
                  blocked_action=settings.attachment_blocked_action,
                  uninspectable_action=settings.attachment_uninspectable_action,
                  limits=limits)


class AttachmentCheck:
    """The attachment policy as a content check of ``/v1/check``."""

    name = CHECK

    def __init__(self, policy: Policy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock

    def inline(self, request: CheckRequest) -> ContentResult | None:
        """The answer for a small message with nothing to decode (text parts only), else None."""
        if not self.policy.enabled:
            return ContentResult(CHECK, "accept", details={"category": "off"})
        if len(request.message) > INLINE_MAX_MESSAGE:
            return None
        meta = analyze_structure(request.message, self.policy.mime)
        if meta.degraded and meta.defects and meta.defects[0] in ("too many parts", "too deep"):
            return None
        if any(_needs_inspection(part) or part.encoding not in ("7bit", "8bit", "binary")
               for part in _leaves(meta.body)):
            return None  # something to decode or judge
        if _UUBEGIN.search(request.message):
            return None  # a uuencoded file's name to judge
        return ContentResult(CHECK, "accept", details={"attachments": [], "findings": [],
                                                       "archive_bytes": 0, "category": "clean"})

    def run(self, request: CheckRequest, deadline: float) -> ContentResult:
        # the check's own budget, and never past the API's deadline
        budget_end = min(deadline, self.clock() + self.policy.limits.time_budget)
        result = check(request.message, self.policy, clock=self.clock, deadline=budget_end)
        if result.action != "accept":
            log.info("attachment refused", queue_id=request.queue_id, action=result.action,
                     category=result.details.get("category"), reason=result.reason)
        return result


@dataclass
class _Finding:
    severity: str  # "blocked" or "uninspectable"
    category: str  # a small fixed set, the metrics label
    attachment: str
    what: str


@dataclass
class _Walk:
    policy: Policy
    budget: archives.Budget
    findings: list[_Finding] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)


# --- content types, by magic bytes


def _pe(head: bytes) -> bool:
    if not head.startswith(b"MZ") or len(head) < 0x40:
        return head.startswith(b"MZ") and len(head) >= 2
    offset = int.from_bytes(head[0x3C:0x40], "little")
    if offset + 4 <= len(head):
        return head[offset:offset + 4] == b"PE\x00\x00"
    return True  # a DOS header whose PE header is past what we kept: still an executable


_DANGEROUS: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("a Windows executable", _pe),
    ("an ELF executable", lambda h: h.startswith(b"\x7fELF")),
    ("a Mach-O executable", lambda h: h[:4] in (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf",
                                              b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe")),
    ("a Windows shortcut", lambda h: h.startswith(b"\x4c\x00\x00\x00\x01\x14\x02\x00")),
    ("a compiled HTML help file", lambda h: h.startswith(b"ITSF\x03\x00\x00\x00")),
    ("a disk image", lambda h: h.startswith(b"conectix") or h.startswith(b"vhdxfile")
     or any(h.startswith(b"CD001", off) for off in (0x8001, 0x8801, 0x9001))),
    ("a registry file", lambda h: h.startswith(b"REGEDIT4") or h.startswith(
        b"Windows Registry Editor") or h.startswith(
        "Windows Registry Editor".encode("utf-16-le"), 2)),
)


def dangerous_type(head: bytes) -> str | None:
    """What kind of dangerous file ``head`` starts, or None."""
    for label, test in _DANGEROUS:
        if test(head):
            return label
    return None


def detected_extension(head: bytes) -> str | None:
    """puremagic's best guess of the type (an extension without the dot), or None."""
    import puremagic  # pure Python; its signature table loads on first use
    if not head:
        return None
    try:
        guess = puremagic.from_string(head[:archives.HEAD])
    except (puremagic.PureError, ValueError):
        return None
    return guess.lstrip(".").lower() or None


# --- names and bodies


def shown(text: str) -> str:
    """A name as it may appear in an SMTP reply: printable ASCII, quotes escaped, cut short."""
    out: list[str] = []
    for ch in text[:MAX_SHOWN]:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    return "".join(out) + ("..." if len(text) > MAX_SHOWN else "")


def _name_problem(name: FileName, blocked: frozenset[str]) -> tuple[str, str] | None:
    """(category, what) when the name alone blocks the file."""
    for trick in name.tricks:
        if trick in _DECEPTIVE:
            return _DECEPTIVE[trick].replace(" ", "_"), f"deceptive name ({trick})"
    ext = name.extension
    if ext in blocked:
        if len(name.extensions) >= 2 and name.extensions[-2] in _DECOYS:
            return "double_extension", f"double extension .{shown(name.extensions[-2])}.{ext}"
        return "blocked_extension", f"blocked file type .{ext}"
    return None


def _names(raw: str) -> list[FileName]:
    names = [inspect_name(raw)]
    if "\x00" in raw:
        names.append(inspect_name(raw.split("\x00", 1)[0]))  # what C-string code would see
    return names


def _decode_body(message: bytes, part: Part) -> bytes:
    body = message[part.body_start:part.end]
    if part.encoding == "base64":
        cleaned = body.translate(None, b" \t\r\n")
        cleaned = cleaned[: len(cleaned) - len(cleaned) % 4]
        try:
            return binascii.a2b_base64(cleaned)
        except binascii.Error:
            return b""
    if part.encoding == "quoted-printable":
        return binascii.a2b_qp(body)
    return body


def _leaves(part: Part) -> Iterator[Part]:
    stack = [part]
    while stack:
        current = stack.pop()
        if current.children:
            stack.extend(reversed(current.children))
        else:
            yield current


# --- the check


def _judge(walk: _Walk, where: str, names: list[FileName], head: bytes) -> None:
    policy = walk.policy
    for name in names:
        problem = _name_problem(name, policy.blocked_extensions)
        if problem is not None:
            walk.findings.append(_Finding("blocked", problem[0], where, problem[1]))
            return
    danger = dangerous_type(head)
    ext = names[0].extension if names else ""
    if danger is not None:
        named = f" named .{shown(ext)}" if ext else ""
        walk.findings.append(_Finding("blocked", "type_mismatch", where,
                                      f"content is {danger}{named}"))
        return
    detected = detected_extension(head)
    if detected is not None and detected in policy.blocked_extensions:
        named = shown(ext) if ext else "(none)"
        walk.findings.append(_Finding("blocked", "type_mismatch", where,
                                      f"content is .{detected} named .{named}"))


def _needs_inspection(part: Part) -> bool:
    """Every part but a text part without a file name (and empty multiparts) is judged."""
    if part.type == "multipart":
        return False
    return not (part.type == "text" and
                part_filename(part.disposition_params, part.params) is None)


def _attachment(walk: _Walk, message: bytes, part: Part) -> None:
    if not _needs_inspection(part):
        return
    raw_name = part_filename(part.disposition_params, part.params)
    walk.budget.tick()
    names = _names(raw_name) if raw_name else []
    label = names[0].shown if names else f"{part.type}/{part.subtype} part"
    body = _decode_body(message, part)
    head = body[:0x9010]  # the ISO 9660 signature sits at 32 KiB
    entry: dict[str, Any] = {"name": shown(label), "type": f"{part.type}/{part.subtype}",
                             "size": len(body)}
    if names and names[0].tricks:
        entry["tricks"] = list(names[0].tricks)
    before = len(walk.findings)
    _judge(walk, label, names, head)
    kind = archives.sniff(head[:archives.HEAD])
    if kind is not None:
        report = archives.inspect(body, label, walk.budget)
        entry["archive"] = report.kinds
        entry["members"] = len(report.members)
        for member in report.members:
            if len(walk.findings) > before:
                break  # the first problem of an attachment is its reason
            if not member.encrypted:
                _judge(walk, member.path, [member.name], member.head)
            else:
                problem = _name_problem(member.name, walk.policy.blocked_extensions)
                if problem is not None:
                    walk.findings.append(_Finding("blocked", problem[0], member.path,
                                                  problem[1]))
        for finding in report.findings:
            if finding.kind == "bomb":
                walk.findings.append(_Finding("blocked", "archive_bomb", finding.where,
                                              finding.what))
            else:
                category = "encrypted" if "encrypted" in finding.what else "uninspectable"
                walk.findings.append(_Finding("uninspectable", category, finding.where,
                                              finding.what))
    if len(walk.attachments) < MAX_DETAILS:
        walk.attachments.append(entry)


def check(message: bytes, policy: Policy, *, clock: Callable[[], float] = time.monotonic,
          deadline: float = 0.0) -> ContentResult:
    """The attachment verdict for one message (blocking, CPU-bound: run it in a pool)."""
    if not policy.enabled:
        return ContentResult(CHECK, "accept", details={"category": "off"})
    walk = _Walk(policy, archives.Budget(policy.limits, clock, deadline))
    try:
        _walk_message(walk, message, 0)
    except archives.Stop as stop:
        walk.findings.append(_Finding(
            "blocked" if stop.kind == "bomb" else "uninspectable",
            "archive_bomb" if stop.kind == "bomb" else "uninspectable", "message",
            stop.what))
    return _result(walk)


MAX_ENCLOSED = 3  # base64-encoded message/rfc822 parts opened inside one another


def _walk_message(walk: _Walk, message: bytes, enclosed: int) -> None:
    meta = analyze_structure(message, walk.policy.mime)
    complex_ = meta.degraded and any(d in ("too many parts", "too deep") or
                                     d.startswith("parser error") for d in meta.defects)
    if complex_:
        walk.findings.append(_Finding("uninspectable", "uninspectable", "message",
                                      f"MIME structure cannot be inspected ({meta.defects[0]})"))
        return
    for part in _leaves(meta.body):
        if _encoded_message(message, part):
            # postroom.mime describes an encoded message/rfc822 as application/octet-stream
            # (IMAP cannot show it as a message); clients still open it and its attachments
            if enclosed >= MAX_ENCLOSED:
                walk.findings.append(_Finding("uninspectable", "uninspectable", "message",
                                              "forwarded messages nested too deep"))
                continue
            walk.budget.tick()
            _walk_message(walk, _decode_body(message, part), enclosed + 1)
            continue
        _attachment(walk, message, part)
        if part.type == "text":
            _uuencoded_names(walk, message, part)


def _encoded_message(message: bytes, part: Part) -> bool:
    if (part.type, part.subtype) != ("application", "octet-stream") or \
            part.encoding in ("7bit", "8bit", "binary"):
        return False
    header = message[part.header_start:part.body_start].lower()
    return b"message/rfc822" in header and b"content-type" in header


# "begin 644 name" starts a uuencoded file in a text body; several clients still decode it
_UUBEGIN = re.compile(rb"^begin(?:-base64)? [0-7]{3,4} ([^\r\n]{1,1024})\r?$", re.M)
MAX_UUENCODED = 20


def _uuencoded_names(walk: _Walk, message: bytes, part: Part) -> None:
    body = _decode_body(message, part)
    if b"begin" not in body:
        return
    for count, match in enumerate(_UUBEGIN.finditer(body)):
        if count >= MAX_UUENCODED:
            break
        raw = match.group(1).decode("utf-8", "replace")
        names = _names(raw)
        problem = _name_problem(names[0], walk.policy.blocked_extensions)
        if problem is not None:
            walk.findings.append(_Finding("blocked", problem[0], f"uuencoded {names[0].shown}",
                                          problem[1]))


def _result(walk: _Walk) -> ContentResult:
    policy = walk.policy
    details: dict[str, Any] = {
        "attachments": walk.attachments,
        "findings": [{"severity": f.severity, "category": f.category,
                      "attachment": shown(f.attachment), "what": f.what}
                     for f in walk.findings[:MAX_DETAILS]],
        "archive_bytes": walk.budget.bytes_read,
    }
    for severity, action in (("blocked", policy.blocked_action),
                             ("uninspectable", policy.uninspectable_action)):
        first = next((f for f in walk.findings if f.severity == severity), None)
        if first is None:
            continue
        details["category"] = first.category
        verb = "blocked" if severity == "blocked" else "not inspected"
        reason = f'attachment "{shown(first.attachment)}" {verb}: {first.what}'
        if action == "accept":
            continue
        return ContentResult(CHECK, action, reason, details=details)
    details.setdefault("category", "clean")
    return ContentResult(CHECK, "accept", details=details)
