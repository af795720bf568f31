"""A participant's closed connections are freed by reference counting (sfu.unlink), not
left as cyclic garbage for the GC's whole-heap collection (a 0.2-1 s stall of every call
on the node at 70 rooms × 3)."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref

import pytest

from sfu import unlink as unlink_mod
from sfu.ice import connections as _connections
from sfu.ports import MediaPorts
from sfu.router import MediaConfig
from sfu.udpmux import UdpMux
from tests.media import Room, wait_for
from tests.ports import free_udp_port

pytestmark = pytest.mark.slow

MEDIA_HOST = os.environ.get("ROUNDTABLE_MEDIA_HOST", "127.0.0.1")


@pytest.mark.parametrize("shared_port", [True, False], ids=["shared-port", "own-sockets"])
async def test_a_participant_who_left_is_freed_without_the_garbage_collector(
    monkeypatch: pytest.MonkeyPatch, shared_port: bool
) -> None:
    # Longer than a connection's periodic jobs take to see it closed (RTCP: ≤ 1.5 s).
    monkeypatch.setattr(unlink_mod, "UNLINK_AFTER", 2.0)
    mux = UdpMux(free_udp_port()) if shared_port else None
    ports = MediaPorts(mux=mux) if mux is not None else None
    room = Room(config=MediaConfig(media_host=MEDIA_HOST, ports=ports))
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
        if mux is not None:  # the shared socket routes to a only, and still does
            (shared,) = mux.sockets
            assert {p.receiver.local_username for p in shared._protocols} == {
                c.local_username
                for pc in (room.router.subscribers["a"].pc, room.router.publishers["a"].pc)
                for c in _connections(pc)
            }
        # The node takes a new participant after the unlink: a and c see each other.
        await room.join("c", (30, 30, 220))
        await wait_for(lambda: room.peers["a"].decoded("c", "video") >= 3, timeout=20)
        await wait_for(lambda: room.peers["c"].decoded("a", "video") >= 3, timeout=20)
    finally:
        await room.close()
        if mux is not None:
            mux.close()


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


async def test_a_connection_closed_while_waiting_for_the_shared_socket_attaches_nothing() -> None:
    """Closed during its gathering (a participant left while its offer was answered),
    a connection must leave no protocol on the shared socket: it would route datagrams
    to a connection whose objects sfu.unlink clears."""
    import aioice

    from sfu.ports import _PORTS, MediaPorts, _gather

    mux = UdpMux(free_udp_port())
    try:
        connection = aioice.Connection(ice_controlling=False, components=1)
        setattr(connection, _PORTS, MediaPorts(mux=mux))
        async with mux._lock:  # another connection is opening the socket
            gathering = asyncio.ensure_future(_gather(connection, 1, [MEDIA_HOST]))
            await asyncio.sleep(0.05)
            await connection.close()
        assert await gathering == []
        assert connection._protocols == []
        (shared,) = mux.sockets
        assert not shared._protocols and not shared._by_ufrag
    finally:
        mux.close()


async def test_a_closed_connection_with_an_open_ice_socket_is_left_to_the_collector() -> None:
    """What sfu.unlink must never do: clear a protocol the shared socket still routes to
    (every other call on the socket would then see AttributeErrors)."""
    from aiortc import RTCPeerConnection

    from sfu.ice import CLOSED_PROTOCOLS
    from sfu.peer import close_quietly

    mux = UdpMux(free_udp_port())
    try:
        pc = RTCPeerConnection()
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        await close_quietly(pc)
        connection = pc.getTransceivers()[0].sender.transport.transport._connection
        shared = await mux.socket_for(MEDIA_HOST)
        late = shared.attach(connection, 1)  # as a gathering that ended after close did
        setattr(connection, CLOSED_PROTOCOLS, [late])
        unlink_mod.unlink(pc)
        assert not unlink_mod.unlinked(pc)
        assert vars(late) and vars(connection)  # nothing cleared
        shared.forget(late)  # the socket still works with what it routes
    finally:
        mux.close()


async def test_a_closed_publishers_forwarder_asks_its_receiver_for_nothing() -> None:
    """A subscriber's answer on its way when the publisher left may make a leg follow the
    closed forwarder again; its key-frame request must not reach the receiver, whose
    objects sfu.unlink clears ("Task exception was never retrieved" before)."""
    from sfu.forwarder import Forwarder
    from sfu.stats import RoomStats

    class Receiver:  # what a cleared RTCRtpReceiver has left: no attributes
        pass

    forwarder = Forwarder("t", "p", "video", Receiver(), RoomStats(), 0.0)  # type: ignore[arg-type]
    forwarder.ssrc = 1234
    await forwarder.close()
    forwarder.request_keyframe()
    assert not forwarder._tasks
