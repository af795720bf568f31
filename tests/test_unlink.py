"""A participant's closed connections are freed by reference counting (sfu.unlink), not
left as cyclic garbage for the GC's whole-heap collection (a 0.2-1 s stall of every call
on the node at 70 rooms × 3)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from sfu import unlink as unlink_mod
from tests.media import Room, wait_for

pytestmark = pytest.mark.slow


async def test_a_participant_who_left_is_freed_without_the_garbage_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Longer than a connection's periodic jobs take to see it closed (RTCP: ≤ 1.5 s).
    monkeypatch.setattr(unlink_mod, "UNLINK_AFTER", 2.0)
    room = Room()
    try:
        await room.join("a", (220, 30, 30))
        await room.join("b", (30, 200, 30))
        await wait_for(lambda: room.peers["a"].decoded("b", "video") >= 3, timeout=20)
        await wait_for(lambda: room.peers["b"].decoded("a", "video") >= 3, timeout=20)
        router = room.router
        pcs = [router.publishers["b"].pc, router.subscribers["b"].pc]
        assert all(pc is not None for pc in pcs)
        # What the GC would have to find: the connections, and the SRTP sessions in them.
        refs = [weakref.ref(pc) for pc in pcs]
        dtls = {t.sender.transport for pc in pcs for t in pc.getTransceivers()}
        refs += [weakref.ref(t) for t in dtls]
        del pcs, dtls
        gc.collect()
        gc.disable()  # from here only reference counting frees anything
        try:
            await room.leave("b")
            await asyncio.sleep(2.5)
            alive = [type(r()).__name__ for r in refs if r() is not None]
            assert not alive, f"still alive without a collection: {alive}"
        finally:
            gc.enable()
        # a, who stays, keeps its connections.
        assert room.router.subscribers["a"].pc.connectionState == "connected"
        assert room.router.publishers["a"].pc.connectionState == "connected"
    finally:
        await room.close()


async def test_closing_a_connection_again_after_it_was_unlinked_is_harmless() -> None:
    from aiortc import RTCPeerConnection

    from sfu.peer import close_quietly

    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    await close_quietly(pc)
    unlink_mod.unlink(pc)
    assert unlink_mod.unlinked(pc)
    await close_quietly(pc)  # no AttributeError from a cleared connection
