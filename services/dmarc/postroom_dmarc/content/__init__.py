"""Content checks run by ``/v1/check`` after SPF/DKIM/DMARC: their common result and combination.

Each check (attachments, rspamd, clamd) gives one :class:`ContentResult`;
:func:`combine` folds them into the strictest action (reject > tempfail >
quarantine > accept). The verdict's ``content`` list is their JSON, which
``postroom trace`` shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ACTIONS = ("accept", "quarantine", "tempfail", "reject")
_RANK = {action: rank for rank, action in enumerate(ACTIONS)}


@dataclass(frozen=True)
class ContentResult:
    """One content check's outcome: what to do with the message, why, and headers to add."""

    check: str  # "attachments", "rspamd", "clamd"
    action: str  # one of ACTIONS
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.check, "action": self.action, "reason": self.reason,
                "headers": [[name, value] for name, value in self.headers],
                "details": self.details}


def combine(results: Iterable[ContentResult]) -> ContentResult:
    """The strictest result (reject > tempfail > quarantine > accept), with every header."""
    items = list(results)
    headers = [h for r in items for h in r.headers]
    if not items:
        return ContentResult("content", "accept")
    worst = max(items, key=lambda r: _RANK[r.action])
    return ContentResult(worst.check, worst.action, worst.reason, headers, worst.details)
