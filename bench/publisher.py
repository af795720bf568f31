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
import heapq
import itertools
import logging
import random
import struct
import time
import weakref
from typing import Any, ClassVar

from aiortc import RTCRtpSender
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
)

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
# The shared pacer wakes at most this often. libwebrtc's pacer uses 5 ms, but with
# dozens of tracks per process every frame due within those 5 ms left in one burst,
# which queued at the SFU's socket and inflated end-to-end p99 from 30 rooms on; at
# 1 ms the sends spread over the tick (the task costs ~1000 wake-ups/s, a few % of a core).
TICK_S = 0.001
PHI = 0.6180339887498949  # golden-ratio spacing: any number of tracks spreads evenly
LATE_RESET_S = 0.1  # this far behind: carry on from now rather than send a burst
_SSRC_IN = 1  # the leg's "source"; one source, so its sequence/timestamps pass through
log = logging.getLogger(__name__)


def extension_block(
    mid: str | None,
    mid_id: int | None,
    abs_id: int | None,
    rid: str | None = None,
    rid_id: int | None = None,
) -> tuple[bytes, int]:
    """An RFC 8285 one-byte-header block with ``sdes:mid``, ``rtp-stream-id`` (a
    simulcast layer's rid) and ``abs-send-time``, and the offset of the abs-send-time
    value in it (0: not negotiated)."""
    elements = b""
    abs_offset = 0
    for value, ext_id in ((mid, mid_id), (rid, rid_id)):
        if value and ext_id:
            data = value.encode()
            elements += bytes([(ext_id << 4) | (len(data) - 1)]) + data
    if abs_id:
        abs_offset = 4 + len(elements) + 1
        elements += bytes([(abs_id << 4) | 2]) + b"\x00\x00\x00"
    if not elements:
        return b"", 0
    elements += b"\x00" * (-len(elements) % 4)
    return b"\xbe\xde" + struct.pack("!H", len(elements) // 4) + elements, abs_offset


class Pacer:
    """Sends every due frame of every :class:`PacedSender` of one event loop, from one task.

    A task per track waking at its own frame rate costs the generator a task switch and
    a timer per frame (~8 µs); at 50 rooms that was a tenth of a core spent waking up.
    Like libwebrtc's pacer, one task wakes at the next deadline, but never sooner than
    :data:`TICK_S` after its last wake-up, and sends, in deadline order, every frame whose
    deadline has come. A frame leaves at most about one tick late (its trailer is stamped
    as it is sent, so the measured end-to-end latency does not include that) and the next
    deadline stays where it was.
    The task runs while at least one track is started; the last one to stop ends it.
    """

    _shared: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, tick: float = TICK_S) -> None:
        self._tick = tick
        self._loop = asyncio.get_running_loop()
        self._heap: list[tuple[float, int, PacedSender]] = []  # (deadline, order, track)
        self._order = itertools.count()  # ties keep the order tracks were added in
        self._phases = itertools.count()
        self._tracks: set[PacedSender] = set()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def shared(cls) -> Pacer:
        """The running event loop's pacer (one per generator process)."""
        loop = asyncio.get_running_loop()
        pacer = cls._shared.get(loop)
        if pacer is None:
            pacer = cls._shared[loop] = cls()
        return pacer

    def time(self) -> float:
        return self._loop.time()

    def phase(self, period: float) -> float:
        """Where in its period the next track to start should send: successive tracks
        get phases spread evenly over the period (golden-ratio steps), so tracks that
        start together do not send their frames together."""
        return (next(self._phases) * PHI % 1.0) * period

    def add(self, track: PacedSender, deadline: float) -> None:
        """Send ``track``'s frames from ``deadline`` on (its ``_due`` returns the next)."""
        self._tracks.add(track)
        heapq.heappush(self._heap, (deadline, next(self._order), track))
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def remove(self, track: PacedSender) -> None:
        """Stop sending ``track``'s frames; the last track out stops the task."""
        self._tracks.discard(track)
        if not self._tracks and self._task is not None:
            task, self._task = self._task, None
            self._heap.clear()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        heap, tracks, tick, time = self._heap, self._tracks, self._tick, self._loop.time
        while True:
            now = time()
            while heap and heap[0][0] <= now:
                _, order, track = heap[0]
                if track not in tracks:  # stopped since it was queued
                    heapq.heappop(heap)
                    continue
                try:
                    heapq.heapreplace(heap, (track._due(now), order, track))
                except Exception:
                    # one track's failure must not stop every other track's media
                    log.exception("paced track failed; it sends no more")
                    heapq.heappop(heap)
                    tracks.discard(track)
            wake = max(heap[0][0], now + tick) if heap else now + tick
            await asyncio.sleep(wake - time())


class PacedSender:
    """One published track: its frames at their real-time pace, sent through a C leg.

    Frames go out on absolute deadlines (30 fps video, 20 ms audio), sent by the
    process's shared :class:`Pacer`, so the rate does not drift with the event loop's
    lateness. The last packet of each frame carries the
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
        self._pacer: Pacer | None = None
        # pacing, set by start(): frame n is due at start + n × period
        self._start = self._next_account = 0.0
        self._n = 0
        self._routed = False
        self.sent = 0  # frames sent (whole)
        self.dropped = 0  # packets the socket did not take
        self.keyframes_requested = 0

    def attach(self, sender: RTCRtpSender) -> None:
        """Answer the sender's key-frame requests and NACKs (before RTCP can arrive)."""
        self._sender = sender
        hooks.take_over_sender(sender, self.request_keyframe, self._retransmit)

    def start(self, transceiver: Any, pacer: Pacer | None = None) -> None:
        """Configure from what was negotiated and start sending (once connected), paced
        by ``pacer`` (default: the event loop's shared one, :meth:`Pacer.shared`)."""
        sender = transceiver.sender
        codec, mid_id = hooks.negotiated(transceiver)
        if codec is None:
            raise RuntimeError(f"no {self.kind} codec negotiated")
        abs_id = next((e.id for e in transceiver._headerExtensions if e.uri == ABS_SEND_TIME), None)
        ext, abs_offset = extension_block(transceiver.mid, mid_id, abs_id)
        self._leg.configure(codec.payloadType, sender._ssrc, codec.clockRate, ext, abs_offset)
        self._pacer = pacer or Pacer.shared()
        now = self._pacer.time()
        start = now + self._pacer.phase(self._period)
        self._start, self._n, self._routed = start, 0, False
        self._next_account = start + ACCOUNT_EVERY_S
        self._pacer.add(self, start)

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

    def _due(self, now: float) -> float:
        """Send the frame whose deadline has come; returns the next frame's deadline.

        Deadlines are absolute (``start + n × period``), so the pacer's lateness and
        tick do not make the rate drift.
        """
        late = now - (self._start + self._n * self._period)
        if late > LATE_RESET_S:
            # Fell behind (a loaded generator): carry on from now instead of sending a
            # burst to catch up, as a live camera would.
            self._start += late
        if not self._routed:
            self._routed = self._route()
            self._index = 0  # (re)start where a decoder can: the key frame
        if self._routed:
            self._routed = self._send_frame(self._n * self._step)
        self._n += 1
        if now >= self._next_account:
            self._next_account = now + ACCOUNT_EVERY_S
            self._account()
        return self._start + self._n * self._period

    def _route(self) -> bool:
        """Point the C leg(s) at the sender's connection; ``False`` while it has no
        usable route (not connected yet, or gone)."""
        assert self._sender is not None
        dtls = self._sender.transport
        route = hooks.fast_route(dtls) if dtls is not None else None
        if route is None:
            return False
        self._set_route(dtls, route)
        return True

    def _set_route(self, dtls: Any, route: tuple[Any, ...]) -> None:
        self._leg.set_route(*route)

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
        pacer, self._pacer = self._pacer, None
        if pacer is not None:
            await pacer.remove(self)
            self._account()
        self._leg.clear_route()


class _LayerRtcp:
    """What aiortc's RTP router hands RTCP about one simulcast layer's SSRC to (it routes
    by SSRC to registered senders): PLI/FIR restart that layer at its key frame, NACKs
    are answered from that layer's leg history, the rest (receiver reports) is ignored."""

    def __init__(self, owner: SimulcastSender, layer: int) -> None:
        self._owner, self._layer = owner, layer

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            self._owner.request_layer_keyframe(self._layer)
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            for seq in packet.lost:
                await self._owner.retransmit_layer(self._layer, seq)


class SimulcastSender(PacedSender):
    """One published camera as simulcast layers, the way a browser sends them.

    Each layer (``EncodedMedia.layers``, low → high, rids from
    :data:`~bench.media.SIMULCAST_LAYERS`) has its own SSRC, sequence numbers, VP8
    picture ids and C leg; every packet carries ``sdes:mid`` and ``rtp-stream-id``
    (a browser stops after the SSRC is acknowledged; sending them throughout costs 4
    bytes). All layers of one frame leave on the same deadline with the same RTP
    timestamp and trailer frame number, as one camera frame encoded three times, so a
    subscriber's frame numbers and timestamps continue across the SFU's layer switches.
    A PLI/FIR for a layer's SSRC restarts that layer's loop at its key frame;
    :meth:`set_active` follows the server's ``publish.layers`` (a layer turned back on
    starts with a key frame, as a browser's encoder does).
    """

    def __init__(
        self, layers: tuple[tuple[bytes, ...], ...], rids: tuple[str, ...], publisher_index: int
    ) -> None:
        super().__init__("video", layers[-1], publisher_index)
        self.rids = rids
        self._layer_packets = [
            tuple((*b[:-1], b[-1][: -TRAILER.size]) for b in packetize_video(frames))
            for frames in layers
        ]
        n = len(layers)
        self._layer_index = [0] * n
        self._layer_pid = [random.randint(0, 0x7FFF) for _ in range(n)]
        self._layer_seq = [random.randint(0, 0xFFFF) for _ in range(n)]
        self.ssrcs = [random.getrandbits(32) for _ in range(n)]
        self._legs = [
            _fastpath.Leg(
                _fastpath.Meter(LATENCY_BUCKETS_NS),
                random.randint(0, 0x7FFF),
                random.getrandbits(32),
            )
            for _ in range(n)
        ]
        self.active = [True] * n
        self.layer_frames = [0] * n  # frames sent per layer
        self.layer_keyframes = [0] * n  # key-frame requests per layer
        self.nacked = 0  # packets the SFU asked for again

    def start_layers(self, transceiver: Any, rid_id: int, pacer: Pacer | None = None) -> None:
        """Configure every layer's leg from what was negotiated, register the layers'
        SSRCs for RTCP and start sending."""
        codec, mid_id = hooks.negotiated(transceiver)
        if codec is None:
            raise RuntimeError("no video codec negotiated")
        abs_id = next((e.id for e in transceiver._headerExtensions if e.uri == ABS_SEND_TIME), None)
        for i, leg in enumerate(self._legs):
            ext, abs_offset = extension_block(transceiver.mid, mid_id, abs_id, self.rids[i], rid_id)
            leg.configure(codec.payloadType, self.ssrcs[i], codec.clockRate, ext, abs_offset)
        super().start(transceiver, pacer)

    def set_active(self, rids: set[str]) -> None:
        """Send the layers named (the lowest always, as the page does)."""
        for i, rid in enumerate(self.rids):
            on = i == 0 or rid in rids
            if on and not self.active[i]:
                self._layer_index[i] = 0  # back on: starts with a key frame
            self.active[i] = on

    def request_keyframe(self) -> None:
        self.keyframes_requested += 1
        for i in range(len(self._legs)):
            self._layer_index[i] = 0

    def request_layer_keyframe(self, layer: int) -> None:
        self.layer_keyframes[layer] += 1
        self._layer_index[layer] = 0

    async def retransmit_layer(self, layer: int, seq: int) -> None:
        self.nacked += 1
        data = self._legs[layer].history(seq)
        if data is not None and self._sender is not None:
            try:
                await hooks.send_rtp(self._sender, data)
            except ConnectionError:
                pass

    def _set_route(self, dtls: Any, route: tuple[Any, ...]) -> None:
        router = dtls._rtp_router
        for i, (leg, ssrc) in enumerate(zip(self._legs, self.ssrcs, strict=True)):
            leg.set_route(*route)
            self._layer_index[i] = 0  # (re)start where a decoder can: the key frame
            if ssrc not in router.senders:
                router.register_sender(_LayerRtcp(self, i), ssrc)

    def _send_frame(self, ts: int) -> bool:
        self._frame += 1
        t_in = time.perf_counter_ns()
        for i, leg in enumerate(self._legs):
            if not self.active[i]:
                continue
            packets = self._layer_packets[i][self._layer_index[i]]
            self._layer_index[i] = (self._layer_index[i] + 1) % len(self._layer_packets[i])
            pid = self._layer_pid[i]
            self._layer_pid[i] = (pid + 1) & 0x7FFF
            first, rest = vp8_descriptor(pid, True), vp8_descriptor(pid, False)
            last = len(packets) - 1
            for k, body in enumerate(packets):
                if k == last:
                    body += TRAILER.pack(MAGIC, self._pub, self._frame, time.monotonic_ns())
                body = (rest if k else first) + body
                self._layer_seq[i] = seq = (self._layer_seq[i] + 1) & 0xFFFF
                result = leg.send(body, k == last, seq, ts, _SSRC_IN, t_in)
                if result is False:
                    self._layer_seq[i] = (seq - 1) & 0xFFFF
                    return False
                if result is not None:
                    self.dropped += 1
            self.layer_frames[i] += 1
        self.sent += 1
        return True

    def _account(self) -> None:
        # The layers' SSRCs are not aiortc's sender's (it sends SRs for its own SSRC
        # only): fold only the transport's byte and packet counts.
        if self._sender is None:
            return
        for leg in self._legs:
            counters = leg.take_counters()
            hooks.account_sent(self._sender, (0, 0, 0, 0, *counters[4:6]))

    async def stop(self) -> None:
        await super().stop()
        for leg in self._legs:
            leg.clear_route()
