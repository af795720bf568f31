"""Simulcast through the real SFU router with real aiortc peers on both sides.

The publisher offers three VP8 layers the way Chromium does (``tests/simulcast_peer.py``);
the subscriber is an ordinary aiortc peer that decodes what it gets. What the
subscriber's connection receives is recorded packet by packet.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiortc.rtp import RtpPacket

from sfu.codecs import vp8_keyframe_start
from sfu.router import LayersWanted, TracksChanged
from sfu.simulcast import answer_layers, offered_layers
from tests.media import Room, wait_for
from tests.simulcast_peer import RIDS, SIZES, SimulcastPublisher, simulcast_offer


class Recorder:
    """Every RTP packet a subscriber's video receiver gets, before aiortc handles it."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []

    def install(self, receiver: Any) -> None:
        original = receiver._handle_rtp_packet

        async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
            self.packets.append(packet)
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle


async def _room_with_simulcast() -> tuple[Room, SimulcastPublisher, Any, Recorder]:
    room = Room()
    viewer = await room.join("viewer", (0, 0, 0), publish=False)
    publisher = SimulcastPublisher("cam", room.router)
    await publisher.publish()
    await wait_for(lambda: viewer.sub is not None and viewer.sub.getTransceivers(), timeout=10)
    recorder = Recorder()
    recorder.install(viewer.sub.getTransceivers()[0].receiver)
    return room, publisher, viewer, recorder


def test_answer_receives_the_offered_layers() -> None:
    offer = simulcast_offer(
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=sendonly\r\n"
        "a=rtpmap:96 VP8/90000\r\n"
    )
    offered = offered_layers(offer)
    assert offered["0"].rids == RIDS
    answer = answer_layers(
        "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=recvonly\r\n", offered
    )
    lines = answer.split("\r\n")
    assert [x for x in lines if x.startswith("a=rid:")] == [f"a=rid:{r} recv" for r in RIDS]
    assert "a=simulcast:recv l;m;h" in lines
    assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in lines
    assert "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id" in lines
    assert "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid" in lines
    # without simulcast in the offer, nothing is added
    assert answer_layers("v=0\r\nm=video 9 X 96\r\na=mid:0\r\n", {}) == (
        "v=0\r\nm=video 9 X 96\r\na=mid:0\r\n"
    )


async def test_one_layer_per_subscriber_switched_at_key_frames_with_continuous_numbers() -> None:
    room, publisher, viewer, rec = await _room_with_simulcast()
    try:
        assert "a=simulcast:recv l;m;h" in publisher.answer
        track = room.router.publishers["cam"].forwarders[publisher.mid]
        assert [f.rid for f in track.layers] == list(RIDS)
        # Every layer arrives at the SFU in its own forwarder, learnt by rid.
        await wait_for(lambda: all(f.packets_in > 0 for f in track.layers), timeout=15)
        await wait_for(lambda: all(f.width > 0 for f in track.layers), timeout=15)
        assert [(f.width, f.height) for f in track.layers] == [SIZES[r] for r in RIDS]

        # No view reported: the top layer; the viewer decodes it.
        await wait_for(lambda: viewer.decoded("cam", "video") >= 10, timeout=20)
        leg = room.router.legs_of("viewer")[0]
        assert leg.layer == 2
        # A small tile: the low layer, at a key frame of the low layer.
        room.router.set_view("viewer", {"cam": (True, 70, 50)})
        await wait_for(lambda: leg.layer == 0, timeout=10)
        mark = len(rec.packets)
        await wait_for(lambda: len(rec.packets) > mark + 30, timeout=10)
        # A mid-sized one: the middle layer.
        room.router.set_view("viewer", {"cam": (True, 150, 110)})
        await wait_for(lambda: leg.layer == 1, timeout=10)
        frames_before = viewer.decoded("cam", "video")
        await wait_for(lambda: viewer.decoded("cam", "video") > frames_before + 10, timeout=10)

        packets = list(rec.packets)
        sent = {r: publisher.layers[r].payloads for r in RIDS}
        # One SSRC and payload type for the subscriber whatever the layer.
        assert len({p.ssrc for p in packets}) == 1
        assert len({p.payload_type for p in packets}) == 1
        # Continuous sequence numbers: each packet the one after the previous (no loss
        # on loopback, none made by the switches).
        seqs = [p.sequence_number for p in packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False)), seqs
        # Timestamps never go back and never jump by more than a second.
        tss = [p.timestamp for p in packets]
        steps = [(b - a) & 0xFFFFFFFF for a, b in zip(tss, tss[1:], strict=False)]
        assert all(s < 90000 for s in steps), max(steps)
        # Byte for byte the publisher's payloads (no transcoding), and every change of
        # layer starts with a key frame of the new layer.
        layer_of = []
        for p in packets:
            owners = [r for r in RIDS if p.payload in sent[r]]
            assert owners, "a payload the publisher never sent"
            layer_of.append(owners[0])
        changes = [i for i in range(1, len(packets)) if layer_of[i] != layer_of[i - 1]]
        assert [layer_of[i] for i in changes] == ["l", "m"], [layer_of[i] for i in changes]
        for i in changes:
            assert vp8_keyframe_start(packets[i].payload), f"switch at a non-key packet {i}"
    finally:
        await publisher.close()
        await room.close()


async def test_a_hidden_tile_gets_no_video_and_unused_layers_are_stopped() -> None:
    room, publisher, viewer, rec = await _room_with_simulcast()
    try:
        await wait_for(lambda: viewer.decoded("cam", "video") >= 5, timeout=20)
        leg = room.router.legs_of("viewer")[0]
        room.router.set_view("viewer", {"cam": (False, 0, 0)})
        assert leg.layer is None
        await asyncio.sleep(0.3)  # packets in flight on loopback
        leg.sync()  # fold in what the C path counted
        count, sent_by_leg = len(rec.packets), leg.packets
        await asyncio.sleep(1.5)
        leg.sync()
        assert len(rec.packets) == count
        assert leg.packets == sent_by_leg
        # Nobody wants m or h now: after the hold time the publisher is told to keep
        # only the lowest layer.
        await wait_for(
            lambda: any(isinstance(e, LayersWanted) and e.rids == ("l",) for e in room.events),
            timeout=10,
        )
        for rid in ("m", "h"):
            publisher.layers[rid].active = False
        # Visible and large again: the publisher is asked for h at once, and the leg
        # starts on what flows (l) until h flows again.
        room.router.set_view("viewer", {"cam": (True, 640, 480)})
        await wait_for(lambda: len(rec.packets) > count + 10, timeout=10)
        room.router.update_layers()
        wanted = [e for e in room.events if isinstance(e, LayersWanted)]
        assert wanted[-1].rids == ("l", "h"), wanted
        assert leg.layer == 0
        publisher.layers["h"].active = True
        publisher.layers["h"].keyframe_due = True
        await wait_for(lambda: leg.layer == 2, timeout=10)
        # The allocator's cap wins over the view; None pauses.
        leg.set_cap(1)
        await wait_for(lambda: leg.layer in (0, 1) and leg.wanted_layer() == 1, timeout=5)
        leg.set_cap(None)
        assert leg.layer is None and leg.paused_by_cap
        assert any(isinstance(e, TracksChanged) for e in room.events)
    finally:
        await publisher.close()
        await room.close()


@pytest.mark.parametrize("rid_id", [0, 7])
def test_parse_rtp_reads_the_stream_id_extensions(rid_id: int) -> None:
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters as Ext
    from aiortc.rtcrtpparameters import RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap

    from sfu import _fastpath

    ext = HeaderExtensionsMap()
    ext.configure(
        RTCRtpParameters(
            headerExtensions=[
                Ext(id=3, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
                Ext(id=7, uri="urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
                Ext(id=8, uri="urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"),
            ]
        )
    )
    packet = RtpPacket(payload_type=96, sequence_number=1, timestamp=2, ssrc=3, payload=b"x")
    packet.extensions.mid = "1"
    packet.extensions.rtp_stream_id = "h"
    got = _fastpath.parse_rtp(packet.serialize(ext), 0, 3, rid_id, 8)
    assert got.mid == "1"
    assert got.rtp_stream_id == ("h" if rid_id else None)
    assert got.extensions.repaired_rtp_stream_id is None


def test_the_view_event_is_validated_strictly() -> None:
    from signaling.errors import InvalidPayload
    from signaling.events import MAX_VIEW_TILES, parse

    tile = {"participant": "p_0123456789abcdef", "visible": True, "width": 640, "height": 480}
    assert parse("view", ({"tiles": [tile]},)) == {"tiles": [tile]}
    for bad in (
        {"tiles": [tile] * (MAX_VIEW_TILES + 1)},  # more tiles than a room holds
        {"tiles": [{**tile, "width": -1}]},
        {"tiles": [{**tile, "height": 20000}]},
        {"tiles": [{**tile, "visible": 1}]},  # no coercion
        {"tiles": [{**tile, "participant": "../etc"}]},
        {"tiles": [{**tile, "extra": 1}]},
        {"tiles": [tile], "more": []},
        {},
    ):
        with pytest.raises(InvalidPayload):
            parse("view", (bad,))
