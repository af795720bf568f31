"""The synthetic publisher's send path: pre-packetised media, paced, sent from C.

aiortc's ``RTCRtpSender`` costs the generator tens of microseconds per packet (VP8
packetisation, header extensions, pylibsrtp, aioice's send coroutines), more than the
SFU spends forwarding it, so a capacity search would measure the generator. Here the
payloads are cut once at setup (:func:`bench.media.packetize_video`) and every packet
goes out through an ``sfu._fastpath.Leg``, the SFU's own C path: it writes the RTP
header and the header extensions (``sdes:mid`` and an ``abs-send-time`` stamped per
packet, which the SFU's bandwidth estimator reads like a browser's), protects with
aiortc's own SRTP session and writes to the ICE socket. aiortc keeps SDP, ICE, DTLS and
RTCP: the sender's track is a :class:`~sfu.aiortc_hooks.SilentTrack` (its encoder loop
never runs), its RTCP sender-report counters are fed what the leg sent, and PLI/FIR and
NACKs from the SFU reach :class:`PacedSender`.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from typing import Any

from aiortc import RTCRtpSender

from sfu import _fastpath
from sfu import aiortc_hooks as hooks
from sfu.stats import LATENCY_BUCKETS_NS

from .media import (
    AUDIO_CLOCK,
    AUDIO_PTIME,
    FPS,
    MAGIC,
    TRAILER,
    VIDEO_CLOCK,
    packetize_video,
    vp8_descriptor,
)

ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
ACCOUNT_EVERY_S = 0.5  # fold the leg's counters into aiortc's for its RTCP SRs
LATE_RESET_S = 0.1  # this far behind: carry on from now rather than send a burst
_SSRC_IN = 1  # the leg's "source"; one source, so its sequence/timestamps pass through


def extension_block(mid: str | None, mid_id: int | None, abs_id: int | None) -> tuple[bytes, int]:
    """An RFC 8285 one-byte-header block with ``sdes:mid`` and ``abs-send-time``, and
    the offset of the abs-send-time value in it (0: not negotiated)."""
    elements = b""
    abs_offset = 0
    if mid and mid_id:
        value = mid.encode()
        elements += bytes([(mid_id << 4) | (len(value) - 1)]) + value
    if abs_id:
        abs_offset = 4 + len(elements) + 1
        elements += bytes([(abs_id << 4) | 2]) + b"\x00\x00\x00"
    if not elements:
        return b"", 0
    elements += b"\x00" * (-len(elements) % 4)
    return b"\xbe\xde" + struct.pack("!H", len(elements) // 4) + elements, abs_offset


class PacedSender:
    """One published track: its frames at their real-time pace, sent through a C leg.

    Frames go out on absolute deadlines (30 fps video, 20 ms audio) so the rate does not
    drift with the event loop's lateness. The last packet of each frame carries the
    :data:`~bench.media.TRAILER` with the publisher index, the frame number and the send
    time, stamped as the frame is sent. A PLI/FIR restarts the video loop at its key
    frame, as a live encoder answers one; NACKs are answered from the leg's history.
    """

    def __init__(self, kind: str, frames: tuple[bytes, ...], publisher_index: int) -> None:
        self.kind = kind
        self._pub = publisher_index
        if kind == "video":
            # the trailer's room at the end of each frame's last payload is written per send
            self._packets = tuple(
                (*bodies[:-1], bodies[-1][: -TRAILER.size]) for bodies in packetize_video(frames)
            )
            self._step, self._period = VIDEO_CLOCK // FPS, 1.0 / FPS
        else:
            self._packets = tuple((f,) for f in frames)  # one Opus frame per packet
            self._step, self._period = int(AUDIO_CLOCK * AUDIO_PTIME), AUDIO_PTIME
        self._picture_id = random.randint(0, 0x7FFF)
        self._index = 0
        self._frame = 0  # frame number in the trailer
        self._rtp_seq = 0
        self._leg = _fastpath.Leg(
            _fastpath.Meter(LATENCY_BUCKETS_NS), random.randint(0, 0x7FFF), random.getrandbits(32)
        )
        self._sender: RTCRtpSender | None = None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0  # frames sent (whole)
        self.dropped = 0  # packets the socket did not take
        self.keyframes_requested = 0

    def attach(self, sender: RTCRtpSender) -> None:
        """Answer the sender's key-frame requests and NACKs (before RTCP can arrive)."""
        self._sender = sender
        hooks.take_over_sender(sender, self.request_keyframe, self._retransmit)

    def start(self, transceiver: Any) -> None:
        """Configure from what was negotiated and start sending (once connected)."""
        sender = transceiver.sender
        codec, mid_id = hooks.negotiated(transceiver)
        if codec is None:
            raise RuntimeError(f"no {self.kind} codec negotiated")
        abs_id = next((e.id for e in transceiver._headerExtensions if e.uri == ABS_SEND_TIME), None)
        ext, abs_offset = extension_block(transceiver.mid, mid_id, abs_id)
        self._leg.configure(codec.payloadType, sender._ssrc, codec.clockRate, ext, abs_offset)
        self._task = asyncio.ensure_future(self._run())

    def request_keyframe(self) -> None:
        self.keyframes_requested += 1
        if self.kind == "video":
            self._index = 0

    async def _retransmit(self, seq: int) -> None:
        data = self._leg.history(seq)
        if data is not None and self._sender is not None:
            try:
                await hooks.send_rtp(self._sender, data)
            except ConnectionError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = self._period
        start = loop.time()
        n = 0
        next_account = start + ACCOUNT_EVERY_S
        routed = False
        try:
            while True:
                wait = start + n * period - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -LATE_RESET_S:
                    # Fell behind (a loaded generator): carry on from now instead of
                    # sending a burst to catch up, as a live camera would.
                    start -= wait
                if not routed:
                    routed = self._route()
                    self._index = 0  # (re)start where a decoder can: the key frame
                if routed:
                    routed = self._send_frame(n * self._step)
                n += 1
                now = loop.time()
                if now >= next_account:
                    next_account = now + ACCOUNT_EVERY_S
                    self._account()
        finally:
            self._account()

    def _route(self) -> bool:
        assert self._sender is not None
        dtls = self._sender.transport
        route = hooks.fast_route(dtls) if dtls is not None else None
        if route is None:
            return False
        self._leg.set_route(*route)
        return True

    def _send_frame(self, ts: int) -> bool:
        """Send one frame; ``False`` if the connection has no usable route (any more)."""
        packets = self._packets[self._index]
        self._index = (self._index + 1) % len(self._packets)
        self._frame += 1
        leg, last = self._leg, len(packets) - 1
        video = self.kind == "video"
        if video:
            pid = self._picture_id
            self._picture_id = (pid + 1) & 0x7FFF
            first, rest = vp8_descriptor(pid, True), vp8_descriptor(pid, False)
        t_in = time.perf_counter_ns()
        for i, body in enumerate(packets):
            if i == last:
                body += TRAILER.pack(MAGIC, self._pub, self._frame, time.monotonic_ns())
            if video:
                body = (rest if i else first) + body
            self._rtp_seq = seq = (self._rtp_seq + 1) & 0xFFFF
            result = leg.send(body, i == last, seq, ts, _SSRC_IN, t_in)
            if result is False:
                self._rtp_seq = (seq - 1) & 0xFFFF  # nothing went out
                return False  # look the route up again at the next frame
            if result is not None:
                self.dropped += 1  # the socket is full: a real sender's loss, not queued
        self.sent += 1
        return True

    def _account(self) -> None:
        if self._sender is not None:
            hooks.account_sent(self._sender, self._leg.take_counters())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._leg.clear_route()
