"""/api/v1/queue and /api/v1/trace: the mail queue (list, show, retry, delete) and one
queue id's story, as `postroom queue` and `postroom trace` show them.

A domain manager sees the messages whose sender or a recipient is in its domains
(postroom.ops.queueview has the rules); a message it may not see is 403, one that
does not exist 404.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from postroom.ops import queueview
from postroom.ops.trace import load_trace, timeline
from postroom.store import spool
from postroom.store.errors import NotFound
from postroom_web.framework import Access, Ctx, Page, PageQuery, endpoint, forbidden, not_found

# a queue id is short (postroom.store.queueid); anything longer is no queue id of ours
MAX_QUEUE_ID = 64
State = Literal["queued", "deferred", "pending", "delivered", "failed", "bounced"]


class QueueItem(BaseModel):
    """One queued message, as `postroom queue list` shows it."""

    queue_id: str
    kind: str = Field(description="inbound, submission, bounce, ...")
    mail_from: str = Field(description="The envelope sender (empty for a bounce).")
    recipients: int = Field(description="Its recipients (all of them, any state).")
    state: str = Field(description="The least finished recipient's state (pending first).")
    received_at: datetime
    size: int = Field(description="Bytes of the stored message.")


class QueueQuery(PageQuery):
    state: State | None = Field(None, description=(
        "Messages with a recipient in this state: queued (not tried yet), deferred (tried, "
        "waiting for a retry), pending (either), delivered, failed, bounced."))
    mail_from: str | None = Field(None, alias="from", max_length=320,
                                  description="The sender contains this text (any case).")
    rcpt_to: str | None = Field(None, alias="to", max_length=320,
                                description="A recipient contains this text (any case).")
    address: str | None = Field(None, max_length=320,
                                description="The sender or a recipient contains this text; "
                                "@example.org matches a domain.")


class Recipient(BaseModel):
    id: int
    address: str
    stream: str = Field(description="deliver (local mailboxes) or outbound (the relay).")
    state: str = Field(description="pending, delivered, failed or bounced.")
    attempts: int
    next_attempt_at: datetime
    enqueued_at: datetime | None
    last_error: str | None
    updated_at: datetime
    parent_id: int | None = Field(None, description="The alias it was expanded from.")


class Attempt(BaseModel):
    recipient_id: int
    at: datetime
    result: str = Field(description="delivered, deferred, failed or bounced.")
    detail: str | None = Field(description="What the remote end or the mailbox said.")


class QueueMessage(BaseModel):
    """A queued message with the recipients the caller may see and their histories."""

    queue_id: str
    kind: str
    mail_from: str
    size: int | None = Field(description="The SIZE the client declared, if any.")
    message_size: int = Field(description="Bytes of the stored message.")
    received_at: datetime
    peer_ip: str | None
    helo: str | None
    auth_user: str | None
    disposition: str
    recipients: list[Recipient]
    attempts: list[Attempt]


class Retried(BaseModel):
    queue_id: str
    scheduled: int = Field(description="Pending recipients made due now.")


class TraceEvent(BaseModel):
    at: datetime | None = Field(description="None: not known (sorted last).")
    what: str


class Trace(BaseModel):
    """What `postroom trace --json` prints, with its timeline as `postroom trace` prints it."""

    queue_id: str
    message: dict[str, Any] | None = Field(
        description="The envelope and how it came in; null when the spool no longer has it.")
    recipients: list[dict[str, Any]] = Field(
        description="Each recipient with its state, history and mailbox copies.")
    verdicts: list[dict[str, Any]] = Field(description="The DMARC and content verdicts.")
    events: list[TraceEvent] = Field(description="Everything above in time order.")


def _queue_id(value: str) -> str:
    if not value or len(value) > MAX_QUEUE_ID:
        raise not_found("no such queued message")
    return value


def load_visible(ctx: Ctx, queue_id: str) -> spool.SpoolInfo:
    """The message as the caller may see it: 404 none, 403 not the caller's."""
    try:
        info = spool.get_spool(ctx.store, _queue_id(queue_id))
    except NotFound:
        raise not_found(f"no queued message {queue_id[:MAX_QUEUE_ID]}") from None
    shown = queueview.visible_message(info, ctx.user)
    if shown is None:
        raise forbidden("this message concerns none of your domains")
    return shown


def message_of(ctx: Ctx, info: spool.SpoolInfo) -> QueueMessage:
    steps = spool.attempts_of(ctx.store, [r.id for r in info.recipients])
    return QueueMessage(
        queue_id=info.queue_id, kind=info.kind, mail_from=info.mail_from, size=info.size,
        message_size=info.message_size, received_at=info.received_at,
        peer_ip=str(info.peer_ip) if info.peer_ip else None, helo=info.helo,
        auth_user=info.auth_user, disposition=info.disposition,
        recipients=[Recipient.model_validate(r, from_attributes=True) for r in info.recipients],
        attempts=[Attempt.model_validate(a, from_attributes=True) for a in steps])


def list_page(ctx: Ctx, query: QueueQuery) -> tuple[list[spool.SpoolSummary], int]:
    """One page of the queue as the caller may see it, and how many there are."""
    filters: dict[str, Any] = {"mail_from": query.mail_from, "rcpt_to": query.rcpt_to,
                               "address": query.address, "domains": ctx.visible_domains()}
    found = spool.list_spool(ctx.store, query.state, offset=query.offset, limit=query.limit,
                             **filters)
    return found, spool.count_spool(ctx.store, query.state, **filters)


@endpoint("GET", "/queue", summary="List queued messages", tags=["queue"], query=QueueQuery,
          response=Page[QueueItem], access=Access.CONSOLE)
def list_queue(ctx: Ctx, query: QueueQuery) -> Page[QueueItem]:
    """Queued messages, oldest first, filtered as `postroom queue list` filters; a domain
    manager sees those whose sender or a recipient is in its domains."""
    found, total = list_page(ctx, query)
    return Page[QueueItem].of([QueueItem.model_validate(s, from_attributes=True)
                               for s in found], total, query)


@endpoint("GET", "/queue/{queue_id}", summary="One queued message", tags=["queue"],
          response=QueueMessage, access=Access.CONSOLE)
def get_message(ctx: Ctx, queue_id: str) -> QueueMessage:
    """The envelope, the recipients and their states, and every attempt so far. A domain
    manager sees every recipient of its own users' mail, else only its domains' ones."""
    return message_of(ctx, load_visible(ctx, queue_id))


@endpoint("POST", "/queue/{queue_id}/retry", summary="Retry a message now", tags=["queue"],
          response=Retried, access=Access.CONSOLE)
def retry_message(ctx: Ctx, queue_id: str) -> Retried:
    """Make every pending recipient due now (as `postroom queue retry`); the queue's
    reconciler hands them to the mta or mda within its interval."""
    info = load_visible(ctx, queue_id)
    return Retried(queue_id=info.queue_id, scheduled=spool.retry_now(ctx.store, info.queue_id))


@endpoint("DELETE", "/queue/{queue_id}", summary="Delete a message from the queue",
          tags=["queue"], status=204, access=Access.CONSOLE)
def delete_message(ctx: Ctx, queue_id: str) -> None:
    """Drop the message with every recipient, as `postroom queue delete` does: no bounce is
    sent. A domain manager may delete only mail whose every local domain it manages."""
    info = load_visible(ctx, queue_id)
    if not queueview.may_delete(ctx.store, info, ctx.user):
        raise forbidden("this message also concerns domains you do not manage")
    spool.delete_spool(ctx.store, info.queue_id)


def trace_of(ctx: Ctx, queue_id: str) -> dict[str, Any]:
    """The story the caller may see: 404 none, 403 not the caller's."""
    try:
        story = load_trace(ctx.store, _queue_id(queue_id))
    except NotFound:
        raise not_found(f"nothing is stored about {queue_id[:MAX_QUEUE_ID]}") from None
    shown = queueview.visible_trace(story, ctx.user)
    if shown is None:
        raise forbidden("this message concerns none of your domains")
    return shown


def _plain(value: Any) -> Any:
    """JSON-able: addresses (INET) as text, dicts and lists walked."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool | datetime):
        return value
    return str(value)


@endpoint("GET", "/trace/{queue_id}", summary="One queue id's story", tags=["queue"],
          response=Trace, access=Access.CONSOLE)
def trace(ctx: Ctx, queue_id: str) -> Trace:
    """What `postroom trace` prints: how the message came in, the policy verdict, each
    recipient's attempts and state, the mailbox copies, and all of it as a timeline."""
    story = trace_of(ctx, queue_id)
    events = [TraceEvent(at=at, what=what) for at, what in timeline(story)]
    return Trace(queue_id=story["queue_id"], message=_plain(story["message"]),
                 recipients=_plain(story["recipients"]), verdicts=_plain(story["verdicts"]),
                 events=events)
