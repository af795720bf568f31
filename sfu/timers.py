"""One timer wheel per event loop for the SFU's many small periodic jobs.

Each connection and each forwarded track used to own an asyncio task that slept and
woke on its own (aioice's consent checks, aiortc's RTCP reports): a task, a coroutine
frame and a sleep future each, and one event-loop wake-up per job and period. At a
thousand tracks that is thousands of wake-ups a second for work of a few microseconds.
The wheel keeps the jobs in slots of :data:`RESOLUTION` seconds and arms one loop timer
for the earliest non-empty slot, so jobs due within the same slot run in one wake-up and
an idle job costs one small object, not a task.

A job runs never early, and late by at most :data:`RESOLUTION` plus the goes of the jobs
due before it (see below; the loop's other ready work runs between goes, and the next
slot may fire while an earlier one's goes are still pending); the periods it serves (RTCP
0.5-1.5 s, consent 4-6 s) are randomised over far wider ranges than that.

Jobs due together run at most :data:`BUDGET` seconds at a go: then the loop polls its
sockets (the rest is ``call_soon``), so a slot full of jobs does not keep datagrams
waiting for their whole sum (SFU latency counts from the kernel's receive time).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

RESOLUTION = 0.02  # s per slot
# s of jobs run in one go; then the loop polls its sockets before the wheel goes on. A
# job takes 0.05-0.2 ms (an allocator step, an RTCP report), so 10-40 jobs a go.
BUDGET = 0.002


class Timer:
    """A job on the wheel; :meth:`cancel` before it runs and it never does."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback
        self.cancelled = False

    def cancel(self) -> None:
        """The job stays in its slot until the slot comes due, but without its callback:
        a closed connection's consent expiry (30 s ahead) held the connection, its
        subscriber, allocator and room router - and the room's series on /metrics -
        for that long after everyone had left."""
        self.cancelled = True
        self.callback = None


class Wheel:
    """Run callbacks at (or just after) given loop times, many per loop wake-up."""

    # Diagnosis (server.loopwatch's trace): called with (seconds, name) per job run.
    trace: Callable[[float, str], None] | None = None

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        resolution: float = RESOLUTION,
        budget: float = BUDGET,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._loop = loop
        self._resolution = resolution
        self.budget = budget  # s of jobs per run before the loop polls its sockets
        self._clock = clock
        self.deferred = 0  # times the rest of the due jobs waited for the next iteration
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
        if order:
            self._arm(order[0])
        self._run(ready, 0)

    def _run(self, ready: list[Timer], start: int) -> None:
        """Run ``ready[start:]`` for at most :attr:`budget` seconds; the rest after the
        loop has polled its sockets once (``call_soon``), and so on. Periodic jobs that
        came due together (a stall made the wheel late, or they were re-armed in the
        same slot ever since) would otherwise hold the loop for their sum: 150 subscribe
        connections' allocator steps in one slot took 10-23 ms at 50 rooms × 3, while
        every datagram that arrived meanwhile waited in its socket."""
        clock, trace = self._clock, self.trace
        deadline = clock() + self.budget
        n = len(ready)
        i = start
        while i < n:
            timer = ready[i]
            i += 1
            callback = timer.callback
            if timer.cancelled or callback is None:
                continue
            timer.cancelled = True  # ran: a late cancel() is harmless
            timer.callback = None
            try:
                if trace is None:
                    callback()
                else:
                    t0 = time.perf_counter()
                    callback()
                    trace(time.perf_counter() - t0, f"wheel {_name(callback)}")
            except Exception:
                log.exception("timer job %s failed", _name(callback))
            if i < n and clock() >= deadline:
                self.deferred += 1
                self._loop.call_soon(self._run, ready, i)
                return


def _name(callback: Callable[[], None]) -> str:
    return getattr(callback, "__qualname__", type(callback).__name__)


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wheel] = weakref.WeakKeyDictionary()


def wheel() -> Wheel:
    """The running loop's wheel (created on first use)."""
    loop = asyncio.get_running_loop()
    found = _wheels.get(loop)
    if found is None:
        found = _wheels[loop] = Wheel(loop)
    return found


__all__ = ["BUDGET", "RESOLUTION", "Timer", "Wheel", "wheel"]
