"""The router forwards encoded media between real aiortc peers on loopback."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCSessionDescription

from sfu import aiortc_hooks
from sfu.errors import MediaError
from sfu.router import Router
from tests.media import Peer, Room, close_to, wait_for
from tests.simulcast_peer import SimulcastPublisher

pytestmark = pytest.mark.slow

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)


async def test_three_participants_decode_each_other() -> None:
    room = Room()
    try:
        colours = {"a": RED, "b": GREEN, "c": BLUE}
        for pid, colour in colours.items():
            await room.join(pid, colour)

        def everyone_decodes() -> bool:
            return all(
                room.peers[me].decoded(other, kind) >= 5
                for me in colours
                for other in colours
                if other != me
                for kind in ("audio", "video")
            )

        await wait_for(everyone_decodes, timeout=20)
        # Each receiver got the right publisher behind each track (routing, not just flow).
        for me in colours:
            for other, colour in colours.items():
                if other != me:
                    assert close_to(room.peers[me].received.colours[other], colour)
            assert room.peers[me].decoded(me, "video") == 0
        # No simulcast track in the room: the router's layer tick has nothing to move
        # and stops waking the loop (issue 16).
        await wait_for(lambda: room.router._tick_task is None, timeout=5)
        # The subscribers' allocators and counter syncs are jobs on the loop's timer wheel,
        # not a task (and a wake-up) each.
        assert all(s.allocator.running for s in room.router.subscribers.values())
        periodic = ("Allocator._run", "Subscriber._sync_legs", "Router._tick")
        assert not [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ in periodic]
    finally:
        await room.close()


async def test_router_creates_no_decoder_or_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every codec object in this process must belong to a test peer, never to the SFU."""
    import sys

    import aiortc.rtcrtpreceiver as rtcrtpreceiver
    import aiortc.rtcrtpsender as rtcrtpsender

    room = Room()
    made: list[tuple[str, object]] = []
    real_get_encoder, real_get_decoder = rtcrtpsender.get_encoder, rtcrtpreceiver.get_decoder

    def sfu_senders() -> set[int]:
        return {
            id(t.sender)
            for s in room.router.subscribers.values()
            if s.pc is not None
            for t in s.pc.getTransceivers()
        } | {id(t.sender) for p in room.router.publishers.values() for t in p.pc.getTransceivers()}

    def sfu_receiver_queues() -> set[int]:
        return {
            id(t.receiver.track._queue)
            for p in room.router.publishers.values()
            for t in p.pc.getTransceivers()
            if t.receiver.track is not None
        }

    def get_encoder(codec):  # called from RTCRtpSender._next_encoded_frame
        owner = sys._getframe(1).f_locals.get("self")
        made.append(("encoder", owner))
        if id(owner) in sfu_senders():
            raise AssertionError("the SFU created an encoder")
        return real_get_encoder(codec)

    def get_decoder(codec):  # called from aiortc's decoder_worker thread
        output_q = sys._getframe(1).f_locals.get("output_q")
        made.append(("decoder", output_q))
        if id(output_q) in sfu_receiver_queues():
            raise AssertionError("the SFU created a decoder")
        return real_get_decoder(codec)

    monkeypatch.setattr(rtcrtpsender, "get_encoder", get_encoder)
    monkeypatch.setattr(rtcrtpreceiver, "get_decoder", get_decoder)
    # and a simulcast publisher (three VP8 layers, encoded by the test peer itself)
    cam = SimulcastPublisher("cam", room.router)
    try:
        pids = ("a", "b", "c")
        for pid, colour in zip(pids, (RED, GREEN, BLUE), strict=True):
            await room.join(pid, colour)
        await cam.publish()
        await wait_for(
            lambda: (
                all(
                    room.peers[me].decoded(o, k) >= 5
                    for me in pids
                    for o in pids
                    if o != me
                    for k in ("audio", "video")
                )
                and all(room.peers[me].decoded("cam", "video") >= 5 for me in pids)
            ),
            timeout=30,
        )
        # Exactly what the test peers need: 3 × (audio + video) encoders and 3 × 2
        # publishers × 2 kinds + 3 × the simulcast video decoders. Anything more is
        # the SFU transcoding (tests/test_simulcast.py checks the layered payloads
        # arrive byte for byte, but for the VP8 picture id a layer switch renumbers).
        assert sum(1 for kind, _ in made if kind == "encoder") == 6
        assert sum(1 for kind, _ in made if kind == "decoder") == 12 + 3
        assert room.router.stats.packets_out > 0
    finally:
        await cam.close()
        await room.close()


async def test_mid_stream_subscriber_gets_a_keyframe_quickly() -> None:
    room = Room()
    try:
        await room.join("a", RED)
        await room.join("b", GREEN)
        await wait_for(lambda: room.peers["b"].decoded("a", "video") >= 30, timeout=20)
        # a's encoder is now well past its first key frame; c must get one by PLI relay.
        late = await room.join("c", BLUE, publish=False)
        waited = await wait_for(
            lambda: late.decoded("a", "video") >= 1 and late.decoded("b", "video") >= 1,
            timeout=5,
        )
        print(f"mid-stream subscriber: first decoded key frame after {waited * 1000:.0f} ms")
        assert waited < 2.0
        assert close_to(late.received.colours["a"], RED)
    finally:
        await room.close()


async def test_leaving_participant_disappears_and_nothing_is_left() -> None:
    room = Room()
    try:
        for pid, colour in (("a", RED), ("b", GREEN), ("c", BLUE)):
            await room.join(pid, colour)
        await wait_for(lambda: room.peers["a"].decoded("c", "video") >= 5, timeout=20)
        c_mids = {mid for mid, (owner, _) in room.peers["a"].mid_owner.items() if owner == "c"}
        c_pub = room.router.publishers["c"].pc

        await room.leave("c")

        def c_gone_for(pid: str) -> bool:
            sub = room.peers[pid].sub
            return all(
                t.currentDirection == "inactive"
                for t in sub.getTransceivers()
                if t.mid in {m for m, (o, _) in room.peers[pid].mid_owner.items() if o == "c"}
            )

        took = await wait_for(lambda: c_gone_for("a") and c_gone_for("b"), timeout=2)
        print(f"departed participant's tracks removed from others in {took * 1000:.0f} ms")
        assert c_mids
        router = room.router
        assert "c" not in router.publishers and "c" not in router.subscribers
        assert c_pub.connectionState == "closed"
        assert all(t.publisher_id != "c" for t in router._forwarders())
        assert "c" not in router._locks  # not one lock per id that ever joined
        legs = [leg for s in router.subscribers.values() for leg in (*s.legs.values(), *s._idle)]
        assert all(leg.source is None or leg.source.publisher_id != "c" for leg in legs)
        leg_tasks = [
            t
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") == "Leg._run" and not t.done()
        ]
        assert len(leg_tasks) == len(legs)  # c's own subscribe legs were cancelled
        # the other two still talk
        before = room.peers["a"].decoded("b", "video")
        await wait_for(lambda: room.peers["a"].decoded("b", "video") >= before + 10, timeout=5)
    finally:
        await room.close()


async def test_calls_for_one_participant_take_turns_and_leave_no_lock_behind() -> None:
    """Router._turn: a call made while another for the same id holds its turn, after
    the first holder left, still waits (the lock lives while anyone holds or waits for
    it), and once the last one is through the id holds no lock (a long room with many
    reconnects kept one per id that ever joined)."""
    router = Router("r")
    order: list[str] = []
    go_on = {name: asyncio.Event() for name in "123"}
    inside = {name: asyncio.Event() for name in "123"}

    async def call(name: str) -> None:
        async with router._turn("p"):
            order.append(f"{name} in")
            inside[name].set()
            await go_on[name].wait()
            order.append(f"{name} out")

    try:
        calls = [asyncio.ensure_future(call("1")), asyncio.ensure_future(call("2"))]
        await asyncio.wait_for(inside["1"].wait(), 5)
        go_on["1"].set()
        await asyncio.wait_for(inside["2"].wait(), 5)  # 1 left, 2 holds
        calls.append(asyncio.ensure_future(call("3")))
        for _ in range(5):
            await asyncio.sleep(0)
        assert "3 in" not in order
        go_on["2"].set()
        go_on["3"].set()
        await asyncio.wait_for(asyncio.gather(*calls), 5)
        assert order == ["1 in", "1 out", "2 in", "2 out", "3 in", "3 out"]
        assert router._locks == {}
    finally:
        await router.close()


async def test_forwarding_stops_the_moment_the_dtls_transport_closes() -> None:
    """The C send path reads the DTLS transport's state as a flag that the transport's
    own state change sets (``aiortc_hooks.live``): from the change on, not one more
    packet is protected or sent on the closed transport, while the publisher keeps
    sending; the C route is dropped at the next packet."""
    room = Room()
    try:
        for pid, colour in (("a", RED), ("b", GREEN)):
            await room.join(pid, colour)
        await wait_for(lambda: room.peers["b"].decoded("a", "video") >= 10, timeout=30)
        legs = list(room.router.subscribers["b"].legs.values())
        assert {leg.kind for leg in legs} == {"audio", "video"}
        await wait_for(lambda: all(leg._fast.routed for leg in legs), timeout=5)
        (dtls,) = {leg.sender.transport for leg in legs}
        assert aiortc_hooks.live(dtls).connected
        for leg in legs:
            leg.sync = lambda: None  # keep the C counters here (no folding into aiortc)
            leg._fast.take_counters()
        await asyncio.sleep(0.5)
        assert all(leg._fast.take_counters()[4] > 0 for leg in legs)  # the C path sends
        at_close: list[tuple[object, ...]] = []

        def on_statechange() -> None:
            # Runs inside the transport's _set_state, as soon as the state changed.
            if dtls.state != "connected" and not at_close:
                for leg in legs:
                    leg._fast.take_counters()  # count from here on
                # the very next packet: not sent, and the route is dropped
                at_close.append(tuple(leg._fast.send(b"x", False, 1, 1, 1, 0) for leg in legs))
                at_close.append(tuple(leg._fast.routed for leg in legs))

        dtls.on("statechange", on_statechange)
        forwarded = room.router.stats.packets_in
        await dtls.stop()
        await wait_for(lambda: bool(at_close), timeout=5)
        assert at_close == [(False,) * len(legs)] * 2
        assert not aiortc_hooks.live(dtls).connected
        # a keeps publishing; nothing more goes out on b's closed transport
        await wait_for(lambda: room.router.stats.packets_in > forwarded + 100, timeout=5)
        assert [leg._fast.take_counters()[4] for leg in legs] == [0] * len(legs)
        assert not any(leg._fast.routed for leg in legs)
    finally:
        await room.close()


async def test_stalled_subscriber_does_not_delay_the_others() -> None:
    room = Room()
    never = asyncio.get_running_loop().create_future()
    try:
        for pid, colour in (("a", RED), ("b", GREEN), ("c", BLUE)):
            await room.join(pid, colour)
        await wait_for(lambda: room.peers["c"].decoded("a", "video") >= 5, timeout=20)

        # c's subscribe transport stops draining: every send on it blocks until the end.
        async def blocked_send(data: bytes) -> None:
            await never

        sub_pc = room.router.subscribers["c"].pc
        for transceiver in sub_pc.getTransceivers():
            transceiver.sender.transport.transport._send = blocked_send
        # The legs' C send path writes to the socket itself; make it look the route up
        # again, so it finds the stalled transport and queues like a full socket would.
        for leg in room.router.subscribers["c"].legs.values():
            leg._fast.clear_route()

        a, b = room.peers["a"], room.peers["b"]
        start_ab, start_ba = a.decoded("b", "video"), b.decoded("a", "video")
        await asyncio.sleep(3)
        # ~90 frames at 30 fps; allow for a loaded CI machine but not for a stall.
        assert a.decoded("b", "video") - start_ab >= 45
        assert b.decoded("a", "video") - start_ba >= 45
        assert room.router.stats.dropped > 0  # c's legs shed load instead of growing
    finally:
        never.set_result(None)  # let the blocked sends finish so aiortc can shut down
        await room.close()


async def test_kinds_not_granted_are_never_forwarded() -> None:
    """A publisher granted audio only gets video answered inactive and forwarded to nobody."""
    room = Room()
    try:
        await room.join("a", RED)
        partner = Peer("p", room.router, GREEN)
        room.peers["p"] = partner
        await partner.renegotiate()
        # A hand-made client offers video although its invite has no video right.
        partner.pub.addTrack(partner.audio)
        partner.pub.addTrack(partner.video)
        await partner.pub.setLocalDescription(await partner.pub.createOffer())
        answer = await room.router.publish(
            "p", partner.pub.localDescription.sdp, kinds=frozenset({"audio"})
        )
        await partner.pub.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await wait_for(lambda: room.peers["a"].decoded("p", "audio") >= 10, timeout=20)
        await asyncio.sleep(1)
        assert room.peers["a"].decoded("p", "video") == 0
        assert [t.kind for t in room.router.tracks("p")] == ["audio"]
        assert "m=video" in answer and "a=inactive" in answer.split("m=video", 1)[1]
    finally:
        await room.close()


@pytest.mark.parametrize(
    "sdp",
    ["", "garbage", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "v=0\r\n" + "a=x\r\n" * 5000],
)
async def test_malformed_offer_is_refused_and_changes_nothing(sdp: str) -> None:
    room = Room()
    try:
        with pytest.raises(MediaError) as excinfo:
            await room.router.publish("x", sdp)
        assert excinfo.value.code == "sdp_invalid"
        assert "x" not in room.router.publishers
    finally:
        await room.close()


async def test_sender_reports_count_what_the_sfu_forwarded() -> None:
    """The legs send through C, outside aiortc's sender: its RTCP sender reports must
    still count what was forwarded (checked here), as must its getStats."""
    room = Room()
    try:
        for pid, colour in (("a", RED), ("b", GREEN)):
            await room.join(pid, colour)
        await wait_for(lambda: room.peers["b"].decoded("a", "video") >= 1, timeout=20)
        sub = room.peers["b"].sub
        assert sub is not None
        receivers = [t.receiver for t in sub.getTransceivers() if t.kind == "video"]
        assert receivers

        async def reported() -> int:
            stats = await receivers[0].getStats()
            return max(
                (s.packetsSent for s in stats.values() if s.type == "remote-outbound-rtp"),
                default=0,
            )

        deadline = asyncio.get_running_loop().time() + 15
        while await reported() < 30:  # ~1 s of video, from a report the SFU sent
            assert asyncio.get_running_loop().time() < deadline, "no sender report arrived"
            await asyncio.sleep(0.2)
        leg = next(iter(room.router.subscribers["b"].legs.values()))
        leg.sync()
        sent = await leg.sender.getStats()
        assert any(s.type == "outbound-rtp" and s.packetsSent > 0 for s in sent.values())
    finally:
        await room.close()


async def test_published_packets_go_the_c_way_and_are_still_counted() -> None:
    """Once a track's SSRC is known, its in-order packets are forwarded and accounted by
    the transport's C Inbound (sfu/fastpath/inbound.c), not Python: the subscriber still
    decodes, and aiortc's receive statistics (its RTCP receiver reports, getStats) and
    the room's counters still count every packet."""
    room = Room()
    try:
        for pid, colour in (("a", RED), ("b", GREEN)):
            await room.join(pid, colour)
        await wait_for(lambda: room.peers["b"].decoded("a", "video") >= 30, timeout=30)
        forwarders = list(room.router.publishers["a"].forwarders.values())
        assert {f.kind for f in forwarders} == {"audio", "video"}
        taken = 0
        for fwd in forwarders:
            fast, slow = fwd._inbound.counts
            assert fast > slow, (fwd.kind, fast, slow)
            stats = await fwd._receiver.getStats()
            received = sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp")
            assert received >= fast
            taken += fast
        assert room.router.stats.packets_in >= taken
        assert close_to(room.peers["b"].received.colours["a"], RED)
    finally:
        await room.close()


async def test_a_stream_with_a_new_ssrc_leaves_no_old_registration_behind() -> None:
    """A publisher whose encoder restarts on a new SSRC (or a layer that learns one):
    the transport's C Inbound takes the new SSRC, and the old one is no longer routed,
    so it neither keeps the track alive nor fans packets out without a decision."""
    room = Room()
    try:
        for pid, colour in (("a", RED), ("b", GREEN)):
            await room.join(pid, colour)
        b = room.peers["b"]
        await wait_for(lambda: b.decoded("a", "video") >= 10, timeout=30)
        fwd = next(f for f in room.router.publishers["a"].forwarders.values() if f.kind == "video")
        receiver = fwd._receiver
        sender = next(s for s in room.peers["a"].pub.getSenders() if s.track.kind == "video")
        old = sender._ssrc
        await wait_for(lambda: old in aiortc_hooks.inbound_ssrcs(receiver), timeout=10)
        # a's browser restarts the encoder: the same track, from now on a new SSRC
        new = sender._ssrc = (old + 1) & 0xFFFFFFFF
        frames = b.decoded("a", "video")
        await wait_for(lambda: new in aiortc_hooks.inbound_ssrcs(receiver), timeout=10)
        await wait_for(lambda: b.decoded("a", "video") > frames + 10, timeout=15)
        assert old not in aiortc_hooks.inbound_ssrcs(receiver)
    finally:
        await room.close()
