"""A real aiortc peer that publishes simulcast the way Chromium does.

aiortc cannot send simulcast, so this peer offers it itself: the offer's video section
gets ``a=rid:l/m/h send``, ``a=simulcast:send l;m;h`` and the ``rtp-stream-id`` /
``repaired-rtp-stream-id`` extensions; then, on the connection aiortc set up (ICE,
DTLS, SRTP all real), it writes three VP8 streams of its own: three SSRCs, each encoded
by its own VP8 encoder at 80×60, 160×120 and 320×240, the first packets of each marked
with its rid and the MID (as libwebrtc does until the SSRC is acknowledged). PLIs for a
layer's SSRC make that layer's next frame a key frame. Every payload sent is kept per
layer, so a test can check that what subscribers receive is these bytes.

Loss and repair as Chromium does them: a test can have a layer hold back one packet
(``Layer.drop``); a NACK for it from the SFU is answered on the layer's own RTX SSRC,
whose packets carry the MID and the layer's rid as ``repaired-rtp-stream-id``.
"""

from __future__ import annotations

import asyncio
import fractions
import random
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
)

from sfu import aiortc_hooks as hooks
from tests.media import CLIENT_CONFIG, wait_for

RIDS = ("l", "m", "h")
SIZES = {"l": (80, 60), "m": (160, 120), "h": (320, 240)}
RID_EXT, RRID_EXT = 10, 11
MARKED_PACKETS = 20  # packets per layer that carry the rid and MID extensions


@dataclass(eq=False)  # hashable: aiortc's RTP router keeps senders in a set
class Layer:
    rid: str
    ssrc: int
    encoder: Vp8Encoder = field(default_factory=Vp8Encoder)
    seq: int = field(default_factory=lambda: random.randint(0, 0xFFFF))
    ts_base: int = field(default_factory=lambda: random.getrandbits(32))
    sent: int = 0
    keyframe_due: bool = True
    payloads: set[bytes] = field(default_factory=set)
    keyframes: int = 0
    active: bool = True
    # Repairs: the layer's RTX stream, packets held back (seq -> packet), NACKed seqs.
    rtx_ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    rtx_seq: int = field(default_factory=lambda: random.randint(0, 0xFFFF))
    drop: int = 0  # hold back the packet this many packets from now (0: none)
    held: dict[int, RtpPacket] = field(default_factory=dict)
    nacked: list[int] = field(default_factory=list)
    repaired: list[tuple[int, bytes]] = field(default_factory=list)  # (seq, payload)

    async def _handle_rtcp_packet(self, packet: object) -> None:
        """Called by aiortc's RTP router for RTCP about this SSRC (we registered it)."""
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            self.keyframe_due = True
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            self.nacked += packet.lost


def simulcast_offer(sdp: str) -> str:
    """Chromium's shape of a simulcast video section, added to aiortc's offer."""
    out: list[str] = []
    in_video = False
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            in_video = line.startswith("m=video")
        if in_video and line.startswith("a=ssrc"):
            continue  # Chromium names no SSRC for simulcast layers
        out.append(line)
        if in_video and line.startswith("a=mid:"):
            out += [
                f"a=extmap:{RID_EXT} urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
                f"a=extmap:{RRID_EXT} urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
                *(f"a=rid:{r} send" for r in RIDS),
                "a=simulcast:send " + ";".join(RIDS),
            ]
    return "\r\n".join(out)


class SimulcastPublisher:
    """Publishes one simulcast video (no audio) into ``router`` as ``pid``."""

    def __init__(self, pid: str, router: object, colour: tuple[int, int, int] = (30, 160, 60)):
        self.pid = pid
        self.router = router
        self.pc = RTCPeerConnection(CLIENT_CONFIG)
        self.colour = colour
        self.layers = {r: Layer(r, random.getrandbits(32)) for r in RIDS}
        self.answer = ""
        self._task: asyncio.Task[None] | None = None
        self._ext = HeaderExtensionsMap()
        self._pt = 0
        self.rtx_payload_type: int | None = None

    async def publish(self) -> None:
        self.pc.addTransceiver(hooks.SilentTrack("video"), direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = simulcast_offer(self.pc.localDescription.sdp)
        self.answer = await self.router.publish(self.pid, offer)  # type: ignore[attr-defined]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer, type="answer"))
        transceiver = self.pc.getTransceivers()[0]
        codec, mid_id = hooks.negotiated(transceiver)
        assert codec is not None and codec.mimeType.lower() == "video/vp8"
        self._pt = codec.payloadType
        self.rtx_payload_type = rtx_payload_type(self.answer, self._pt)
        self.mid = transceiver.mid
        self._ext.configure(
            RTCRtpParameters(
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(id=mid_id or 0, uri=hooks_mid_uri()),
                    RTCRtpHeaderExtensionParameters(
                        id=RID_EXT, uri="urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
                    ),
                    RTCRtpHeaderExtensionParameters(
                        id=RRID_EXT,
                        uri="urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
                    ),
                ]
            )
        )
        self._task = asyncio.ensure_future(self._run(transceiver))

    async def _run(self, transceiver: object) -> None:
        sender = transceiver.sender  # type: ignore[attr-defined]
        await wait_for(
            lambda: sender.transport is not None and sender.transport.state == "connected",
            timeout=20,
        )
        dtls = sender.transport
        for layer in self.layers.values():
            dtls._rtp_router.register_sender(layer, layer.ssrc)
        frame_no = 0
        start = asyncio.get_running_loop().time()
        while True:
            ts = frame_no * 3000  # 30 fps at 90 kHz
            for layer in self.layers.values():
                if layer.active:
                    await self._send_frame(dtls, layer, ts, frame_no)
                await self._repair(dtls, layer)
            frame_no += 1
            wait = start + frame_no / 30 - asyncio.get_running_loop().time()
            await asyncio.sleep(max(0.0, wait))

    async def _send_frame(self, dtls: object, layer: Layer, ts: int, frame_no: int) -> None:
        w, h = SIZES[layer.rid]
        img = np.zeros((h, w, 3), dtype=np.uint8)
        img[:, :] = self.colour
        img[: h // 4, : (frame_no % w) + 1] = (250, 250, 250)  # something that moves
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = ts
        frame.time_base = fractions.Fraction(1, 90000)
        force = layer.keyframe_due
        layer.keyframe_due = False
        payloads, _ = layer.encoder.encode(frame, force_keyframe=force)
        if force:
            layer.keyframes += 1
        for i, payload in enumerate(payloads):
            packet = RtpPacket(
                payload_type=self._pt,
                marker=1 if i == len(payloads) - 1 else 0,
                sequence_number=layer.seq,
                timestamp=(layer.ts_base + ts) & 0xFFFFFFFF,
                ssrc=layer.ssrc,
                payload=payload,
            )
            if layer.sent < MARKED_PACKETS:
                packet.extensions.mid = self.mid
                packet.extensions.rtp_stream_id = layer.rid
            layer.seq = (layer.seq + 1) & 0xFFFF
            layer.sent += 1
            layer.payloads.add(payload)
            if layer.drop:
                layer.drop -= 1
                if not layer.drop:
                    layer.held[packet.sequence_number] = packet  # "lost" on the way
                    continue
            try:
                await dtls._send_rtp(packet.serialize(self._ext))  # type: ignore[attr-defined]
            except ConnectionError:
                return

    async def _repair(self, dtls: object, layer: Layer) -> None:
        """Answer NACKs as libwebrtc does: the original packet inside an RTX packet (its
        sequence number first) on the layer's RTX SSRC, marked with the MID and the
        layer's rid as repaired-rtp-stream-id."""
        nacked, layer.nacked = layer.nacked, []
        for seq in nacked:
            original = layer.held.pop(seq, None)
            if original is None or self.rtx_payload_type is None:
                continue
            rtx = RtpPacket(
                payload_type=self.rtx_payload_type,
                marker=original.marker,
                sequence_number=layer.rtx_seq,
                timestamp=original.timestamp,
                ssrc=layer.rtx_ssrc,
                payload=seq.to_bytes(2, "big") + original.payload,
            )
            rtx.extensions.mid = self.mid
            rtx.extensions.repaired_rtp_stream_id = layer.rid
            layer.rtx_seq = (layer.rtx_seq + 1) & 0xFFFF
            layer.repaired.append((seq, original.payload))
            try:
                await dtls._send_rtp(rtx.serialize(self._ext))  # type: ignore[attr-defined]
            except ConnectionError:
                return

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.pc.close()


def rtx_payload_type(sdp: str, apt: int) -> int | None:
    """The RTX payload type an SDP pairs with payload type ``apt`` (``a=fmtp:N apt=``)."""
    for line in sdp.splitlines():
        if line.startswith("a=fmtp:") and f"apt={apt}" in line.split(" ", 1)[-1].split(";"):
            return int(line[7:].split(" ", 1)[0])
    return None


def hooks_mid_uri() -> str:
    return "urn:ietf:params:rtp-hdrext:sdes:mid"
