"""Simulcast through the real SFU router with real aiortc peers on both sides.

The publisher offers three VP8 layers the way Chromium does (``tests/simulcast_peer.py``);
the subscriber is an ordinary aiortc peer that decodes what it gets. What the
subscriber's connection receives is recorded packet by packet.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any

import pylibsrtp
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RtpPacket
from prometheus_client import CollectorRegistry
from pylibsrtp import Policy, Session

from server.metrics import MediaStatsCollector
from sfu import _fastpath
from sfu import aiortc_hooks as hooks
from sfu.codecs import vp8_keyframe_start
from sfu.forwarder import Leg
from sfu.router import LayersWanted, TracksChanged
from sfu.simulcast import Layers, answer_layers, offered_layers
from sfu.stats import RoomStats
from tests.media import Room, wait_for
from tests.simulcast_peer import (
    MARKED_PACKETS,
    RIDS,
    SIZES,
    SimulcastPublisher,
    simulcast_offer,
)


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


def picture_id(payload: bytes) -> tuple[int, bytes]:
    """The 15-bit PictureID of a VP8 payload descriptor (as aiortc and Chromium write
    it), and the payload with it zeroed."""
    assert payload[0] & 0x80 and payload[1] & 0x80 and payload[2] & 0x80, payload[:4].hex()
    pid = (payload[2] & 0x7F) << 8 | payload[3]
    return pid, payload[:2] + b"\x80\x00" + payload[4:]


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

        # No view reported: the top layer; the viewer decodes it. On a loaded machine the
        # leg may get there from below: the top layer's packets came >0.3 s apart while
        # a lower one's flowed (forwarder.FRESH_NS; back up at its next key frame), or
        # the viewer's own REMB or reports, stalled with the rest of the process, cut
        # the estimate under the top layer's price and the allocator capped the leg (back
        # up with the next probe that passes: within ~2-6 s, sfu.downlink). So wait for
        # the layer and for the top layer's packets themselves, not for frames alone.
        await wait_for(lambda: viewer.decoded("cam", "video") >= 10, timeout=20)
        leg = room.router.legs_of("viewer")[0]
        top = publisher.layers[RIDS[-1]].payloads

        def on_top_layer() -> bool:
            # The leg forwards the top layer, and its packets reach the viewer: in order
            # on loopback, so every packet after this one is the top layer's too, until
            # the next switch.
            return (
                leg.layer == 2
                and bool(rec.packets)
                and picture_id(rec.packets[-1].payload)[1] in {picture_id(x)[1] for x in top}
            )

        await wait_for(on_top_layer, timeout=20)
        on_top = len(rec.packets)
        # ... and decodes it (that it stayed there until the view changed: the layer
        # sequence below, which counts from here).
        frames_before = viewer.decoded("cam", "video")
        await wait_for(lambda: viewer.decoded("cam", "video") >= frames_before + 10, timeout=10)
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
        # Byte for byte the publisher's payloads (no transcoding) but for the picture id
        # of the VP8 payload descriptor, and every change of layer starts with a key
        # frame of the new layer.
        sent_bare = {r: {picture_id(x)[1] for x in sent[r]} for r in RIDS}
        layer_of = []
        for p in packets:
            owners = [r for r in RIDS if picture_id(p.payload)[1] in sent_bare[r]]
            assert owners, "a payload the publisher never sent"
            layer_of.append(owners[0])
        changes = [i for i in range(1, len(packets)) if layer_of[i] != layer_of[i - 1]]
        assert all(vp8_keyframe_start(packets[i].payload) for i in changes)
        changes = [i for i in changes if i >= on_top]
        assert [layer_of[i] for i in changes] == ["l", "m"], [layer_of[i] for i in changes]
        for i in changes:
            assert vp8_keyframe_start(packets[i].payload), f"switch at a non-key packet {i}"
        # The picture ids count on by one per picture across the switches, as one
        # publisher's would (each layer numbers its own pictures).
        pids = [picture_id(p.payload)[0] for p in packets if p.payload[0] & 0x10]
        assert all((b - a) & 0x7FFF == 1 for a, b in zip(pids, pids[1:], strict=False)), pids
        # The layers' packets went the C way (sfu/fastpath/inbound.c); only their first
        # packets and key frames came through Python: so says /metrics too.
        for f in track.layers:
            fast, slow = f._inbound.counts
            assert fast > 4 * slow, (f.rid, fast, slow)
        registry = CollectorRegistry()
        collector = MediaStatsCollector()
        collector.track(room.router)
        registry.register(collector)
        received = registry.get_sample_value("roundtable_media_packets_in_total")
        in_python = registry.get_sample_value("roundtable_media_packets_in_python_total")
        assert received and in_python is not None and in_python < received / 5
    finally:
        await publisher.close()
        await room.close()


async def test_a_hidden_tile_gets_no_video_and_unused_layers_are_stopped() -> None:
    room, publisher, viewer, rec = await _room_with_simulcast()
    try:
        await wait_for(lambda: viewer.decoded("cam", "video") >= 5, timeout=20)
        leg = room.router.legs_of("viewer")[0]
        assert room.router._tick_task is not None  # a simulcast track: layers are ticked
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


async def test_a_cut_leaves_the_old_layer_at_once_a_view_change_at_the_key_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A move down because the link is overfull (the allocator's cut, ``at_once``) stops
    the old layer now and sends nothing until the lower layer's key frame: every packet
    more of the old layer would queue ahead of that key frame on the full link. A move
    down for any other reason keeps the old layer flowing until the key frame. NACKs for
    what was sent before the move are not answered (the key frame needs none of it)."""
    room, publisher, viewer, rec = await _room_with_simulcast()
    try:
        leg = room.router.legs_of("viewer")[0]
        await wait_for(lambda: leg.layer == 2, timeout=20)
        await wait_for(lambda: viewer.decoded("cam", "video") >= 5, timeout=20)
        resent: list[bytes] = []

        async def send_rtp(sender: object, data: bytes) -> None:
            resent.append(data)

        # Repairs after a switch that was no cut (h from the start, or from below at h's
        # key frame) are sent, as ever.
        with monkeypatch.context() as patched:
            patched.setattr(hooks, "send_rtp", send_rtp)
            await leg.retransmit(rec.packets[-1].sequence_number)
        assert len(resent) == 1
        resent.clear()
        # The lower layers hold their key frames until the test lets them go.
        held: dict[str, int] = {"l": 0, "m": 0}

        def holding(rid: str):
            async def on_rtcp(packet: object) -> None:
                held[rid] += 1

            return on_rtcp

        for rid in held:
            publisher.layers[rid]._handle_rtcp_packet = holding(rid)  # type: ignore[method-assign]

        # Not the link (the allocator's own order, a smaller tile): h flows on.
        leg.set_cap(1)
        await wait_for(lambda: held["m"] > 0, timeout=5)  # m's key frame was asked for
        mark = len(rec.packets)
        await asyncio.sleep(0.5)
        assert len(rec.packets) > mark + 10, "the old layer stopped before the key frame"
        assert leg.layer == 2
        # The link's cut: nothing more of h from now, until l's key frame.
        leg.set_cap(0, at_once=True)
        assert leg.layer == 0
        await wait_for(lambda: held["l"] > 0, timeout=5)
        await asyncio.sleep(0.3)  # what was on its way
        mark = len(rec.packets)
        await asyncio.sleep(0.5)
        assert len(rec.packets) == mark, "the old layer flowed on after the cut"
        publisher.layers["l"].keyframe_due = True
        await wait_for(lambda: len(rec.packets) > mark + 5, timeout=10)
        first = rec.packets[mark]
        assert vp8_keyframe_start(first.payload)
        assert first.payload in publisher.layers["l"].payloads or any(
            first.payload[-20:] == x[-20:] for x in publisher.layers["l"].payloads
        )
        frames = viewer.decoded("cam", "video")
        await wait_for(lambda: viewer.decoded("cam", "video") >= frames + 10, timeout=10)
        # Continuous numbers across the cut, as across any switch.
        seqs = [p.sequence_number for p in rec.packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
        # Repairs: none for the old layer's last packet, one for the new layer's first.
        monkeypatch.setattr(hooks, "send_rtp", send_rtp)
        await leg.retransmit(rec.packets[mark - 1].sequence_number)
        assert resent == []
        await leg.retransmit(first.sequence_number)
        assert len(resent) == 1
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


# -- the C path for layers, against the Python path ------------------------------------

KEY = bytes(range(30))  # SRTP: AES_CM_128_HMAC_SHA1_80 key + salt
VP8_SIZES = {"l": (80, 60), "m": (160, 120), "h": (320, 240)}


def vp8_payload(pid: int, tl0: int, key: bool, start: bool, rid: str, n: int) -> bytes:
    """A VP8 RTP payload as Chromium writes it with temporal layers: descriptor with a
    15-bit PictureID, TL0PICIDX and the TID byte; a key frame's header with its size."""
    descriptor = bytes([0x90 if start else 0x80, 0xE0, 0x80 | pid >> 8, pid & 0xFF, tl0, 0x20])
    if not start:
        return descriptor + bytes([n]) * 40
    w, h = VP8_SIZES[rid]
    if key:
        tag = bytes([0x00, 0x01, 0x00]) + b"\x9d\x01\x2a" + w.to_bytes(2, "little")
        return descriptor + tag + h.to_bytes(2, "little") + bytes([n]) * 30
    return descriptor + bytes([0x01, 0x01, 0x00]) + bytes([n]) * 30


LOST = ("h", 25, 1)  # (rid, picture, packet): never arrives (no leg is on h by then)
REORDERED = ("m", 20)  # its two packets arrive swapped (no leg is on m by then)


def layer_packets() -> list[bytes]:
    """Three layers, 30 pictures of two packets each, interleaved as they arrive; every
    layer's first packets carry its rid; picture ids and TL0PICIDX differ per layer (h's
    wrap), key frames at different pictures per layer; one packet lost, two reordered."""
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters as Ext
    from aiortc.rtcrtpparameters import RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap

    ext = HeaderExtensionsMap()
    ext.configure(
        RTCRtpParameters(
            headerExtensions=[Ext(id=7, uri="urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id")]
        )
    )
    first = {"l": (100, 250, 1000), "m": (20000, 3, 30000), "h": (32760, 100, 65530)}
    keys = {"l": {0, 10, 25}, "m": {0, 14}, "h": {0, 18}}
    ssrc = {"l": 0x1111, "m": 0x2222, "h": 0x3333}
    out = []
    for pic in range(30):
        for rid in RIDS:
            pid0, tl00, seq0 = first[rid]
            for part in range(2):
                packet = RtpPacket(
                    payload_type=96,
                    marker=part == 1,
                    sequence_number=(seq0 + 2 * pic + part) & 0xFFFF,
                    timestamp=(7 * seq0 + 3000 * pic) & 0xFFFFFFFF,
                    ssrc=ssrc[rid],
                    payload=vp8_payload(
                        (pid0 + pic) & 0x7FFF,
                        (tl00 + pic) & 0xFF,
                        pic in keys[rid],
                        part == 0,
                        rid,
                        pic,
                    ),
                )
                if pic < 2:
                    packet.extensions.rtp_stream_id = rid
                if (rid, pic, part) != LOST:
                    out.append(packet.serialize(ext))
            if (rid, pic) == REORDERED:
                out[-2:] = out[-1:-3:-1]
    return out


VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
RTX = RTCRtpCodecParameters(
    mimeType="video/rtx", clockRate=90000, payloadType=97, parameters={"apt": 96}
)


class TappedLayers:
    """A real :class:`Layers` on a real (unconnected) aiortc receiver with the receive
    accounting a publisher's transport gets (``tap_receiver``), fed through a C Inbound
    (``c_path``) or straight through the Python handler, and real legs that rewrite,
    protect and send to UDP sinks on loopback."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.stats = RoomStats()
        self.legs: list[Leg] = []
        self.sinks: list[socket.socket] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def start(self, c_path: bool, codecs: list[RTCRtpCodecParameters]) -> None:
        self.receiver = self.pc.addTransceiver("video", direction="recvonly").receiver
        self.layers = Layers("t", "pub", self.receiver, RIDS, self.stats, 0.0)
        # as sfu.publisher does: the layers' tap plus aiortc's receive accounting
        hooks.tap_receiver(self.receiver, self.layers.tap, self.layers.set_codecs)
        self.receiver._track = RemoteStreamTrack(kind="video")  # as a remote description would
        await self.receiver.receive(RTCRtpReceiveParameters(codecs=codecs))
        self.feed = getattr(self.receiver, hooks._RTP_HANDLER)
        if c_path:
            self.feed = _fastpath.Inbound(self.feed)
            setattr(self.receiver.transport, hooks._INBOUND, self.feed)

    def add_leg(self, view: tuple[bool, int, int] | None) -> Leg:
        leg = Leg("video", self.pc.addTransceiver("video", direction="sendonly"), self.stats, 100)
        leg.configure(96, 90000, None, None, vp8=True)
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        self.sinks.append(sink)
        policy = Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND)
        policy.allow_repeat_tx = True  # as aiortc's: a packet sent twice goes out twice
        tx = Session(policy)
        ctx = int(hooks.srtp_ffi.cast("uintptr_t", tx._srtp[0]))
        port = sink.getsockname()[1]
        leg._fast.set_route(
            ctx, hooks._SRTP_PROTECT, tx, self.sock, "127.0.0.1", port, _fastpath.Live(True)
        )
        leg.follow(self.layers, view)
        self.legs.append(leg)
        return leg

    def received(self, leg_index: int) -> list[bytes]:
        """What the leg's sink got, decrypted, until it is quiet for 0.3 s; a packet
        sent twice fails SRTP's replay check here as in a browser, and is counted in
        :attr:`replayed`."""
        rx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND))
        sink = self.sinks[leg_index]
        sink.settimeout(0.3)
        packets = []
        self.replayed = 0
        with pytest.raises(TimeoutError):
            while True:
                data = sink.recv(2048)
                try:
                    packets.append(rx.unprotect(data))
                except pylibsrtp.Error:
                    self.replayed += 1
        return packets

    async def close(self) -> None:
        for leg in self.legs:
            await leg.close()
        await self.layers.close()
        await self.pc.close()
        for s in [*self.sinks, self.sock]:
            s.close()


async def test_layer_switches_forward_the_same_bytes_on_the_c_path_as_in_python() -> None:
    """The same simulcast packets through a Layers' Python path (every packet through
    Layers.tap) and through the C Inbound (what a publisher's transport uses: layers
    register their SSRCs once bound by rid, key frames still come to Python): two legs
    that switch layers at key frames send the subscriber the same packets, with the same
    sequence numbers, payloads and picture ids (continuous across the switches), and
    timestamps that differ only by the wall-clock the switch's rebase reads; and every
    layer's receive statistics and NACK state (one generator per SSRC) end the same."""
    py, c = TappedLayers(), TappedLayers()
    try:
        for path, c_path in ((py, False), (c, True)):
            await path.start(c_path, [VP8])
            random.seed(5)  # the same random first sequence number and timestamp per path
            for view in (None, (True, 150, 110)):
                path.add_leg(view)
        for n, data in enumerate(layer_packets()):
            pic = n // 6
            if pic == 5 and n % 6 == 0:  # leg 0 (top layer) to a small tile: l
                for path in (py, c):
                    path.legs[0].set_view(True, 70, 50)
            if pic == 12 and n % 6 == 0:  # leg 1 to a big tile: h; then capped to l
                for path in (py, c):
                    path.legs[1].set_view(True, 640, 480)
            if pic == 22 and n % 6 == 0:
                for path in (py, c):
                    path.legs[1].set_cap(0)
            now = time.perf_counter_ns()
            for path in (py, c):
                packet = _fastpath.parse_rtp(data, 0, 0, 7, 0)
                packet.arrival_ns = now
                path.feed(packet, 3_900_000_000_000 + n)
        # the C path took the layers' packets but their first ones, key frames, and
        # what follows a gap; the accounting of each layer's SSRC is the same
        taken = sum(f._inbound.counts[0] for f in c.layers.layers)
        assert taken > 100 and sum(f._inbound.counts[0] for f in py.layers.layers) == 0
        streams = [p.receiver._RTCRtpReceiver__remote_streams for p in (py, c)]
        nack_for = [getattr(p.receiver, hooks._ACCOUNT)[1] for p in (py, c)]
        fields = ("base_seq", "max_seq", "cycles", "packets_received", "_last_timestamp")
        for ssrc in (0x1111, 0x2222, 0x3333):
            a, b = (s[ssrc] for s in streams)
            assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
            assert a.packets_lost == b.packets_lost == (1 if ssrc == 0x3333 else 0)
            na, nb = (n(ssrc) for n in nack_for)
            assert (na.max_seq, na.missing) == (nb.max_seq, nb.missing)
            assert len(na.missing) == (1 if ssrc == 0x3333 else 0)
        for leg_no in (0, 1):
            got_py, got_c = py.received(leg_no), c.received(leg_no)
            assert len(got_py) == len(got_c) > 40
            assert py.legs[leg_no].switches == c.legs[leg_no].switches >= 1 + leg_no
            offsets = set()
            for a, b in zip(got_py, got_c, strict=True):
                # all but the SSRC (aiortc's random one per sender) and the timestamp
                assert a[:4] + a[12:] == b[:4] + b[12:]
                offsets.add((int.from_bytes(a[4:8]) - int.from_bytes(b[4:8])) & 0xFFFFFFFF)
            # timestamps: one offset per segment, a few ms apart at most
            assert all(min(o, 2**32 - o) < 900 for o in offsets), offsets
            # what the subscriber sees: continuous sequence numbers and picture ids
            seqs = [int.from_bytes(p[2:4]) for p in got_c]
            assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
            pids = [picture_id(p[12:])[0] for p in got_c if p[12] & 0x10]
            assert all((b - a) & 0x7FFF == 1 for a, b in zip(pids, pids[1:], strict=False))
            tl0s = [p[16] for p in got_c if p[12] & 0x10]
            assert all((b - a) & 0xFF == 1 for a, b in zip(tl0s, tl0s[1:], strict=False))
    finally:
        await py.close()
        await c.close()


async def test_rtx_is_forwarded_only_where_it_repairs_a_loss() -> None:
    """libwebrtc resends recent packets as RTX to probe bandwidth ("payload padding") and
    sends padding-only RTX packets; the SFU forwards an RTX packet only if it carries a
    packet it is missing (one its NACKs ask for), so subscribers get each packet once.
    Once the RTX SSRC is known, its padding is accounted and dropped in C (Track.rtx),
    with the same result and receive statistics as the Python path."""
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters as Ext
    from aiortc.rtcrtpparameters import RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap

    ext = HeaderExtensionsMap()
    ext.configure(
        RTCRtpParameters(
            headerExtensions=[
                Ext(id=7, uri="urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
                Ext(id=8, uri="urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"),
            ]
        )
    )
    sent: dict[int, bytes] = {}
    packets = []
    for seq in range(100, 120):
        payload = vp8_payload(seq, 0, seq == 100, True, "h", seq)
        sent[seq] = payload
        packet = RtpPacket(96, False, seq, 3000 * seq, 0x3333, payload)
        packet.extensions.rtp_stream_id = "h"
        if seq != 110:  # lost on the way
            packets.append(packet.serialize(ext))
    # 105: payload padding (binds the RTX SSRC); 110 repairs the loss; None: padding
    # only; 119 payload padding; 110 again, no longer missing
    for rtx_seq, osn in enumerate((105, 110, None, 119, 110, None)):
        rtx = RtpPacket(97, False, 500 + rtx_seq, 3000 * (osn or 119), 0x3334)
        if osn is not None:
            rtx.payload = osn.to_bytes(2, "big") + sent[osn]
        rtx.extensions.repaired_rtp_stream_id = "h"
        data = bytearray(rtx.serialize(ext))
        if osn is None:
            data[0] |= 0x20  # padding only: 200 bytes, the last says how many
            data += bytes(199) + bytes([200])
        packets.append(bytes(data))
    py, c = TappedLayers(), TappedLayers()
    try:
        for path, c_path in ((py, False), (c, True)):
            await path.start(c_path, [VP8, RTX])
            random.seed(3)
            path.add_leg(None)  # the top layer, h
        for n, data in enumerate(packets):
            for path in (py, c):
                packet = _fastpath.parse_rtp(data, 0, 0, 7, 8)
                packet.arrival_ns = time.perf_counter_ns()
                path.feed(packet, 3_900_000_000_000 + n)
        got = {}
        for name, path in (("py", py), ("c", c)):
            got[name] = [p[12:] for p in path.received(0)]
            assert sorted(got[name]) == sorted(sent.values())  # the repair included
            assert path.replayed == 0  # nothing twice
            assert got[name][-1] == sent[110]
            assert path.layers.layers[2].ssrc == 0x3333
        assert got["py"] == got["c"]
        # the RTX stream's padding after the first packet stayed in C, the repair did not
        assert c.layers.layers[2]._rtx_inbound.counts == (4, 1)
        streams = [p.receiver._RTCRtpReceiver__remote_streams for p in (py, c)]
        fields = ("base_seq", "max_seq", "cycles", "packets_received", "_last_timestamp")
        for ssrc in (0x3333, 0x3334):
            a, b = (s[ssrc] for s in streams)
            assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
        nacks = [getattr(p.receiver, hooks._ACCOUNT)[1](0x3333) for p in (py, c)]
        assert (nacks[0].max_seq, nacks[0].missing) == (nacks[1].max_seq, nacks[1].missing)
    finally:
        await py.close()
        await c.close()


async def test_rtx_is_bound_to_its_layer_by_repaired_rid() -> None:
    """A packet lost on a layer is NACKed by the SFU for that layer's SSRC; the publisher
    repairs it on the layer's own RTX stream, an SSRC no SDP names, marked only with
    repaired-rtp-stream-id. The SFU binds each RTX stream to the layer its repaired rid
    names: the viewer on h gets h's repaired packet and the viewer on l gets l's, each
    in its place in its continuous sequence, and neither gets the other's."""
    room = Room()
    big = await room.join("big", (0, 0, 0), publish=False)
    small = await room.join("small", (0, 0, 0), publish=False)
    publisher = SimulcastPublisher("cam", room.router)
    try:
        await publisher.publish()
        assert publisher.rtx_payload_type is not None  # the SFU answered RTX
        recorders = {}
        for name, viewer in (("big", big), ("small", small)):
            await wait_for(lambda v=viewer: v.sub is not None and v.sub.getTransceivers(), 10)
            recorders[name] = Recorder()
            recorders[name].install(viewer.sub.getTransceivers()[0].receiver)
        room.router.set_view("small", {"cam": (True, 70, 50)})
        legs = {name: room.router.legs_of(name)[0] for name in ("big", "small")}
        await wait_for(lambda: legs["big"].layer == 2 and legs["small"].layer == 0, timeout=20)
        await wait_for(lambda: big.decoded("cam", "video") >= 5, timeout=20)
        await wait_for(lambda: small.decoded("cam", "video") >= 5, timeout=20)
        # l and h each lose one packet a few packets from now.
        for rid in ("l", "h"):
            publisher.layers[rid].drop = 5
        await wait_for(lambda: all(publisher.layers[r].repaired for r in ("l", "h")), 10)
        mark = {n: len(r.packets) for n, r in recorders.items()}
        await wait_for(lambda: all(len(r.packets) > mark[n] + 20 for n, r in recorders.items()), 10)
        repaired = {r: picture_id(publisher.layers[r].repaired[0][1])[1] for r in ("l", "h")}
        for name, rid, other in (("big", "h", "l"), ("small", "l", "h")):
            packets = recorders[name].packets
            got = [picture_id(p.payload)[1] for p in packets]
            assert repaired[rid] in got, (name, rid)
            assert repaired[other] not in got, (name, other)
            # the repair filled the gap: the sequence numbers have no hole
            first = packets[0].sequence_number
            seqs = sorted({(p.sequence_number - first) & 0xFFFF for p in packets})
            assert seqs == list(range(len(seqs))), (name, seqs)
    finally:
        await publisher.close()
        await room.close()


async def test_a_layer_on_a_new_ssrc_leaves_its_old_one_unrouted() -> None:
    """A layer's encoder restarts on a new SSRC (marked with its rid again): the C Inbound
    takes the new SSRC only, and a late packet of the old SSRC (no rid) is not routed to
    the layer again, which would register the old SSRC once more."""
    room, publisher, viewer, _ = await _room_with_simulcast()
    try:
        await wait_for(lambda: viewer.decoded("cam", "video") >= 5, timeout=20)
        fwd = room.router.publishers["cam"].forwarders
        receiver = next(iter(fwd.values())).layers[0]._receiver
        low = publisher.layers["l"]
        old = low.ssrc
        await wait_for(lambda: old in hooks.inbound_ssrcs(receiver), timeout=10)
        # the encoder restarts: a new SSRC, the rid marks and a key frame again
        low.ssrc, low.sent, low.keyframe_due = (old + 1) & 0xFFFFFFFF, 0, True
        await wait_for(lambda: low.ssrc in hooks.inbound_ssrcs(receiver), timeout=10)
        assert old not in hooks.inbound_ssrcs(receiver)
        # a few late packets of the old SSRC, unmarked as after the first ones
        await wait_for(lambda: low.sent > MARKED_PACKETS, timeout=10)
        new = low.ssrc
        low.ssrc = old
        await asyncio.sleep(0.3)
        assert old not in hooks.inbound_ssrcs(receiver)
        low.ssrc = new
        await asyncio.sleep(0.3)
        assert hooks.inbound_ssrcs(receiver) >= {new}
    finally:
        await publisher.close()
        await room.close()
