"""One timer wheel per event loop for the SFU's many small periodic jobs.

Each connection and each forwarded track used to own an asyncio task that slept and
woke on its own (aioice's consent checks, aiortc's RTCP reports): a task, a coroutine
frame and a sleep future each, and one event-loop wake-up per job and period. At a
thousand tracks that is thousands of wake-ups a second for work of a few microseconds.
The wheel keeps the jobs in slots of :data:`RESOLUTION` seconds and arms one loop timer
for the earliest non-empty slot, so jobs due within the same slot run in one wake-up and
an idle job costs one small object, not a task.

A job runs at most :data:`RESOLUTION` late (never early); the periods it serves (RTCP
0.5-1.5 s, consent 4-6 s) are randomised over far wider ranges than that.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

RESOLUTION = 0.02  # s per slot


class Timer:
    """A job on the wheel; :meth:`cancel` before it runs and it never does."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Wheel:
    """Run callbacks at (or just after) given loop times, many per loop wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION) -> None:
        self._loop = loop
        self._resolution = resolution
        self._slots: dict[int, list[Timer]] = {}
        self._order: list[int] = []  # heap of the slots in _slots
        self._armed: tuple[int, asyncio.TimerHandle] | None = None
        self.fired = 0  # wake-ups so far (tests, metrics)

    def __len__(self) -> int:
        return sum(len(timers) for timers in self._slots.values())

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self._loop.time() + delay, callback)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(callback)
        slot = math.ceil(when / self._resolution)
        timers = self._slots.get(slot)
        if timers is None:
            self._slots[slot] = [timer]
            heapq.heappush(self._order, slot)
        else:
            timers.append(timer)
        if self._armed is None or slot < self._armed[0]:
            self._arm(slot)
        return timer

    def _arm(self, slot: int) -> None:
        if self._armed is not None:
            self._armed[1].cancel()
        self._armed = (slot, self._loop.call_at(slot * self._resolution, self._fire))

    def _fire(self) -> None:
        armed = self._armed[0] if self._armed is not None else None
        self._armed = None
        self.fired += 1
        # Every slot that has begun (asyncio may run a timer up to its clock resolution
        # early: the slot this wake-up was armed for counts as begun). They are taken
        # out before any job runs, so a job added meanwhile - even for a slot already
        # due - waits for the next wake-up: a job re-adding itself in the past cannot
        # keep this loop (and the event loop) spinning.
        due = math.floor(self._loop.time() / self._resolution)
        if armed is not None and armed > due:
            due = armed
        order, slots = self._order, self._slots
        ready: list[Timer] = []
        while order and order[0] <= due:
            ready.extend(slots.pop(heapq.heappop(order)))
        for timer in ready:
            if timer.cancelled:
                continue
            timer.cancelled = True  # ran: a late cancel() is harmless
            try:
                timer.callback()
            except Exception:
                name = getattr(timer.callback, "__qualname__", type(timer.callback).__name__)
                log.exception("timer job %s failed", name)
        if order and (self._armed is None or order[0] < self._armed[0]):
            self._arm(order[0])


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wheel] = weakref.WeakKeyDictionary()


def wheel() -> Wheel:
    """The running loop's wheel (created on first use)."""
    loop = asyncio.get_running_loop()
    found = _wheels.get(loop)
    if found is None:
        found = _wheels[loop] = Wheel(loop)
    return found


__all__ = ["RESOLUTION", "Timer", "Wheel", "wheel"]
