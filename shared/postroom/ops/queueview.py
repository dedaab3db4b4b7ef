"""Who may see and act on a queued message: the queue's rules for the console and API.

An administrator sees every message. A domain manager sees a message that concerns
one of its domains: the sender's domain or a recipient's. It then sees every
recipient when the sender is in its domains (its user's mail), else only the
recipients in its domains (mail that other local domains also receive stays
theirs). It may retry what it sees; it may delete a message only when every local
domain the message concerns is one of its own (deleting also takes the mail away
from the other domains' users). The CLI acts as an administrator.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any

from sqlalchemy.orm import Session

from postroom.store import domains as store_domains
from postroom.store.spool import SpoolInfo, address_domain
from postroom.store.webaccess import Principal


def message_domains(mail_from: str, recipients: Collection[str]) -> set[str]:
    """The domains of the sender and of every recipient (lowercased; none for ``<>``)."""
    found = {address_domain(a) for a in (mail_from, *recipients)}
    return {d for d in found if d}


def _sees_recipient(principal: Principal, sender_domain: str | None,
                    address: str) -> bool:
    if principal.is_admin or (sender_domain is not None and sender_domain in principal.domains):
        return True
    domain = address_domain(address)
    return domain is not None and domain in principal.domains


def visible_message(info: SpoolInfo, principal: Principal) -> SpoolInfo | None:
    """``info`` as ``principal`` may see it (recipients filtered); None when it may not."""
    if principal.is_admin:
        return info
    sender = address_domain(info.mail_from)
    shown = [r for r in info.recipients if _sees_recipient(principal, sender, r.address)]
    if not shown and not (sender is not None and sender in principal.domains):
        return None
    return replace(info, recipients=shown)


def may_delete(session: Session, info: SpoolInfo, principal: Principal,
               is_local: Callable[[Session, str], bool] = store_domains.is_local_domain) -> bool:
    """Whether ``principal`` may delete the message: an admin, or the manager of every local
    domain it concerns (at least one)."""
    if principal.is_admin:
        return True
    local = {d for d in message_domains(info.mail_from, [r.address for r in info.recipients])
             if is_local(session, d)}
    return bool(local) and local <= principal.domains


def visible_trace(story: dict[str, Any], principal: Principal) -> dict[str, Any] | None:
    """A `load_trace` story as ``principal`` may see it; None when it may not.

    A manager needs the spool message (a queue id known only from DMARC verdicts, its
    message purged, says nothing about recipients: administrators only).
    """
    if principal.is_admin:
        return story
    message = story.get("message")
    if message is None:
        return None
    sender = address_domain(message["mail_from"])
    shown = [r for r in story["recipients"]
             if _sees_recipient(principal, sender, r["address"])]
    if not shown and not (sender is not None and sender in principal.domains):
        return None
    return {**story, "recipients": shown}
