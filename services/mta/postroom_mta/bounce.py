"""Delivery status notifications (RFC 3464): pure builders of the DSN bytes and their inputs.

A DSN is ``multipart/report; report-type=delivery-status`` (RFC 6522) with
three parts: a human-readable explanation, the ``message/delivery-status``
fields (per message, then per recipient), and the original message
(``message/rfc822``) or only its header (``text/rfc822-headers``).

Decisions, after Postfix:

* RET=FULL returns the whole message, RET=HDRS only its header; without RET
  the whole message is returned up to :data:`DEFAULT_FULL_LIMIT` bytes and
  only the header above. A "delayed" DSN always carries only the header
  (RFC 3461 section 4.3: RET concerns failure reports).
* NOTIFY (RFC 3461 section 4.1) absent means FAILURE (and no DELAY notice);
  NEVER means no DSN at all.
* Errors are kept in the spool as one line (``spool_recipients.last_error``);
  :func:`format_error` writes it, :func:`diagnose` reads Status,
  Remote-MTA and Diagnostic-Code back from it, so a bounce can be made from
  the spool alone (also for failures recorded by the mda).
* The DSN comes from ``MAILER-DAEMON@<hostname>`` with ``Auto-Submitted:
  auto-replied`` (RFC 3834) and is sent from the null reverse-path; the
  callers never make one for a message whose own sender is null.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

# without RET, larger messages come back as their header only (Postfix bounce_size_limit)
DEFAULT_FULL_LIMIT = 100 * 1024
# a Diagnostic-Code or human-readable line stays well under the 998-octet line limit
MAX_FIELD_CHARS = 900

FAILED = "failed"
DELAYED = "delayed"

_NOTIFY_VALUES = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
_REPLY_RE = re.compile(r"^([245])(\d\d)(?:[ -]+([245]\.\d{1,3}\.\d{1,3}))?(?:\s|$)")
_REMOTE_RE = re.compile(r"^host (\S+?)\[([^\]]*)\] said: (.*?)(?: \(in reply to [^)]*\))?$",
                        re.S)
_ADDR_TYPE_RE = re.compile(r"^([A-Za-z0-9-]+);(.*)$", re.S)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")
# the SMTP client's stage names, as the command a reply answered (Postfix's wording)
_STAGES = {"mail": "MAIL FROM command", "rcpt": "RCPT TO command", "data": "DATA command",
           "data-init": "DATA command", "data-block": "end of DATA command",
           "data-end": "end of DATA command", "bdat": "BDAT command"}


@dataclass(frozen=True)
class Diagnosis:
    """What a DSN says about one recipient's error."""

    status: str  # enhanced status code, e.g. "5.1.1"
    text: str  # the reply or local error, one line
    remote_mta: str | None = None  # the MX host name that said it, when a server did
    remote: bool = False


@dataclass(frozen=True)
class DSNRecipient:
    """One recipient reported in a DSN."""

    address: str
    error: str  # as stored in the spool (see format_error)
    orcpt: str | None = None
    action: str = FAILED
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None  # for "delayed"


@dataclass(frozen=True)
class Original:
    """The message a DSN reports on, and its envelope."""

    queue_id: str
    mail_from: str
    message: bytes
    received_at: datetime
    envid: str | None = None
    ret: str | None = None  # "FULL", "HDRS" or None


def clean(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """One line without control characters, at most ``limit`` characters."""
    line = _CONTROL_RE.sub(" ", text).strip()
    return line if len(line) <= limit else line[:limit - 3] + "..."


def notify_set(notify: str | Sequence[str] | None) -> frozenset[str]:
    """The NOTIFY keywords as stored in the spool (``"FAILURE,DELAY"``); absent -> FAILURE."""
    if notify is None or notify == "":
        return frozenset({"FAILURE"})
    items = notify.split(",") if isinstance(notify, str) else list(notify)
    found = frozenset(i.strip().upper() for i in items if i.strip()) & _NOTIFY_VALUES
    return found or frozenset({"FAILURE"})


def notify_tuple(notify: str | None) -> tuple[str, ...] | None:
    """NOTIFY for the SMTP client to pass on (None when the sender gave none)."""
    if not notify:
        return None
    return tuple(sorted(notify_set(notify)))


def wants_failure(notify: str | None) -> bool:
    """Whether a failure DSN is asked for (the default)."""
    return "FAILURE" in notify_set(notify)


def wants_delay(notify: str | None) -> bool:
    """Whether a delay notice is asked for (only when NOTIFY names DELAY, RFC 3461 4.1)."""
    return "DELAY" in notify_set(notify)


def orcpt_address(orcpt: str | None) -> str | None:
    """The address of an ORCPT as stored (``bob@x`` or ``rfc822;bob@x``)."""
    if not orcpt:
        return None
    match = _ADDR_TYPE_RE.match(orcpt)
    return match.group(2).strip() if match else orcpt.strip()


def format_error(text: str, *, host: str | None = None, address: str | None = None,
                 stage: str | None = None, remote: bool = False) -> str:
    """The spool's ``last_error`` for one result: a remote reply names the host that said it."""
    text = clean(text, 1500)
    if remote and host:
        where = f" (in reply to {_STAGES.get(stage, stage)})" if stage else ""
        return f"host {clean(host, 255)}[{clean(address or '', 64)}] said: {text}{where}"
    return text


def diagnose(error: str | None, *, action: str = FAILED) -> Diagnosis:
    """Status, remote host and text from a stored error (see :func:`format_error`)."""
    text = clean(error or "")
    remote_mta = None
    match = _REMOTE_RE.match(text)
    if match:
        remote_mta, text = match.group(1), match.group(3)
    reply = _REPLY_RE.match(text)
    if reply and reply.group(3):
        status = reply.group(3)
    elif reply:
        status = f"{reply.group(1)}.0.0"
    else:
        status = "4.0.0" if action == DELAYED else "5.0.0"
    return Diagnosis(status=status, text=text or "unknown error", remote_mta=remote_mta,
                     remote=match is not None)


def header_block(message: bytes) -> bytes:
    """The header section of a message (without the blank line), CRLF-terminated."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = message.find(sep)
        if end >= 0:
            return _crlf(message[:end]) + b"\r\n"
    return _crlf(message.rstrip(b"\r\n")) + b"\r\n"


def returns_full(original: Original, action: str, full_limit: int = DEFAULT_FULL_LIMIT) -> bool:
    """Whether the DSN carries the whole message (else only its header)."""
    if action != FAILED or original.ret == "HDRS":
        return False
    if original.ret == "FULL":
        return True
    return len(original.message) <= full_limit


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def _address_field(address: str) -> str:
    kind = "rfc822" if address.isascii() else "utf-8"
    return f"{kind}; {clean(address, 500)}"


def _xtext(value: str) -> str:
    # RFC 3461 4.2: '+', '=' and anything outside ! .. ~ as +HH
    return "".join(c if "!" <= c <= "~" and c not in "+=" else
                   "".join(f"+{b:02X}" for b in c.encode("utf-8")) for c in value)


def _human(original: Original, recipients: Sequence[DSNRecipient], hostname: str,
           action: str) -> str:
    lines = [f"This is the mail system at host {hostname}.", ""]
    if action == FAILED:
        lines += ["Your message could not be delivered to one or more recipients.",
                  "It is attached below.", "",
                  "For further assistance, please send mail to postmaster.", ""]
    else:
        lines += ["Your message could not be delivered yet to one or more recipients.",
                  "The mail system will keep trying; you do not need to send it again.", ""]
    for rcpt in recipients:
        lines.append(f"<{clean(rcpt.address, 500)}>: {clean(rcpt.error)}")
        if rcpt.will_retry_until is not None:
            lines.append(f"    (retried until {format_datetime(rcpt.will_retry_until)})")
    lines.append("")
    lines.append(f"Queue ID: {original.queue_id}")
    return "\r\n".join(lines) + "\r\n"


def _status_fields(original: Original, recipients: Sequence[DSNRecipient],
                   hostname: str) -> str:
    per_message = [f"Reporting-MTA: dns; {hostname}", f"X-Postroom-Queue-ID: {original.queue_id}"]
    if original.envid:
        per_message.append(f"Original-Envelope-Id: {_xtext(original.envid)}")
    per_message.append(f"Arrival-Date: {format_datetime(original.received_at)}")
    blocks = ["\r\n".join(per_message)]
    for rcpt in recipients:
        why = diagnose(rcpt.error, action=rcpt.action)
        fields = [f"Final-Recipient: {_address_field(rcpt.address)}"]
        orcpt = orcpt_address(rcpt.orcpt)
        if orcpt:
            fields.append(f"Original-Recipient: {_address_field(orcpt)}")
        fields += [f"Action: {rcpt.action}", f"Status: {why.status}"]
        if why.remote_mta:
            fields.append(f"Remote-MTA: dns; {why.remote_mta}")
        # RFC 3464 2.3.6: "smtp" only for what an SMTP server said; our own errors get an X- type
        fields.append(f"Diagnostic-Code: {'smtp' if why.remote else 'X-Postroom'}; {why.text}")
        if rcpt.last_attempt is not None:
            fields.append(f"Last-Attempt-Date: {format_datetime(rcpt.last_attempt)}")
        if rcpt.will_retry_until is not None:
            fields.append(f"Will-Retry-Until: {format_datetime(rcpt.will_retry_until)}")
        blocks.append("\r\n".join(fields))
    return "\r\n\r\n".join(blocks) + "\r\n"


def build_dsn(original: Original, recipients: Sequence[DSNRecipient], *, hostname: str,
              now: datetime, full_limit: int = DEFAULT_FULL_LIMIT,
              boundary: str | None = None) -> bytes:
    """The DSN message (CRLF lines) reporting ``recipients``, all of one action."""
    if not recipients:
        raise ValueError("a DSN reports at least one recipient")
    actions = {r.action for r in recipients}
    if len(actions) != 1 or not actions <= {FAILED, DELAYED}:
        raise ValueError("a DSN reports recipients of one action, failed or delayed")
    action = actions.pop()
    hostname = clean(hostname, 255)
    full = returns_full(original, action, full_limit)
    attached = _crlf(original.message) if full else header_block(original.message)
    if not attached.endswith(b"\r\n"):
        attached += b"\r\n"
    boundary = boundary or f"=_{secrets.token_hex(12)}"
    while boundary.encode() in attached:  # vanishingly rare, but a clash breaks the MIME
        boundary = f"=_{secrets.token_hex(12)}"
    human = _human(original, recipients, hostname, action)
    subject = ("Undelivered Mail Returned to Sender" if action == FAILED
               else "Delayed Mail (still being retried)")
    headers = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{clean(original.mail_from, 500)}>",
        f"Subject: {subject}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{original.queue_id}.{secrets.token_hex(6)}.dsn@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    human_cte = "7bit" if human.isascii() else "8bit"
    attached_cte = "7bit" if attached.isascii() else "8bit"
    attached_type = "message/rfc822" if full else "text/rfc822-headers"
    head = "\r\n".join(headers) + "\r\n\r\n" + "This is a MIME-encapsulated message.\r\n\r\n"
    parts = [
        head.encode("utf-8"),
        (f"--{boundary}\r\nContent-Description: Notification\r\n"
         f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {human_cte}"
         f"\r\n\r\n{human}\r\n").encode(),
        (f"--{boundary}\r\nContent-Description: Delivery report\r\n"
         f"Content-Type: message/delivery-status\r\n\r\n"
         f"{_status_fields(original, recipients, hostname)}\r\n").encode(),
        (f"--{boundary}\r\nContent-Description: "
         f"{'Undelivered message' if full else 'Message headers'}\r\n"
         f"Content-Type: {attached_type}\r\nContent-Transfer-Encoding: {attached_cte}"
         f"\r\n\r\n").encode(),
        attached,
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts)
