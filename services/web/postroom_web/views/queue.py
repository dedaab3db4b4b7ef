"""The queue pages: the list with its filters, one message (retry, delete), one trace."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from pydantic import ValidationError

from postroom.ops import queueview
from postroom.ops.trace import timeline
from postroom.store import spool
from postroom_web.api.queue import (
    QueueQuery,
    list_page,
    load_visible,
    message_of,
    trace_of,
)
from postroom_web.framework import Access, ApiError, Ctx, Redirect, page
from postroom_web.views.common import pager_args

STATES = ("pending", "queued", "deferred", "failed", "bounced", "delivered")
_FILTERS = ("state", "from", "to", "address")


def _query(ctx: Ctx) -> tuple[QueueQuery, str | None]:
    """The list's query from the page's arguments (an invalid one: no filters, a message)."""
    wanted = {k: v for k, v in ctx.args.items()
              if k in ("offset", "limit", *_FILTERS) and v != ""}
    try:
        return QueueQuery.model_validate(wanted), None
    except ValidationError:
        return QueueQuery.model_validate({}), "Those filters are not valid; showing everything."


@page("GET", "/queue", template="queue.html", access=Access.CONSOLE, title="Queue")
def queue_page(ctx: Ctx) -> dict[str, Any]:
    query, error = _query(ctx)
    found, total = list_page(ctx, query)
    filters = {"state": query.state, "from": query.mail_from, "to": query.rcpt_to,
               "address": query.address}
    kept = {k: v for k, v in filters.items() if v}
    return {"messages": found, "total": total, "query": query, "filters": filters,
            "pager_extra": urlencode(kept), "pager_args": pager_args(**kept),
            "states": STATES, "error": error,
            "back": "/queue" + ("?" + urlencode(kept) if kept else ""), "title": "Queue"}


def _back(ctx: Ctx, default: str) -> str:
    """Where a form returns: its ``back`` field when it is a queue page, else ``default``."""
    back = ctx.form.get("back", "")
    return back if back.startswith("/queue") and "//" not in back else default


@page("GET", "/queue/{queue_id}", template="queue_message.html", access=Access.CONSOLE,
      title="Queued message")
def message_page(ctx: Ctx, queue_id: str) -> dict[str, Any]:
    info = load_visible(ctx, queue_id)
    shown = message_of(ctx, info)
    return {"message": shown, "may_delete": queueview.may_delete(ctx.store, info, ctx.user),
            "title": f"Message {info.queue_id}"}


@page("POST", "/queue/{queue_id}/retry", template=None, access=Access.CONSOLE)
def retry_form(ctx: Ctx, queue_id: str) -> Redirect:
    info = load_visible(ctx, queue_id)
    count = spool.retry_now(ctx.store, info.queue_id)
    return Redirect(_back(ctx, f"/queue/{quote(info.queue_id)}"),
                    notice=f"{count} recipient(s) of {info.queue_id} will be tried now.")


@page("POST", "/queue/{queue_id}/delete", template=None, access=Access.CONSOLE)
def delete_form(ctx: Ctx, queue_id: str) -> Redirect:
    info = load_visible(ctx, queue_id)
    if not queueview.may_delete(ctx.store, info, ctx.user):
        raise ApiError(403, "this message also concerns domains you do not manage")
    spool.delete_spool(ctx.store, info.queue_id)
    return Redirect(_back(ctx, "/queue"),
                    notice=f"Message {info.queue_id} deleted (no bounce sent).")


@page("GET", "/trace", template=None, access=Access.CONSOLE, title="Trace")
def trace_lookup(ctx: Ctx) -> Redirect:
    """The queue page's "trace a queue id" form."""
    wanted = ctx.args.get("queue_id", "").strip()
    return Redirect(f"/trace/{quote(wanted, safe='')}" if wanted else "/queue")


@page("GET", "/trace/{queue_id}", template="trace.html", access=Access.CONSOLE, title="Trace")
def trace_page(ctx: Ctx, queue_id: str) -> dict[str, Any]:
    story = trace_of(ctx, queue_id)
    return {"story": story, "events": timeline(story), "title": f"Trace of {queue_id}"}
