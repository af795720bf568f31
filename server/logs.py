"""Logging for ``roundtable serve``: repeated identical messages are rate-limited.

Under attack the same line can be written thousands of times a second (a refused
connect, the kernel's "too many open files" on accept); that fills disks and hides
everything else. Per message template, level and exception type, ``RepeatFilter`` lets a
burst through per window and then counts; the next line that passes says how many like it
were held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

WINDOW_SECONDS = 10.0
# Per template and window. INFO lines name ordinary events (joins, rooms): generous.
BURST_INFO = 200
BURST_WARNING = 10
MAX_KEYS = 2000


class RepeatFilter(logging.Filter):
    def __init__(
        self,
        *,
        window: float = WINDOW_SECONDS,
        burst_info: int = BURST_INFO,
        burst_warning: int = BURST_WARNING,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._window = window
        self._burst_info = burst_info
        self._burst_warning = burst_warning
        self._now = now
        # key -> [window start, passed in this window, held back since the last pass]
        self._seen: dict[tuple[object, ...], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0] if record.exc_info else None
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        key = (record.name, record.levelno, template, exc)
        t = self._now()
        entry = self._seen.get(key)
        if entry is None:
            if len(self._seen) >= MAX_KEYS:
                self._seen.clear()
            entry = self._seen[key] = [t, 0, 0]
        elif t - entry[0] >= self._window:
            entry[0], entry[1] = t, 0
        burst = self._burst_warning if record.levelno >= logging.WARNING else self._burst_info
        if entry[1] >= burst:
            entry[2] += 1
            return False
        entry[1] += 1
        if entry[2]:
            held, entry[2] = int(entry[2]), 0
            record.msg = f"{record.getMessage()} [{held} more like this held back]"
            record.args = None
        return True


def install(root: logging.Logger | None = None) -> RepeatFilter:
    """Put one ``RepeatFilter`` on every handler of the root logger."""
    root = root or logging.getLogger()
    repeat = RepeatFilter()
    for handler in root.handlers:
        handler.addFilter(repeat)
    return repeat
