"""A session's end, enforced on the connections that are live when it comes.

A token's ``exp`` bounds *joining* only; a call in progress would otherwise run past the
session's end for as long as the connections last. Each room on this node runs one clock:
``warn_before`` seconds before the end everyone is told (``session.ending``), at the end
the session ends for all as if the caseworker had ended it. A moderator may move the end
(``room.extend``); the clock then starts over from the new end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime


def iso(ts: int) -> str:
    """ISO 8601 UTC, as every time in the protocol (``2026-11-25T07:43:20Z``)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Deadline:
    """When the session of one room ends (Unix seconds), and whether that was announced."""

    ends_at: float
    warned: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def move(self, ends_at: float) -> None:
        self.ends_at = ends_at
        self.warned = False
        self.changed.set()

    def seconds_left(self, now: float | None = None) -> int:
        return max(0, round(self.ends_at - (time.time() if now is None else now)))


async def run_clock(
    deadline: Deadline,
    warn_before: float,
    on_warning: Callable[[], Awaitable[None]],
    on_end: Callable[[], Awaitable[None]],
) -> None:
    """Warn once, then end; wakes early when ``deadline.move`` is called."""
    while True:
        deadline.changed.clear()
        now = time.time()
        if now >= deadline.ends_at:
            await on_end()
            return
        wake = deadline.ends_at
        if not deadline.warned:
            if now >= deadline.ends_at - warn_before:
                deadline.warned = True
                await on_warning()
                continue
            wake = deadline.ends_at - warn_before
        try:
            await asyncio.wait_for(deadline.changed.wait(), max(0.0, wake - now))
        except TimeoutError:
            pass
