"""Vacation auto-replies: when one may be sent (RFC 3834, RFC 5230) and the reply itself.

Pure functions; the once-per-sender-per-N-days limit is kept in the store by
delivery. A reply goes out with the null reverse-path and ``Auto-Submitted:
auto-replied``, so it is never answered in turn.
"""

from __future__ import annotations

import re
from datetime import datetime
from email import message_from_string
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from postroom.mime.addresses import parse_addresses
from postroom.rules import MessageFacts, Vacation

# RFC 5230 4.6 and RFC 3834 2: senders that are programs, not people
_ROBOT_LOCALPARTS = re.compile(
    r"^(owner-.*|.*-request|mailer-daemon|postmaster|listserv|majordomo|noreply|no-reply"
    r"|.*-bounces?)$", re.I)
_BULK_PRECEDENCE = ("bulk", "list", "junk")
_RECIPIENT_FIELDS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,250}>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
MAX_SUBJECT = 200


def _addresses(facts: MessageFacts, names: tuple[str, ...]) -> set[str]:
    found = set()
    for name in names:
        for value in facts.values(name):
            for addr in parse_addresses(value):
                if addr.mailbox and addr.host:
                    found.add(f"{addr.mailbox}@{addr.host}".lower())
    return found


def skip_reason(facts: MessageFacts, account: str, vacation: Vacation) -> str | None:
    """Why no vacation reply may be sent for this message, or None when one may."""
    sender = facts.envelope_from.strip().lower()
    if not sender:
        return "null sender"
    localpart = sender.rsplit("@", 1)[0]
    if _ROBOT_LOCALPARTS.match(localpart):
        return "sender is a program"
    mine = {account.lower(), *vacation.addresses}
    if sender in mine:
        return "sender is the account"
    auto = [v.strip().lower() for v in facts.values("auto-submitted")]
    if any(v and not v.startswith("no") for v in auto):
        return "auto-submitted"
    if any(name.startswith("list-") for name, _ in facts.headers):
        return "mailing list"
    if any(v.strip().lower() in _BULK_PRECEDENCE for v in facts.values("precedence")):
        return "bulk precedence"
    # RFC 5230 4.5: reply only when the account is named in a recipient header, so
    # Bcc'd list traffic and spam to guessed addresses get no answer
    if not mine & _addresses(facts, _RECIPIENT_FIELDS):
        return "not addressed to the account"
    return None


def _one_line(text: str) -> str:
    return _CONTROL.sub(" ", text).strip()[:MAX_SUBJECT]


def build_reply(facts: MessageFacts, account: str, vacation: Vacation, *, hostname: str,
                now: datetime) -> bytes:
    """The RFC 3834 reply to ``facts.envelope_from`` (bytes, CRLF line ends)."""
    original_subject = _one_line((facts.values("subject") or [""])[0])
    subject = vacation.subject or (f"Auto: {original_subject}" if original_subject
                                   else "Automatic reply")
    reply = EmailMessage(policy=SMTP)
    reply["From"] = _one_line(vacation.sender) if vacation.sender else account
    reply["To"] = _one_line(facts.envelope_from)
    reply["Subject"] = _one_line(subject)
    reply["Date"] = format_datetime(now)
    reply["Message-ID"] = make_msgid(domain=_one_line(hostname) or "localhost")
    reply["Auto-Submitted"] = "auto-replied (vacation)"
    original_id = (facts.values("message-id") or [""])[0].strip()
    if _MESSAGE_ID.fullmatch(original_id):
        reply["In-Reply-To"] = original_id
        reply["References"] = original_id
    if vacation.mime:
        _mime_content(reply, vacation.reason)
    else:
        reply.set_content(vacation.reason)
    return reply.as_bytes()


def _mime_content(reply: EmailMessage, entity: str) -> None:
    """The reason as a MIME entity (RFC 5230 :mime): its Content-* fields and its body."""
    part = message_from_string(entity.replace("\r\n", "\n"), policy=SMTP)
    kept = False
    for name in ("Content-Type", "Content-Transfer-Encoding", "MIME-Version"):
        value = part.get(name)
        if value is not None:
            reply[name] = _CONTROL.sub(" ", str(value)).strip()
            kept = True
    if not kept:
        reply.set_content(entity)
        return
    if "MIME-Version" not in reply:
        reply["MIME-Version"] = "1.0"
    payload = part.get_payload()
    if isinstance(payload, list):  # a multipart entity: its parts as they were written
        reply.set_payload(payload)
    else:
        reply.set_payload(str(payload))
