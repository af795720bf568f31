"""Taking a node out of a cluster without cutting a call (docs/deploy.md, "Drain").

Draining: ``/readyz`` turns 503 and no new room is placed here, while the calls already
here go on — up to the drain timeout, or until they end by themselves. Then the rooms
still here are released (the next join places them on a live node) and every participant
gets ``node_draining`` with the live nodes' URLs before its connection closes; the page,
the bench and the test clients reconnect there without a reload. The participants are
not marked as gone: the waiting room, admissions and spent invites carry over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from signaling.rooms import RoomHub
from signaling.routing import Router
from signaling.socket import SignalingSocket

log = logging.getLogger(__name__)


async def drain(
    routing: Router,
    hub: RoomHub,
    sock: SignalingSocket,
    seconds: float,
    abort: asyncio.Event,
) -> bool:
    """Drain this node; False if ``abort`` (a second SIGTERM) cut it short."""
    await routing.drain()
    deadline = time.monotonic() + seconds
    log.info("draining: %d room(s) continue, at most %.0f s", len(hub.rooms()), seconds)
    while hub.rooms() and not abort.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(abort.wait(), min(1.0, left))
    if abort.is_set():
        log.info("draining cut short: stopping now")
        return False
    rooms = hub.rooms()
    if rooms:
        log.info("drain timeout: moving the participants of %d room(s)", len(rooms))
        for room in rooms:
            await routing.release(room)
        await sock.move_all(
            "node_draining", "This server is being serviced; the call moves to another one."
        )
    log.info("drained")
    return True
