"""A progress bar for long packs, drawn on stderr only when stderr is a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts bytes done out of a total and redraws at most ten times a second."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self._shown = False
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if not self._tty or now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = int(width * min(self.done / self.total, 1.0))
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done / self.total:6.1%}"
        )
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._shown = False
