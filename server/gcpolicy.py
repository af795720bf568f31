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

What is frozen is never collected, so cyclic garbage among frozen objects - the
connections of participants who left since - would stay. So the frozen objects are
thawed (``gc.unfreeze()``) once the heap (Python's allocated memory blocks) is
:data:`THAW_GROWTH` times what it was after the last collection that examined
everything (or at start), or :data:`THAW_AFTER` seconds after it, whichever comes
first: the next full collection then examines the whole heap and frees what leaked,
and its survivors are frozen again. That whole-heap collection is still the long pause
(0.2-0.5 s at 45 rooms): it is rarer, not gone. CPython's own rule would run one at
every 25 % of growth. (Objects freed by reference counting - most - are freed whether
frozen or not.)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Thaw (and so examine everything at the next full collection) once the heap grew to
# this many times its size after the last whole-heap collection, or this long after it:
# the garbage frozen meanwhile (participants who left) is bounded by both.
THAW_GROWTH = 1.5
THAW_AFTER = 300.0  # s


class GcPolicy:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        thaw_growth: float = THAW_GROWTH,
        thaw_after: float = THAW_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loop = loop
        self.thaw_growth = thaw_growth
        self.thaw_after = thaw_after
        self._clock = clock
        self._whole_at = clock()  # when the last whole-heap collection ran (or start)
        self.full = 0  # full collections seen
        self.thaws = 0
        self._thawed = False  # the next full collection examines everything
        self._base = 0  # allocated blocks after the last whole-heap collection (or start)

    def install(self) -> None:
        gc.freeze()
        self._base = sys.getallocatedblocks()
        gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        gc.unfreeze()

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
        elif (
            blocks > self.thaw_growth * self._base
            or self._clock() - self._whole_at >= self.thaw_after
        ):
            # The next full collection examines everything, and frees frozen cycles.
            gc.unfreeze()
            self._thawed = True
            self.thaws += 1


def install(loop: asyncio.AbstractEventLoop) -> GcPolicy:
    policy = GcPolicy(loop)
    policy.install()
    return policy


__all__ = ["THAW_AFTER", "THAW_GROWTH", "GcPolicy", "install"]
