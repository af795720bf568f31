"""A participant removed, or replaced by its own new page, while the router is still busy
with it: real aiortc peers on loopback, calls interleaved the way the control plane's
tasks interleave them."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from sfu.errors import MediaError
from tests.media import CLIENT_CONFIG, ColourVideoTrack, Peer, Room, close_to, wait_for

pytestmark = pytest.mark.slow

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)


def udp_sockets() -> int:
    """UDP sockets this process holds open (the SFU's connections and the test peers')."""
    inodes: set[str] = set()
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        with open(table) as f:
            inodes.update(line.split()[9] for line in f.readlines()[1:])
    ours = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        ours += link.startswith("socket:[") and link[8:-1] in inodes
    return ours


def answered_or_refused(results: list[object]) -> bool:
    """A call caught up in a removal may be refused with a code, but not crash."""
    return all(not isinstance(r, BaseException) or isinstance(r, MediaError) for r in results)


@pytest.mark.parametrize("end", ["remove", "close"])
async def test_remove_or_close_during_a_pending_publish_leaves_no_publisher_or_socket(
    end: str,
) -> None:
    """``Router.remove`` (the participant left) or ``Router.close`` (the room ended)
    while the publish connection gathers its sockets."""
    room = Room()
    router = room.router
    page = RTCPeerConnection(CLIENT_CONFIG)
    try:
        await room.join("b", GREEN, publish=False)
        base = udp_sockets()
        page.addTrack(AudioStreamTrack())
        page.addTrack(ColourVideoTrack(RED))
        await page.setLocalDescription(await page.createOffer())
        offer = page.localDescription.sdp

        def gathering() -> bool:
            publisher = router.publishers.get("a")
            return publisher is not None and publisher.pc.iceGatheringState == "gathering"

        first = asyncio.ensure_future(router.publish("a", offer))
        await wait_for(gathering, timeout=10, interval=0)
        # The same page's re-offer, waiting for the first (called before the removal).
        again = asyncio.ensure_future(router.publish("a", offer))
        await asyncio.sleep(0)
        await (router.remove("a") if end == "remove" else router.close())
        results = await asyncio.gather(first, again, return_exceptions=True)
        await page.close()

        assert answered_or_refused(results), results
        assert "a" not in router.publishers
        assert router.tracks("a") == []
        # Every socket the removed connection gathered is closed again.
        await wait_for(lambda: udp_sockets() == base, timeout=5)
    finally:
        await page.close()
        await room.close()


async def test_remove_during_a_pending_subscribe_leaves_no_subscriber() -> None:
    room = Room()
    router = room.router
    try:
        await room.join("a", RED)
        await wait_for(lambda: len(router.tracks("a")) == 2, timeout=10)
        base = udp_sockets()

        def gathering() -> bool:
            subscriber = router.subscribers.get("b")
            return (
                subscriber is not None
                and subscriber.pc is not None
                and subscriber.pc.iceGatheringState == "gathering"
            )

        first = asyncio.ensure_future(router.subscribe("b"))
        await wait_for(gathering, timeout=10, interval=0)
        again = asyncio.ensure_future(router.subscribe("b"))  # called before the removal
        await asyncio.sleep(0)
        await router.remove("b")
        results = await asyncio.gather(first, again, return_exceptions=True)

        assert answered_or_refused(results), results
        assert "b" not in router.subscribers
        assert not [leg for leg in router.video_legs() if leg.subscriber == "b"]
        await wait_for(lambda: udp_sockets() == base, timeout=5)
    finally:
        await room.close()


async def test_a_seat_takeover_republishes_to_every_subscriber() -> None:
    """The participant's new page takes the seat (RoomHub.join with ``takeover``): the
    hub removes the old page's media and the new page publishes under the same id, so
    its tracks have the same ids (``pid:mid``) on new forwarders. A subscriber whose
    next offer comes only after that (its page still owed the answer to an earlier
    offer) must follow the new forwarders, not keep legs on the closed ones."""
    room = Room()
    router = room.router
    try:
        await room.join("a", RED)
        b = await room.join("b", GREEN)
        await wait_for(lambda: b.decoded("a", "video") >= 5, timeout=20)
        old_tracks = {t.id for t in router.tracks("a")}

        del room.peers["b"]  # b's renegotiation waits (its page owes an answer)
        old_page = room.peers.pop("a")
        await router.remove("a")  # what RoomHub.join does to the replaced connection
        await old_page.close()
        new_page = Peer("a", router, BLUE)
        room.peers["a"] = new_page
        await new_page.renegotiate()
        await new_page.publish()
        await wait_for(lambda: len(router.tracks("a")) == 2, timeout=10)
        assert {t.id for t in router.tracks("a")} == old_tracks  # same ids, new forwarders

        room.peers["b"] = b
        video, audio = b.decoded("a", "video"), b.decoded("a", "audio")
        await b.renegotiate()  # b's answer came: its pending renegotiation runs
        await wait_for(
            lambda: (
                b.decoded("a", "video") >= video + 10
                and close_to(b.received.colours["a"], BLUE)
                and b.decoded("a", "audio") >= audio + 10
            ),
            timeout=10,
        )
    finally:
        await room.close()
