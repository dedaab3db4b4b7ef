"""Content checks of the ``/v1/check`` verdict: each gives a :class:`ContentResult`.

A check looks inside the message (attachments here; spam and virus scanners
beside it) and answers one of four actions. :func:`combine` folds several
into the one that decides the message: ``reject`` beats ``tempfail`` beats
``quarantine`` beats ``accept``. :mod:`postroom_dmarc.verdict` maps the
winner onto the verdict's disposition (reject, tempfail, junk, inbox).
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
    """One check's answer: its name, action, a reason for the peer and details for trace."""

    check: str
    action: str
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in _RANK:
            raise ValueError(f"unknown content action {self.action!r}")

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "action": self.action, "reason": self.reason,
                "headers": [list(h) for h in self.headers], "details": self.details}


class ContentCheck(Protocol):
    """One content check as the API runs it: blocking, in the `policy` pool, by a deadline."""

    name: str

    def run(self, request: CheckRequest, deadline: float) -> ContentResult:
        """The result for ``request``; ``deadline`` is a time.monotonic() value."""
        ...

    def inline(self, request: CheckRequest) -> ContentResult | None:
        """The result when it costs next to nothing (no I/O, no decoding), else None.

        The API calls it on the reactor thread for checks answered from the DNS
        cache; None sends the whole check to the `policy` pool.
        """
        ...


def combine(results: Iterable[ContentResult]) -> ContentResult | None:
    """The result that decides: the strictest action, the first such check on a tie."""
    winner: ContentResult | None = None
    for result in results:
        if winner is None or _RANK[result.action] > _RANK[winner.action]:
            winner = result
    return winner
