"""Content checks of the ``/v1/check`` verdict: each gives a :class:`ContentResult`.

A check looks inside the message (attachments, rspamd, clamd) and answers one
of four actions. :func:`combine` folds several into the one that decides the
message: ``reject`` beats ``tempfail`` beats ``quarantine`` beats ``accept``,
and every check's header fields are kept. :mod:`postroom_dmarc.verdict` maps
the winner onto the verdict's disposition (reject, tempfail, junk, inbox);
:mod:`postroom_dmarc.content.checks` runs the configured checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from postroom_dmarc.verdict import CheckRequest

ACTIONS = ("accept", "quarantine", "tempfail", "reject")
_RANK = {action: rank for rank, action in enumerate(ACTIONS)}
# what each action makes of the message in the verdict
DISPOSITION = {"accept": "inbox", "quarantine": "junk", "tempfail": "tempfail",
               "reject": "reject"}


@dataclass(frozen=True)
class ContentResult:
    """One check's answer: its name, action, a reason for the peer, headers and details."""

    check: str  # "attachments", "rspamd", "clamd"
    action: str  # one of ACTIONS
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in _RANK:
            raise ValueError(f"unknown content action {self.action!r}")

    @property
    def category(self) -> str:
        """The reason's kind, from a small fixed set per check (the metrics label)."""
        return str(self.details.get("category") or "none")

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "action": self.action, "reason": self.reason,
                "headers": [[name, value] for name, value in self.headers],
                "details": self.details}


class ContentCheck(Protocol):
    """A blocking content check (attachments): run in the `policy` pool, by a deadline.

    :class:`postroom_dmarc.content.checks.PooledCheck` makes one an entry of
    :class:`~postroom_dmarc.content.checks.ContentChecks`.
    """

    name: str

    def run(self, request: CheckRequest, deadline: float) -> ContentResult:
        """The result for ``request``; ``deadline`` is a time.monotonic() value."""
        ...

    def inline(self, request: CheckRequest) -> ContentResult | None:
        """The result when it costs next to nothing (no I/O, no decoding), else None.

        Called on the reactor thread; None sends the check to the `policy` pool.
        """
        ...


def combine(results: Iterable[ContentResult]) -> ContentResult:
    """The strictest result (the first such check on a tie), with every check's headers."""
    items = list(results)
    if not items:
        return ContentResult("content", "accept")
    worst = items[0]
    for result in items[1:]:
        if _RANK[result.action] > _RANK[worst.action]:
            worst = result
    headers = [h for r in items for h in r.headers]
    return ContentResult(worst.check, worst.action, worst.reason, headers, worst.details)
