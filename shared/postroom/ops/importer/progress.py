"""A progress bar on stderr when it is a terminal; nothing at all when it is not."""

from __future__ import annotations

import sys
import time
from typing import IO

WIDTH = 30


class Progress:
    """Counts work done out of ``total`` and redraws one line at most ten times a second."""

    def __init__(self, total: int, *, stream: IO[str] | None = None,
                 enabled: bool | None = None) -> None:
        self.total = max(total, 0)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._label = ""
        self._drawn_at = 0.0

    def advance(self, label: str = "", count: int = 1) -> None:
        self.done += count
        self._label = label or self._label
        now = time.monotonic()
        if self.enabled and (now - self._drawn_at >= 0.1 or self.done >= self.total):
            self._drawn_at = now
            self._draw()

    def _draw(self) -> None:
        if not self.total:  # the amount is not known in advance (an export): count only
            self.stream.write(f"\r{self.done} done {self._label[:40]:<40}")
            self.stream.flush()
            return
        filled = int(WIDTH * min(self.done / self.total, 1.0))
        bar = "#" * filled + "." * (WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {self._label[:40]:<40}")
        self.stream.flush()

    def finish(self) -> None:
        """End the bar's line so the summary that follows starts on its own."""
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
