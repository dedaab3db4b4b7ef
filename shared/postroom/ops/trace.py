"""`postroom trace QUEUE_ID`: one message's story from the spool, the policy verdict and mailboxes.

The spool keeps, per recipient, its state and the history of every attempt
(delivered, deferred with the remote's reply, failed, bounced); the DMARC results
table keeps the verdict under the same queue id; mailbox entries point back at
the spool recipient they came from. Put in
time order they tell what happened without reading logs; every log line of
every service also carries the queue id for the details in between.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from postroom.store.errors import NotFound
from postroom.store.models import (
    DmarcResult,
    Mailbox,
    MailboxEntry,
    SpoolMessage,
    SpoolRecipient,
    User,
)
from postroom.store.spool import attempts_of


def load_trace(session: Session, queue_id: str) -> dict[str, Any]:
    """Everything stored about ``queue_id`` as plain data; NotFound when nothing is."""
    message = session.execute(select(SpoolMessage).where(SpoolMessage.queue_id == queue_id)
                              ).scalar_one_or_none()
    verdicts = session.execute(select(DmarcResult).where(DmarcResult.queue_id == queue_id)
                               .order_by(DmarcResult.received_at)).scalars().all()
    if message is None and not verdicts:
        raise NotFound(f"no message with queue id {queue_id} (delivered mail is purged from "
                       "the spool after a while; search the logs for it)")
    story: dict[str, Any] = {"queue_id": queue_id, "message": None, "recipients": [],
                             "verdicts": [_verdict(v) for v in verdicts]}
    if message is None:
        return story
    story["message"] = {
        "kind": message.kind, "mail_from": message.mail_from, "size": message.size,
        "received_at": message.received_at, "peer_ip": message.peer_ip, "helo": message.helo,
        "auth_user": message.auth_user, "disposition": message.disposition,
    }
    recipients = session.execute(
        select(SpoolRecipient).where(SpoolRecipient.spool_message_id == message.id)
        .order_by(SpoolRecipient.id)).scalars().all()
    copies: dict[int, list[dict[str, Any]]] = {}
    rows = session.execute(
        select(MailboxEntry.spool_recipient_id, User.address, Mailbox.name, MailboxEntry.uid,
               MailboxEntry.internaldate, MailboxEntry.flags)
        .join(Mailbox, Mailbox.id == MailboxEntry.mailbox_id)
        .join(User, User.id == Mailbox.user_id)
        .where(MailboxEntry.spool_recipient_id.in_([r.id for r in recipients])))
    for rid, user, mailbox, uid, internaldate, flags in rows:
        assert rid is not None  # the query selects only entries with one
        copies.setdefault(rid, []).append({"user": user, "mailbox": mailbox, "uid": uid,
                                           "stored_at": internaldate, "flags": list(flags)})
    history: dict[int, list[dict[str, Any]]] = {}
    for step in attempts_of(session, [r.id for r in recipients]):
        history.setdefault(step.recipient_id, []).append(
            {"at": step.at, "result": step.result, "detail": step.detail})
    for r in recipients:
        story["recipients"].append({
            "id": r.id, "address": r.address, "parent_id": r.parent_id, "stream": r.stream,
            "state": r.state, "attempts": r.attempts, "next_attempt_at": r.next_attempt_at,
            "enqueued_at": r.enqueued_at, "last_error": r.last_error,
            "updated_at": r.updated_at, "mailboxes": copies.get(r.id, []),
            "history": history.get(r.id, []),
        })
    return story


def _verdict(row: DmarcResult) -> dict[str, Any]:
    detail = row.detail if isinstance(row.detail, dict) else {}
    content = detail.get("content")
    return {"at": row.received_at, "header_from": row.header_from, "spf": row.spf_result,
            "dkim": row.dkim_result, "dmarc": row.dmarc_result, "policy": row.policy,
            "disposition": row.disposition, "source_ip": row.source_ip,
            # the content checks (attachments, spam, viruses) and the verdict they led to
            "content": content if isinstance(content, list) else [],
            "verdict": detail.get("verdict")}


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-" * 19


def timeline(story: dict[str, Any]) -> list[tuple[datetime | None, str]]:
    """(time, what happened) in order; pending work sorts last at its next attempt."""
    events: list[tuple[datetime | None, str]] = []
    message = story["message"]
    if message is not None:
        if message["auth_user"]:
            source = f"submitted by {message['auth_user']}"
        else:
            source = f"from {message['peer_ip'] or 'local'} (HELO {message['helo'] or '-'})"
        events.append((message["received_at"],
                       f"received {message['kind']} <{message['mail_from']}> {source}, "
                       f"{message['size'] or 0} bytes"))
    for verdict in story["verdicts"]:
        events.append((verdict["at"],
                       f"policy: DMARC {verdict['dmarc']} (SPF {verdict['spf']}, DKIM "
                       f"{verdict['dkim']}) for {verdict['header_from']} -> "
                       f"{verdict['disposition']}"))
        for result in verdict.get("content") or []:
            line = f"content: {result.get('check')} -> {result.get('action')}"
            if result.get("reason"):
                line += f": {result['reason']}"
            events.append((verdict["at"], line))
        if verdict.get("verdict"):
            events.append((verdict["at"], f"verdict: {verdict['verdict']}"))
    for r in story["recipients"]:
        via = f" (alias of #{r['parent_id']})" if r["parent_id"] else ""
        if r["enqueued_at"]:
            events.append((r["enqueued_at"], f"<{r['address']}>{via} queued on {r['stream']}"))
        for step in r["history"]:
            line = f"<{r['address']}> {step['result']}"
            if step["detail"]:
                line += f": {step['detail']}"
            events.append((step["at"], line))
        if not r["history"] or r["state"] == "pending":
            line = f"<{r['address']}> {r['state']} after {r['attempts']} attempt(s)"
            if r["last_error"] and not r["history"]:
                line += f"; last error: {r['last_error']}"
            events.append((r["updated_at"], line))
        for copy in r["mailboxes"]:
            events.append((copy["stored_at"], f"<{r['address']}> stored in {copy['user']} "
                                              f"{copy['mailbox']} uid {copy['uid']}"))
        if r["state"] == "pending":
            events.append((r["next_attempt_at"], f"<{r['address']}> next attempt"))
    return sorted(events, key=lambda e: (e[0] is None, e[0] or datetime.min))


def format_trace(story: dict[str, Any]) -> str:
    lines = [f"queue id {story['queue_id']}"]
    lines += [f"  {_when(when)}  {what}" for when, what in timeline(story)]
    if story["message"] is None:
        lines.append("  (no longer in the spool)")
    return "\n".join(lines)
