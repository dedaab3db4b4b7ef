"""The virus check of ``/v1/check``: clamd's verdict (postroom.net.clamd) as a content result.

``stream: OK`` -> accept; a signature found -> reject ``virus found: NAME``
(the mta answers 554 5.7.1); clamd unreachable, slow or answering an error ->
tempfail (451 4.7.0): a configured scanner never lets unscanned mail through.
"""

from __future__ import annotations

from typing import Any

from postroom.metrics import Metrics
from postroom.net.clamd import ClamdClient
from postroom_dmarc.content import ContentResult

CHECK = "clamd"


class ClamdCheck:
    """Scans each message with clamd and maps the verdict to a ContentResult."""

    def __init__(self, address: str, *, reactor: Any, timeout: float = 30.0,
                 max_stream: int = 25 * 1024 * 1024, metrics: Metrics | None = None,
                 client: ClamdClient | None = None) -> None:
        self.client = client or ClamdClient(address, reactor=reactor, timeout=timeout,
                                            max_stream=max_stream, metrics=metrics)

    async def check(self, message: bytes, *, queue_id: str | None = None) -> ContentResult:
        """The content result for one message; never raises."""
        verdict = await self.client.verdict(message, queue_id=queue_id)
        details: dict[str, Any] = {"truncated": True} if verdict.truncated else {}
        details["category"] = verdict.outcome if verdict.outcome in ("virus", "clean") \
            else "error"
        if verdict.outcome == "virus":
            result = ContentResult(CHECK, "reject", f"virus found: {verdict.signature}",
                                   details={**details, "signature": verdict.signature})
        elif verdict.outcome == "clean":
            result = ContentResult(CHECK, "accept", "", details=details)
        else:
            result = ContentResult(CHECK, "tempfail", "virus scanner unavailable",
                                   details={**details, "error": verdict.error})
        return result
