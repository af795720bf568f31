"""Keep Python's full garbage collections short: freeze what survived the last one.

A full (generation 2) collection examines every container object the process holds and
stops the event loop meanwhile; every datagram that arrives waits in its socket. The
server holds about 105,000 such objects before anyone joins (modules, functions, types)
and about 1,500 more per participant (aiortc's connections, transceivers, tasks), and
CPython starts a full collection each time the objects that survived younger
collections grew by a quarter - i.e. during joins. Measured with server.loopwatch at
30-50 rooms × 3: full collections of 36 ms (an empty server) to 410 ms, and the SFU
latency's p99 failed at 45-50 rooms on them.

So, as Instagram's servers do with ``gc.freeze()`` before forking:

- at start, everything the server holds is frozen (moved to the permanent generation,
  which no collection examines);
- after each full collection, its survivors are frozen too. The next full collection
  then examines only what was made since, not the whole heap again.

What is frozen is never collected, so cyclic garbage among frozen objects would stay
(before sfu.unlink: the connections of every participant who left; now what it does not
reach, and a connection it leaves to the collector). So the frozen objects are
thawed (``gc.unfreeze()``) once the heap (Python's allocated memory blocks) is
:data:`THAW_GROWTH` times what it was after the last collection that examined
everything (or at start), or :data:`THAW_AFTER` seconds after it, whichever comes
first: the next full collection then examines the whole heap and frees what leaked,
and its survivors are frozen again. That whole-heap collection is still the long pause
(0.2-0.5 s at 45 rooms): it is rarer, not gone. CPython's own rule would run one at
every 25 % of growth. (Objects freed by reference counting - most - are freed whether
frozen or not.) Since sfu.unlink frees a closed connection by reference counting, little
cyclic garbage is left to wait for a thaw (census of every collectable object, calls
running at 20 rooms × 3: 8-18 objects per 30 s; ~200 per participant who left, from
~1,400), so the time rule waits an hour: at 300 s it stalled every call on the node
for the whole heap's 0.1 s (20 rooms × 3) to 1 s (70 × 3) every five minutes to free
almost nothing.

Young collections were the next pause. CPython starts one when 700 more container
objects were allocated than freed, but the server, once calls run, allocates about as
many as it frees: every Socket.IO message in or out replaces its socket's waiting chain
(python-engineio's ``wait_for`` task, future, timer handle, coroutines: ~35 objects that
live until the next message), aiortc's RTCP statistics replace the last report's. The
young generation then held 7,000-15,000 live objects by the time the count reached 700,
and each young collection examined all of them: 2.5-7 ms every 0.4 s at 70 rooms × 3
(server/loopwatch's trace; the /metrics GC histogram), freeing nothing
(``collected=0``) - and a datagram that arrived meanwhile waited for it. So every
:data:`FREEZE_EVERY` seconds the young objects are frozen too (``gc.freeze()`` splices
the generations' lists: it examines nothing), which also restarts CPython's count: a
young collection that still runs examines at most that long's survivors. Cyclic garbage
made meanwhile - rare once calls run: the young collections freed none - waits for the
next thaw like the rest. Full collections then come only where much is allocated
(joins), too seldom to keep the thaw rules: the timer keeps both (the heap's size read
every :data:`CHECK_EVERY`), and a thaw runs its whole-heap collection at once (the
timer would freeze everything again before the next full collection came).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Thaw (and so examine everything at the next full collection) once the heap grew to
# this many times its size after the last whole-heap collection, or this long after it:
# the garbage frozen meanwhile (participants who left) is bounded by both.
THAW_GROWTH = 1.5
THAW_AFTER = 3600.0  # s
# s between freezes of the young objects (0: CPython's own young collections only); the
# environment's ROUNDTABLE_GC_FREEZE_EVERY overrides it (e.g. 0 to compare in a bench).
FREEZE_EVERY = 0.1
# s between the timer's reads of the heap's size for the growth rule (~1 ms each at
# 6 M blocks).
CHECK_EVERY = 2.0


class GcPolicy:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        thaw_growth: float = THAW_GROWTH,
        thaw_after: float = THAW_AFTER,
        clock: Callable[[], float] = time.monotonic,
        freeze_every: float = FREEZE_EVERY,
        check_every: float = CHECK_EVERY,
    ) -> None:
        self._loop = loop
        self.freeze_every = freeze_every
        self.check_every = check_every
        self._check_at = 0.0  # when the timer next reads the heap's size
        self.thaw_growth = thaw_growth
        self.thaw_after = thaw_after
        self._clock = clock
        self._whole_at = clock()  # when the last whole-heap collection ran (or start)
        self.full = 0  # full collections seen
        self.thaws = 0
        self._thawed = False  # the next full collection examines everything
        self._base = 0  # allocated blocks after the last whole-heap collection (or start)
        self._timer: asyncio.TimerHandle | None = None
        self.freezes = 0  # freezes of the young objects by the timer

    def install(self) -> None:
        gc.freeze()
        self._base = sys.getallocatedblocks()
        gc.callbacks.append(self._on_gc)
        if self.freeze_every > 0:
            self._timer = self._loop.call_later(self.freeze_every, self._tick)

    def uninstall(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        gc.unfreeze()

    def _tick(self) -> None:
        self._timer = self._loop.call_later(self.freeze_every, self._tick)
        now = self._clock()
        # Full collections come by themselves only where much is allocated, and not
        # often enough to keep the growth rule (measured: a node's RSS grew by 165 MB
        # per 210 participants who had come and gone, 0.1 -> 0.77 GB over four 70-room
        # runs, where without the young freeze it levelled at 0.43 GB): both rules are
        # kept here too.
        due = now - self._whole_at >= self.thaw_after
        if not due and now >= self._check_at:
            self._check_at = now + self.check_every
            due = sys.getallocatedblocks() > self.thaw_growth * self._base
        if due:
            self._whole_heap()
            return
        gc.freeze()
        self.freezes += 1

    def _whole_heap(self) -> None:
        """Examine everything now (the long pause the thaw rule bounds): frozen cycles
        are freed, and :meth:`_after_full` freezes the survivors and takes the new base.
        With the young freeze on it cannot wait for the next full collection: the timer
        would freeze everything again before it came."""
        gc.unfreeze()
        full = self.full
        self._thawed = True
        gc.collect()
        if self.full == full:
            # No collection ran (another thread's was under way): frozen again, and the
            # next tick tries again - the pending _after_full must not take this for a
            # whole-heap one.
            self._thawed = False
            gc.freeze()
            self._check_at = 0.0
            return
        self.thaws += 1

    def _thaw_due(self, blocks: int) -> bool:
        return (
            blocks > self.thaw_growth * self._base
            or self._clock() - self._whole_at >= self.thaw_after
        )

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        self.full += 1
        if self._loop.is_closed():
            return
        # Not from inside the collector's callback: on the loop, before anything else
        # has had time to allocate much. A collection may run in another thread (an
        # executor's): threadsafe, so that the loop wakes for it.
        self._loop.call_soon_threadsafe(self._after_full)

    def _after_full(self) -> None:
        gc.freeze()
        # The heap's size by Python's allocated memory blocks (a walk over pymalloc's
        # pools: 0.8 ms at 6 M blocks; counting the frozen objects instead,
        # gc.get_freeze_count(), walks every one of them: 20 ms at 45 rooms).
        blocks = sys.getallocatedblocks()
        if self._thawed:
            # That one examined the whole heap: what it left is the new base.
            self._thawed = False
            self._base = blocks
            self._whole_at = self._clock()
        elif self._thaw_due(blocks):
            if self.freeze_every > 0:
                # Now, while joins allocate (what made this full collection come).
                self._whole_heap()
            else:
                # The next full collection examines everything, and frees frozen cycles.
                gc.unfreeze()
                self._thawed = True
                self.thaws += 1


def install(loop: asyncio.AbstractEventLoop) -> GcPolicy:
    every = os.environ.get("ROUNDTABLE_GC_FREEZE_EVERY")
    policy = GcPolicy(loop, freeze_every=FREEZE_EVERY if every is None else float(every))
    policy.install()
    return policy


__all__ = ["CHECK_EVERY", "FREEZE_EVERY", "THAW_AFTER", "THAW_GROWTH", "GcPolicy", "install"]
