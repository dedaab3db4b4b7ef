"""Compare what clients were told with what the mailboxes hold, per fault window, and print it.

A message belongs to the fault window in which its first attempt began. For
each window: accepted (answered 250), delivered (an accepted message whose
every recipient has it), duplicates (a recipient holding a message twice,
server-made), client resends (a second copy after the client lost the reply
to the dot and sent again), lost (accepted, missing from a recipient's
mailbox), temporary refusals seen (4xx or connection errors), 5xx, and the
drain time: the longest wait of a message from its 250 to its last mailbox.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.resilience.load import Sent
from tests.support.faults import Copy


@dataclass
class Window:
    """A fault window: what was injected and when (epoch seconds)."""

    fault: str
    start: float
    recovered: float | None = None


@dataclass
class Row:
    """One line of the campaign table."""

    fault: str
    outage: float = 0.0  # seconds from injection until the fault was undone
    sent: int = 0
    accepted: int = 0
    delivered: int = 0
    duplicates: int = 0
    client_resends: int = 0
    lost: int = 0
    temp_refusals: int = 0
    refused_5xx: int = 0
    gave_up: int = 0
    drain: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    lost_tokens: list[str] = field(default_factory=list)
    duplicate_tokens: list[str] = field(default_factory=list)


def reason(code: int | None, detail: str) -> str:
    """A temporary refusal, shortened so that equal causes count together."""
    return f"{code or 'net'} {detail[:48]}".strip()


def window_of(windows: Sequence[Window], at: float) -> int:
    """Index of the window containing time ``at`` (windows are in time order)."""
    index = 0
    for i, window in enumerate(windows):
        if window.start <= at:
            index = i
    return index


def compare(windows: Sequence[Window], messages: Sequence[Sent],
            copies: Sequence[Copy]) -> list[Row]:
    """One row per window plus a total row (last)."""
    held = Counter((c.token, c.address) for c in copies if c.token)
    delivered_at: dict[tuple[str, str], float] = {}
    for c in copies:
        if c.token and c.delivered_at is not None:
            key = (c.token, c.address)
            delivered_at[key] = max(delivered_at.get(key, 0.0), c.delivered_at.timestamp())
    rows = [Row(w.fault, outage=(w.recovered or w.start) - w.start) for w in windows]
    total = Row("total")
    for sent in messages:
        row = rows[window_of(windows, sent.first_try)]
        for target in (row, total):
            target.sent += 1
            target.temp_refusals += sent.temp_failures
            target.refused_5xx += int(sent.refused)
            target.gave_up += int(sent.gave_up)
            target.reasons.update(reason(a.code, a.detail) for a in sent.attempts
                                  if a.outcome in ("4xx", "net"))
        if sent.accepted_at is None:
            continue
        counts = [held[(sent.token, r)] for r in sent.recipients]
        extra = sum(max(0, n - 1) for n in counts)
        last = max((delivered_at.get((sent.token, r), 0.0) for r in sent.recipients),
                   default=0.0)
        for target in (row, total):
            target.accepted += 1
            if all(n >= 1 for n in counts):
                target.delivered += 1
                target.drain = max(target.drain, last - sent.accepted_at)
            else:
                target.lost += 1
                target.lost_tokens.append(sent.token)
            if extra and sent.resent_after_lost_reply:
                target.client_resends += extra
            elif extra:
                target.duplicates += extra
                target.duplicate_tokens.append(sent.token)
    return [*rows, total]


HEADER = ("fault injected", "outage s", "sent", "accepted", "delivered", "dupes", "client resends",
          "lost", "4xx/net seen", "5xx", "gave up", "drain s")


def cells(row: Row) -> tuple[str, ...]:
    return (row.fault, f"{row.outage:.1f}" if row.outage else "", str(row.sent),
            str(row.accepted), str(row.delivered),
            str(row.duplicates), str(row.client_resends), str(row.lost),
            str(row.temp_refusals), str(row.refused_5xx), str(row.gave_up), f"{row.drain:.1f}")


def render_reasons(rows: Sequence[Row], top: int = 3) -> str:
    """What the clients were told while retrying, the most frequent first, per window."""
    lines = []
    for row in rows[:-1]:
        if row.reasons:
            common = "; ".join(f"{n} x {text}" for text, n in row.reasons.most_common(top))
            lines.append(f"- {row.fault}: {common}")
    return "\n".join(lines)


def render(rows: Sequence[Row]) -> str:
    """A Markdown table (what docs/resilience.md shows)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)
