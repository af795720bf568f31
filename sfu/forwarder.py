"""The hot path: one published track fanned out to per-subscriber legs, packet by packet.

A :class:`Forwarder` receives each decrypted RTP packet of one published track and hands
it to every attached :class:`Leg`. A leg is that track on one subscriber's connection:
it owns the subscriber-side SSRC, payload type, sequence numbers and timestamps, a
bounded queue, and the task that drains it, so one stalled subscriber only ever fills
its own queue.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    RtpPacket,
    unpack_remb_fci,
    unwrap_rtx,
)

from . import _fastpath
from . import aiortc_hooks as hooks
from .codecs import forwardable, keyframe_detector, vp8_keyframe_size
from .downlink import DownlinkEstimate
from .stats import RoomStats

log = logging.getLogger(__name__)

# Larger payloads than any browser sends (they keep packets under ~1200 bytes) would not
# fit a subscriber's packet with its header, extension and SRTP tag in pylibsrtp's
# 1500-byte buffer; they are dropped on the way in rather than failing per leg.
MAX_PAYLOAD = 1300
SYNC_INTERVAL = 0.5  # s between folding the C path's counters into aiortc's (Subscriber)
RATE_INTERVAL = 0.5  # s: how often a forwarder's rates are measured
PACKET_OVERHEAD = 60  # bytes around a payload on the wire: RTP header, extensions, SRTP, UDP/IP
PADDING_SIZE = 255  # the most one RTP packet's padding-length byte can say
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
UNCAPPED = 1 << 30  # Leg.set_cap: no limit from the allocator
# A layer with no packet for this long is not being sent (the publisher stopped it, or
# its bandwidth no longer reaches it): legs on it move to one that is. Frames come every
# 40-200 ms even from a starved encoder. Legs look for another layer after FRESH_NS
# (switching at its key frame, the old one still forwarded should it come back), and
# give the old one up without waiting for a key frame after FLOWING_NS.
FRESH_NS = 300_000_000
FLOWING_NS = 600_000_000
# A tile this much larger than a layer's frames still takes that layer (slight upscaling
# is not visible; the next layer would cost about three times the bits).
TILE_SLACK = 0.8


class Forwarder:
    """One published track (a publisher's receiver) and the legs it feeds."""

    def __init__(
        self,
        track_id: str,
        publisher_id: str,
        kind: str,
        receiver: RTCRtpReceiver,
        stats: RoomStats,
        keyframe_interval: float,
        rid: str | None = None,
    ) -> None:
        self.track_id = track_id
        self.rid = rid  # the simulcast layer this is (sfu.simulcast.Layers), else None
        self.layers: list[Forwarder] = [self]  # what a leg may follow: just this stream
        self.publisher_id = publisher_id
        self.kind = kind
        self.codec: RTCRtpCodecParameters | None = None
        self.legs: list[Leg] = []
        self._fast_legs: list[_fastpath.Leg] = []  # the legs' C halves, in the same order
        self._paused = False
        self.ssrc: int | None = None
        self._receiver = receiver
        self._stats = stats
        self._is_key: Callable[[bytes], bool] | None = None
        self._keyframe_interval = keyframe_interval
        self._last_pli = -1e9
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_oversized = False
        # What arrives through tap(); packets_in/wire_bytes_in add what the C Inbound took.
        self._py_packets_in = 0
        self._py_payload_in = 0
        self._rate_at = time.monotonic()
        self._rate_counts = (0, 0)
        self._bps = 0.0
        self._pps = 0.0
        self._peak_bps = 0.0
        # The same work as tap() for packets that need no decision, done in C by the
        # transport's Inbound once this track's SSRC is known (hooks.take_inbound).
        self._inbound = _fastpath.Track(stats.meter, self._fast_legs, self._slow, MAX_PAYLOAD)
        self._inbound_ssrc: int | None = None
        # This stream's RTX SSRC in the Inbound: its padding stays in C (Track.rtx).
        self._rtx_inbound = _fastpath.Track(stats.meter, [], self._slow, MAX_PAYLOAD)
        self._rtx_inbound.rtx = True
        self._rtx_ssrc: int | None = None
        self._rtx_for: int | None = None  # the media SSRC its registration judges by
        self._size_of: Callable[[bytes], tuple[int, int] | None] | None = None
        # Legs waiting to move here at this stream's next key frame (Leg.update_layer).
        self.switching: list[Leg] = []
        self.on_restart: Callable[[], None] | None = None  # set by sfu.simulcast.Layers
        # For layer choice (simulcast layers only: sfu.simulcast.Layers): the frame size
        # of the last VP8 key frame (0: not known); when the last packet came is last_ns.
        self.width = 0
        self.height = 0

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def last_ns(self) -> int:
        """When the last packet arrived (perf_counter_ns; 0: never), by either path."""
        return self._inbound.last_ns

    @last_ns.setter
    def last_ns(self, value: int) -> None:
        self._inbound.last_ns = value

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused = value
        self._inbound.paused = value
        self._rtx_inbound.paused = value

    # What arrives, with ~60 bytes of RTP/SRTP/UDP/IP per packet, as the allocator
    # prices a track (sfu.allocator reads and differences these).
    @property
    def packets_in(self) -> int:
        return self._py_packets_in + self._inbound.received[0]

    @property
    def wire_bytes_in(self) -> int:
        packets, payload = self._inbound.received
        return self._py_payload_in + payload + (self._py_packets_in + packets) * PACKET_OVERHEAD

    @property
    def ready(self) -> bool:
        return self.codec is not None

    def set_codecs(self, codecs: list[RTCRtpCodecParameters]) -> None:
        """Called once the receiver knows the negotiated codecs; the first is what flows."""
        primary = next((c for c in codecs if forwardable(c)), None)
        self.codec = primary
        self._is_key = keyframe_detector(primary.mimeType) if primary else None
        self._inbound.payload_type = primary.payloadType if primary else None
        vp8 = primary is not None and primary.mimeType.lower() == "video/vp8"
        self._size_of = vp8_keyframe_size if vp8 else None
        # A simulcast layer's key frames decide switches: the C path hands them here.
        self._inbound.keys = vp8 and self.rid is not None

    def tap(self, packet: RtpPacket, codecs: dict[int, RTCRtpCodecParameters]) -> None:
        """Per incoming packet: classify once, then queue it on every leg."""
        codec = codecs.get(packet.payload_type)
        if codec is None or self.codec is None or self.paused:
            return
        if codec.payloadType != self.codec.payloadType:
            if codec.name.lower() != "rtx" or self.ssrc is None:
                return  # FEC, RED, or a codec the legs were not negotiated for
            registered = (self._rtx_ssrc, self._rtx_for)
            if registered != (packet.ssrc, self.ssrc) and self._receiver is not None:
                # Its padding (probes, "payload padding" below) is dropped in C from
                # the next packet on; repairs still come here. Registered again when
                # either SSRC changes: C tells repairs from padding by the NACK state of
                # the media SSRC it was registered with.
                if self._rtx_ssrc is not None:
                    hooks.drop_inbound(self._receiver, self._rtx_ssrc, self._rtx_inbound)
                self._rtx_ssrc, self._rtx_for = packet.ssrc, self.ssrc
                self._rtx_inbound.payload_type = codec.payloadType
                hooks.take_inbound(self._receiver, packet.ssrc, self._rtx_inbound, self.ssrc)
            if len(packet.payload) < 2:
                return
            # A retransmission: forwarded only if it repairs a loss the SFU saw (and
            # NACKed). libwebrtc also resends recent packets as RTX to probe the
            # bandwidth ("payload padding"); every subscriber already has those, and
            # sending them again would cost each one's downlink for nothing.
            if not hooks.repairs_loss(self._receiver, self.ssrc, packet.payload):
                return
            arrived = hooks.arrival_ns(packet)
            packet = unwrap_rtx(packet, payload_type=self.codec.payloadType, ssrc=self.ssrc)
            packet.arrival_ns = arrived  # type: ignore[attr-defined]
        payload = packet.payload
        if not payload:
            return  # padding-only bandwidth probe
        if len(payload) > MAX_PAYLOAD:
            if not self._warned_oversized:
                self._warned_oversized = True
                log.warning(
                    "track %s: dropping RTP payloads over %d bytes", self.track_id, MAX_PAYLOAD
                )
            return
        self.ssrc = packet.ssrc
        if (
            self._inbound_ssrc != packet.ssrc
            and self._receiver is not None
            and (self.rid is None or self._inbound.keys)
        ):
            # From the next packet of this SSRC on, the transport's Inbound may take
            # what needs no decision here (sfu/fastpath/inbound.c). A simulcast layer's
            # key frames still come here (Track.keys): they decide which layer legs
            # follow. H.264 layers stay on this path (no key-frame test in C).
            if self._inbound_ssrc is not None:
                # The old SSRC is gone (a restarted encoder, a layer's new SSRC): no
                # registration left behind to keep this track alive or fan out its
                # packets without a decision here.
                hooks.drop_inbound(self._receiver, self._inbound_ssrc, self._inbound)
            self._inbound_ssrc = packet.ssrc
            hooks.take_inbound(self._receiver, packet.ssrc, self._inbound)
        key = self._is_key(payload) if self._is_key is not None else False
        # Forwarding latency counts from the datagram's arrival (before SRTP unprotect)
        # to the sendto for each subscriber.
        now = hooks.arrival_ns(packet)
        self._stats.meter.received(len(payload))
        self._py_packets_in += 1
        self._py_payload_in += len(payload)
        restarted = now - self.last_ns > FRESH_NS
        self.last_ns = now
        if key:
            self._at_keyframe(payload, restarted)
        # Every leg that can send at once gets the packet from C; the rest (waiting for
        # a key frame, queued, not connected) come back for Leg.push.
        slow = _fastpath.fanout(
            self._fast_legs,
            payload,
            packet.marker,
            packet.sequence_number,
            packet.timestamp,
            packet.ssrc,
            now,
        )
        if slow is not None:
            legs = self.legs
            for i, tried in slow:
                legs[i].push(packet, key, now, tried)

    def _measure(self) -> None:
        # At most every RATE_INTERVAL, averaged over ~2 s both ways (a stream that
        # starts takes its first figure at once): the allocator prices a layer by what
        # it sends on average. Rising at once to every burst priced a 45 kbit/s low
        # layer at 150-190 kbit/s for seconds after a subscriber's loss brought key
        # frames, and at 300 kbit/s one of two videos stayed paused.
        now = time.monotonic()
        dt = now - self._rate_at
        if dt < RATE_INTERVAL:
            return
        packets, octets = self.packets_in, self.wire_bytes_in
        bps = (octets - self._rate_counts[1]) * 8 / dt
        pps = (packets - self._rate_counts[0]) / dt
        self._rate_at, self._rate_counts = now, (packets, octets)
        self._bps = bps if self._bps == 0 else 0.75 * self._bps + 0.25 * bps
        self._pps = pps
        self._peak_bps = max(self._peak_bps * 0.995, self._bps)

    def price_bps(self) -> float:
        """What forwarding this stream costs (bits/s with headers), for the allocator:
        its recent rate while it flows, else (a simulcast layer the publisher stopped
        because nobody took it) the peak it had."""
        self._measure()
        if self.flowing(time.perf_counter_ns()):
            return self._bps
        return max(self._bps, self._peak_bps)

    def wire_bps(self) -> float:
        """Bits/s arriving lately, headers included (0 before the first measurement)."""
        self._measure()
        return self._bps

    def packet_rate(self) -> float:
        self._measure()
        return self._pps

    def _slow(self, packet: Any, slow: list[tuple[int, Any]]) -> None:
        """Legs the C fan-out of an Inbound could not send to, as in :meth:`tap`."""
        key = self._is_key(packet.payload) if self._is_key is not None else False
        now = packet.arrival_ns
        legs = self.legs
        for i, tried in slow:
            legs[i].push(packet, key, now, tried)

    def _at_keyframe(self, payload: bytes, restarted: bool) -> None:
        if self._size_of is not None:
            size = self._size_of(payload)
            if size is not None:
                self.width, self.height = size
        if restarted and self.on_restart is not None:
            # A layer (re)starts with this key frame (the publisher turned it on, e.g. a
            # shared screen goes out as the top layer only): legs that want it move now
            # rather than a PLI round trip later.
            self.on_restart()
        # Legs switching to this layer move now, so this key frame is their first packet
        # from it (they took the old layer's packets until here: no freeze).
        for leg in self.switching[:]:
            leg.arrive(self)

    def flowing(self, now_ns: int, within_ns: int = FLOWING_NS) -> bool:
        return self.last_ns != 0 and now_ns - self.last_ns < within_ns

    def add_leg(self, leg: Leg) -> None:
        self.legs.append(leg)
        self._fast_legs.append(leg._fast)

    def remove_leg(self, leg: Leg) -> None:
        try:
            i = self.legs.index(leg)
        except ValueError:
            return
        del self.legs[i]
        del self._fast_legs[i]

    def request_keyframe(self) -> None:
        """Relay a key-frame request (PLI) to the publisher, at most once per interval."""
        if self.kind != "video" or self.ssrc is None or self._receiver is None:
            return  # (no receiver: closed, its publisher gone)
        now = time.monotonic()
        if now - self._last_pli < self._keyframe_interval:
            return
        self._last_pli = now
        self._stats.keyframe_requests += 1
        task = asyncio.ensure_future(hooks.request_keyframe(self._receiver, self.ssrc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._inbound_ssrc is not None and self._receiver is not None:
            hooks.drop_inbound(self._receiver, self._inbound_ssrc, self._inbound)
            self._inbound_ssrc = None
        if self._rtx_ssrc is not None and self._receiver is not None:
            hooks.drop_inbound(self._receiver, self._rtx_ssrc, self._rtx_inbound)
            self._rtx_ssrc = None
        # Its publisher's connection is closing (and later unlinked): a leg that follows
        # this forwarder again (an answer that was on its way) asks nothing of it.
        self._receiver = None
        for leg in list(self.legs) + self.switching:
            leg.detach()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Leg:
    """One forwarded track on one subscriber connection.

    Sequence numbers and timestamps are rewritten so the subscriber sees one continuous
    stream whatever happens upstream:

    * within one source, ``out = in + offset``, so upstream loss stays visible as a gap
      the subscriber can NACK, and reordering is preserved;
    * after packets were dropped here (queue overflow, waiting for a key frame), the
      sequence offset is rebased so the subscriber sees no gap we made ourselves;
    * when the source changes (publisher restarted, track replaced, leg reused for
      another publisher), the timestamp offset is rebased too, continuing from the
      last timestamp sent plus the wall-clock time since.

    Video waits for the first packet of a key frame before anything passes, and asks
    the publisher for one (rate-limited in :meth:`Forwarder.request_keyframe`).

    The per-packet work — rewrite, NACK history, SRTP protect, ``sendto`` and the
    room's counters — is done by a C :class:`sfu._fastpath.Leg` while the subscriber's
    connection is up and its socket takes data. Before that (no route yet) and while
    packets are queued behind a full socket, this class does the same steps through
    aiortc (:func:`hooks.send_rtp_now`, :func:`hooks.send_rtp`).

    **Layers** (simulcast, :class:`sfu.simulcast.Layers`): a leg follows one layer of its
    :attr:`track` at a time. Which one is decided by two inputs, for the two people who
    have a say:

    * :meth:`set_view` — what the subscriber's page shows (the ``view`` event): a hidden
      tile wants nothing, a visible one the smallest layer whose frames cover the tile;
    * :meth:`set_cap` — the bandwidth allocator's limit: a layer index, ``None`` to
      pause the video, :data:`UNCAPPED` (the default) for no limit.

    The effective layer is ``min(view, cap)`` (``None`` if either is), moved to the
    nearest layer the publisher is actually sending. ``None`` parks the leg: no video
    packet goes to the subscriber until it wants a layer again. A change of layer waits
    for a key frame *of the target layer* (a PLI goes to that layer's SSRC) while the
    old layer keeps flowing, then moves (but a move down for the link's sake stops the
    old layer at once: :meth:`set_cap`); the C half rebases sequence numbers and
    timestamps on the new SSRC, so the subscriber sees one continuous stream.
    """

    def __init__(
        self,
        kind: str,
        transceiver: Any,
        stats: RoomStats,
        queue_limit: int,
        feedback: DownlinkEstimate | None = None,
    ) -> None:
        self.kind = kind
        self.transceiver = transceiver
        self.sender: RTCRtpSender = transceiver.sender
        self.source: Forwarder | None = None
        self.track_id: str | None = None
        self._stats = stats
        # Packets waiting for the socket: (packet, t_in, the rewritten packet if done).
        self._queue: deque[tuple[RtpPacket, int, bytes | None]] = deque()
        self._sending = False
        self._limit = queue_limit
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._waiting_key = kind == "video"
        self._configured = False
        self._ssrc = self.sender._ssrc
        self._fast = _fastpath.Leg(stats.meter, random.randint(0, 0x7FFF), random.getrandbits(32))
        self._route: tuple[Any, ...] | None = None  # what the C half was last pointed at
        # Layer choice (see the class docstring).
        self.track: Any = None  # the Forwarder or sfu.simulcast.Layers subscribed to
        self.cap: int | None = UNCAPPED
        self._view: tuple[bool, int, int] = (True, 0, 0)  # visible, width, height (px)
        self._switch_to: Forwarder | None = None
        self.switches = 0
        self._held = False  # the connection lost ICE consent: nothing may be sent (hold)
        # (last output seq before a cut moved it down, monotonic s): a repair of a packet
        # up to that one is not sent (retransmit).
        self._left: tuple[int, float] | None = None
        # What this leg sent (both send paths), folded in by sync(): for tests and metrics.
        self.packets = 0
        self.octets = 0
        self._feedback = feedback
        self._ext_ids: tuple[int | None, int | None] = (None, None)  # mid, abs-send-time
        self._mid: str | None = None
        self._rtx: tuple[int, int] | None = None  # (payload type, ssrc) for padding
        self._rtx_seq = random.randint(0, 0xFFFF)
        self._rtx_ts = random.getrandbits(32)
        hooks.take_over_sender(
            self.sender, self.on_keyframe_request, self.retransmit, self._on_rtcp
        )
        # The leg only sends: the estimator aiortc gave its receiver would never run.
        hooks.drop_receive_estimator(transceiver.receiver)

    # -- wiring ----------------------------------------------------------------------

    def configure(
        self,
        payload_type: int,
        clock_rate: int,
        mid: str | None,
        mid_ext_id: int | None,
        abs_ext_id: int | None = None,
        rtx_payload_type: int | None = None,
        vp8: bool = False,
    ) -> None:
        """Set what the subscriber negotiated for this leg (after its answer).

        With ``abs_ext_id`` every packet carries abs-send-time, stamped by the C send
        path at the moment it is sent: Chromium's receive-side estimator, whose result
        comes back as REMB (:mod:`sfu.downlink`), needs the send time of each packet.
        With ``vp8`` the payload descriptors' picture ids are kept continuous when the
        leg changes source (a simulcast layer switch; ``sfu/fastpath/vp8.c``).
        """
        self._mid = mid if mid and mid_ext_id else None
        self._ext_ids = (mid_ext_id if self._mid else None, abs_ext_id)
        ext, abs_off = _extension_block(self._mid, self._ext_ids[0], abs_ext_id)
        if abs_off:
            self._fast.configure(payload_type, self._ssrc, clock_rate, ext, abs_off)
        else:
            self._fast.configure(payload_type, self._ssrc, clock_rate, ext)
        self._fast.vp8 = vp8
        rtx_ssrc = getattr(self.sender, "_rtx_ssrc", None)
        self._rtx = (rtx_payload_type, rtx_ssrc) if rtx_payload_type and rtx_ssrc else None
        if self._rtx is not None:
            hooks.route_rtx_feedback(self.sender)
        self._configured = True
        self._refresh()

    def follow(self, track: Any, view: tuple[bool, int, int] | None = None) -> None:
        """Forward ``track`` (a :class:`Forwarder` or ``sfu.simulcast.Layers``) to this
        subscriber, on the layer :meth:`update_layer` picks; ``view`` as in
        :meth:`set_view` (``None``: not reported, the top layer)."""
        self.detach()
        self._view = view or (True, 0, 0)
        self.track = track
        self.track_id = track.track_id
        self.update_layer()

    def attach(self, source: Forwarder, request: bool = True) -> None:
        """Take packets from ``source`` (one stream, i.e. one layer) from now on."""
        track = self.track
        self.detach()
        self.track = track if track is not None else source
        self.source = source
        self.track_id = source.track_id
        self._waiting_key = self.kind == "video"
        self._fast.rebase()
        source.add_leg(self)
        self._refresh()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        if request:
            source.request_keyframe()

    def detach(self) -> None:
        self._park()
        self.track = None
        self.track_id = None

    def _park(self) -> None:
        """Take no packets from anywhere, but stay subscribed to :attr:`track`."""
        self._cancel_switch()
        if self.source is not None:
            self.source.remove_leg(self)
        self.source = None
        self._queue.clear()
        self._refresh()

    # -- layer choice ----------------------------------------------------------------

    def set_view(self, visible: bool, width: int, height: int) -> None:
        """What the subscriber's page shows of this track: visible or not, and the tile's
        size in device pixels (0, 0: not known, take the top layer)."""
        self._view = (visible, max(0, width), max(0, height))
        self.update_layer()

    def set_cap(self, layer: int | None, *, at_once: bool = False) -> None:
        """The allocator's limit: the highest layer index allowed, ``None`` to pause the
        video, :data:`UNCAPPED` for no limit. Takes effect at the target's key frame.

        ``at_once``: the allocator cut because the link is overfull. A move down then
        leaves the old layer now, not at the lower layer's key frame: on a full link
        every packet more of the old layer sits in (or is dropped from) the queue ahead
        of that key frame, whose own packets were then lost and repaired through the
        same queue. The picture stops until the key frame either way."""
        self.cap = layer
        self.update_layer(at_once=at_once)

    def hold(self, held: bool) -> None:
        """Send nothing (``True``), whatever the view and the cap, or resume (``False``,
        at a key frame): the subscriber's connection lost ICE consent, or a restart won
        it back (RFC 7675 section 5.1, :mod:`sfu.ice`). A held leg is parked, so it
        costs the fan-out nothing while the participant may still come back."""
        self._held = held
        if held:
            self._fast.clear_route()
            self._route = None
        self.update_layer()

    @property
    def temporal(self) -> int | None:
        """The highest VP8 temporal layer forwarded, ``None`` for all: the allocator's
        quick way down on a link that starts to fill, with no key frame and no switch
        (the frame rate falls; ``Leg_thin`` in ``sfu/fastpath/leg.c``). Takes effect at
        the next picture going down; going up, at a key frame or a picture whose Y bit
        says it refers only to layer 0."""
        return self._fast.temporal

    @temporal.setter
    def temporal(self, layer: int | None) -> None:
        self._fast.temporal = layer

    @property
    def layer(self) -> int | None:
        """The index of the layer being forwarded now, ``None`` while parked."""
        if self.source is None or self.track is None:
            return None
        try:
            return self.track.layers.index(self.source)
        except ValueError:
            return None

    @property
    def sent_seq(self) -> tuple[int, int]:
        """(SSRC, newest sequence number) of what this leg sent to the subscriber."""
        return self._ssrc, self._fast.last_seq

    @property
    def paused_by_cap(self) -> bool:
        return self.cap is None

    def preferred_layer(self) -> int | None:
        """The layer the view asks for (``None``: hidden), before the cap."""
        visible, width, height = self._view
        if not visible or self.track is None:
            return None
        layers = self.track.layers
        top = len(layers) - 1
        if top == 0 or (width == 0 and height == 0):
            return top
        sizes = _layer_sizes(layers)
        if sizes is None:
            return top
        for i, (w, h) in enumerate(sizes):
            if w >= width * TILE_SLACK and h >= height * TILE_SLACK:
                return i
        return top

    def wanted_layer(self) -> int | None:
        """``min(view, cap)``: the layer this leg should get, ``None`` for none at all."""
        if self._held:
            return None
        if self.kind != "video":
            return None if self.track is None else 0
        preferred = self.preferred_layer()
        if preferred is None or self.cap is None:
            return None
        return min(preferred, self.cap)

    def update_layer(self, *, at_once: bool = False) -> None:
        """Move towards :meth:`wanted_layer`: park, attach, or switch at a key frame.
        Called on every change of view or cap, and by the router's tick (layers start and
        stop flowing on the publisher's side). ``at_once``: see :meth:`set_cap`."""
        track = self.track
        if track is None:
            return
        want = self.wanted_layer()
        if want is None:
            if self.source is not None or self._switch_to is not None:
                self._park()
            return
        now = time.perf_counter_ns()
        target = _pick_layer(track.layers, want, now)
        if target is self.source:
            self._cancel_switch()
            return
        if self.source is None or not self.source.flowing(now) or self.kind != "video":
            self.attach(target)
            return
        current = self.layer
        if at_once and current is not None and track.layers.index(target) < current:
            # Nothing of the old layer from now; attach() sends nothing until the target's
            # key frame, which it asks for. Its losses are not repaired either (retransmit).
            self.switches += 1
            self._left = (self._fast.last_seq, time.monotonic())
            self.attach(target)
            return
        if self._switch_to is not target:
            self._cancel_switch()
            self._switch_to = target
            target.switching.append(self)
        target.request_keyframe()

    def arrive(self, target: Forwarder) -> None:
        """``target``'s key frame is here: move to it (called from its tap)."""
        self._cancel_switch()
        self.switches += 1
        self.attach(target, request=False)

    def _cancel_switch(self) -> None:
        target = self._switch_to
        if target is not None:
            self._switch_to = None
            try:
                target.switching.remove(self)
            except ValueError:
                pass

    async def close(self) -> None:
        self.detach()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.sync()
        self._fast.clear_route()

    # -- hot path --------------------------------------------------------------------

    def _refresh(self) -> None:
        """Let :func:`_fastpath.fanout` send to this leg directly only while nothing of
        it is waiting (a key frame, a queue, a send in flight)."""
        self._fast.ready = (
            self._configured and not self._waiting_key and not self._queue and not self._sending
        )

    def push(self, packet: RtpPacket, key: bool, t_in: int, tried: Any = None) -> None:
        """A packet the C fan-out did not send: this leg was not ready, or (``tried``)
        its C send found no route (``False``) or a full socket (the rewritten bytes)."""
        if tried is not None:
            self._after_c_send(packet, t_in, tried)
            self._refresh()
            return
        self._push(packet, key, t_in)
        self._refresh()

    def _push(self, packet: RtpPacket, key: bool, t_in: int) -> None:
        if self._waiting_key:
            if not key:
                self.source.request_keyframe()  # type: ignore[union-attr]
                return
            self._waiting_key = False
            self._fast.rebase()
        if not self._configured:
            return  # legs are configured before they are attached; never reached
        queue = self._queue
        if not queue and not self._sending:
            # Nothing of this leg is waiting: send now, in order, without a task switch.
            self._after_c_send(packet, t_in, self._c_send(packet, t_in))
            return
        if len(queue) >= self._limit:
            # This subscriber is not draining: drop what it could not take, rather than
            # delaying it further, and restart it at the next key frame.
            self._stats.dropped += len(queue) + 1
            queue.clear()
            self._fast.rebase()
            if self.kind == "video":
                self._waiting_key = True
                self.source.request_keyframe()  # type: ignore[union-attr]
            return
        queue.append((packet, t_in, None))
        self._wake.set()

    def _c_send(self, packet: RtpPacket, t_in: int) -> Any:
        return self._fast.send(
            packet.payload,
            packet.marker,
            packet.sequence_number,
            packet.timestamp,
            packet.ssrc,
            t_in,
        )

    def _after_c_send(self, packet: RtpPacket, t_in: int, sent: Any) -> None:
        """Act on what the C send returned: ``None`` sent, ``False`` no route, bytes:
        rewritten, but the socket is full, so it waits in the queue."""
        if sent is None:
            return
        if sent is False:
            self._send_without_route(packet, t_in)
            return
        self._queue.append((packet, t_in, sent))
        self._wake.set()

    def _send_without_route(self, packet: RtpPacket, t_in: int) -> None:
        """The C path has no usable route: find one, or send through aiortc."""
        route = hooks.fast_route(self.sender.transport)
        if route is not None:
            self._fast.set_route(*route)
            self._route = route
            sent = self._c_send(packet, t_in)
            if sent is not False:
                self._after_c_send(packet, t_in, sent)
                return
        rewritten = self._fast.rewrite(
            packet.payload, packet.marker, packet.sequence_number, packet.timestamp, packet.ssrc
        )
        if rewritten is None:
            return  # older than the last rebase point (its number may be taken), or thinned
        data = rewritten[0]
        try:
            sent_now = hooks.send_rtp_now(self.sender, data)
        except ConnectionError:
            # Not connected yet (or gone): what reaches the subscriber later must
            # start at a key frame again.
            self._waiting_key = self.kind == "video"
            self._fast.rebase()
            return
        if sent_now:
            self._sent(data, len(packet.payload), t_in)
            return
        self._queue.append((packet, t_in, data))
        self._wake.set()

    def _sent(self, data: bytes, payload_len: int, t_in: int) -> None:
        """Count a packet sent through aiortc (the C path counts its own)."""
        self._stats.meter.sent(len(data), time.perf_counter_ns() - t_in)
        self.packets += 1
        self.octets += payload_len
        hooks.update_sender_report(self.sender, int.from_bytes(data[4:8]), payload_len)

    def sync(self) -> None:
        """Fold what the C path sent into aiortc's counters (RTCP SR, getStats) and the
        room's; drop the C route if it is no longer what aiortc would use, or if every
        send since the last sync failed (the next packet looks it up again)."""
        counters = self._fast.take_counters()
        hooks.account_sent(self.sender, counters)
        if self._rtx is not None:
            hooks.route_rtx_feedback(self.sender)  # the transport may have changed (BUNDLE)
        packets, errors, stale = counters[0], counters[6], counters[7]
        self.packets += packets
        self.octets += counters[1]
        self._stats.send_errors += errors
        self._stats.dropped += stale
        if self._fast.routed and (
            (errors and not packets) or hooks.fast_route(self.sender.transport) != self._route
        ):
            self._fast.clear_route()

    async def _run(self) -> None:
        """Drains what could not be sent at once (a backed-up socket)."""
        queue, wake = self._queue, self._wake
        while True:
            self._refresh()
            await wake.wait()
            wake.clear()
            while queue:
                packet, t_in, prepared = queue.popleft()
                if not self._configured:
                    continue
                # Packets queued unrewritten are rewritten when sent, so packets dropped
                # from the queue leave no gap; the C path queues what it already wrote.
                if prepared is None:
                    rewritten = self._fast.rewrite(
                        packet.payload,
                        packet.marker,
                        packet.sequence_number,
                        packet.timestamp,
                        packet.ssrc,
                    )
                    if rewritten is None:
                        continue  # older than the last rebase point
                    prepared = rewritten[0]
                self._sending = True
                try:
                    await hooks.send_rtp(self.sender, prepared)
                except ConnectionError:
                    # Not connected yet (or gone): what reaches the subscriber later
                    # must start at a key frame again.
                    self._waiting_key = self.kind == "video"
                    self._fast.rebase()
                    queue.clear()
                    break
                except Exception:
                    log.exception("leg %s: send failed", self.track_id)
                    continue  # this packet is lost; the leg goes on
                finally:
                    self._sending = False
                self._sent(prepared, len(packet.payload), t_in)

    # -- feedback from the subscriber -----------------------------------------------

    def on_keyframe_request(self) -> None:
        if self.source is not None:
            self.source.request_keyframe()

    def _on_rtcp(self, packet: Any) -> None:
        """The subscriber's RTCP for this leg: receiver reports and REMB feed its
        connection's estimate (:class:`sfu.downlink.DownlinkEstimate`)."""
        feedback = self._feedback
        if feedback is None:
            return
        feedback.heard()
        if isinstance(packet, RtcpRrPacket | RtcpSrPacket):
            for report in packet.reports:
                if report.ssrc == self._ssrc:
                    feedback.on_report(
                        report.ssrc,
                        report.highest_sequence,
                        report.packets_lost,
                        # (what it sent, for the bytes per packet of what arrived)
                        (self.packets, self.octets + self.packets * PACKET_OVERHEAD)
                        if self.kind == "video"
                        else None,
                    )
                    rtt = hooks.report_rtt(self.sender, report)
                    if rtt is not None:
                        feedback.on_rtt(*rtt)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            # While a video is paused only our padding carries abs-send-time, and then
            # Chromium's REMB names just the RTX stream.
            if self._ssrc in ssrcs or (self._rtx is not None and self._rtx[1] in ssrcs):
                feedback.on_remb(bitrate, packet)

    def send_report(self, hold: float = 0.0) -> None:
        """An extra RTCP SR now (a probe's: its round trip shows the link's queue); the
        periodic ones wait ``hold`` seconds (aiortc_hooks.send_sender_report)."""
        hooks.send_sender_report(self.sender, 90_000 if self.kind == "video" else 48_000, hold)

    def hold_reports(self, hold: float) -> None:
        """The periodic SRs wait ``hold`` seconds from now (0: no longer), in place of
        the wait a :meth:`send_report` set."""
        hooks.hold_sender_reports(self.sender, hold)

    @property
    def can_pad(self) -> bool:
        return self._rtx is not None and self._ext_ids[1] is not None

    def pad(self, count: int) -> int:
        """Send ``count`` padding-only RTX packets (a bandwidth probe); returns the
        bytes put on the wire. RTX, so the media stream's numbering is untouched;
        abs-send-time, so the subscriber's estimator counts them."""
        if self._rtx is None or self._ext_ids[1] is None:
            return 0
        pt, ssrc = self._rtx
        sent = 0
        for _ in range(count):
            ext, abs_off = _extension_block(self._mid, self._ext_ids[0], self._ext_ids[1])
            ext = bytearray(ext)
            abs_time = (hooks.ntp_now() >> 14) & 0xFFFFFF
            ext[abs_off : abs_off + 3] = abs_time.to_bytes(3, "big")
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            header = struct.pack(
                "!BBHII", 0xB0 if ext else 0xA0, pt, self._rtx_seq, self._rtx_ts, ssrc
            )
            data = header + bytes(ext) + bytes(PADDING_SIZE - 1) + bytes([PADDING_SIZE])
            try:
                if not hooks.send_rtp_now(self.sender, data):
                    break  # the socket is backed up: a probe must not queue
            except ConnectionError:
                break
            sent += len(data) + PACKET_OVERHEAD - 12
        return sent

    async def retransmit(self, sequence_number: int) -> None:
        left = self._left
        if left is not None:
            last, at = left
            if time.monotonic() - at > REPAIR_SPAN:
                self._left = None
            elif (last - sequence_number) & 0xFFFF < 0x8000:
                # Sent before a cut moved this leg down: its new layer starts with a key
                # frame, which needs nothing from before it. These were the old layer's
                # losses on the full link, and their repairs took the link's share for
                # repairs from the key frame's own (sfu.downlink). Only after a cut: the
                # estimator's fence already leaves those losses out of its loss figure
                # (elsewhere repairs still lower what the receiver reports lost).
                return
        data = self._fast.history(sequence_number)
        feedback = self._feedback
        if data is not None and feedback is not None:
            if not feedback.allow_retransmit(len(data) + PACKET_OVERHEAD - 12):
                return  # the link is full: repairs would add to what it drops
        if data is not None:
            try:
                await hooks.send_rtp(self.sender, data)
            except ConnectionError:
                pass


# s: how long a leg remembers where it moved to its source (Leg.retransmit); the C
# history keeps a sent packet 2 s at most (sfu/fastpath/leg.c, HISTORY_MS).
REPAIR_SPAN = 2.0


def _extension_block(mid: str | None, mid_id: int | None, abs_id: int | None) -> tuple[bytes, int]:
    """An RFC 8285 one-byte header extension block (0xBEDE, length in words, elements)
    with the MID and room for abs-send-time; and where the latter's 3 bytes are (0: none).
    """
    element = b""
    if mid and mid_id:
        element += bytes([(mid_id << 4) | (len(mid.encode()) - 1)]) + mid.encode()
    abs_off = 0
    if abs_id:
        abs_off = 4 + len(element) + 1
        element += bytes([(abs_id << 4) | 2]) + b"\x00\x00\x00"
    if not element:
        return b"", 0
    element += b"\x00" * (-len(element) % 4)
    return b"\xbe\xde" + struct.pack("!H", len(element) // 4) + element, abs_off


def _layer_sizes(layers: list[Forwarder]) -> list[tuple[int, int]] | None:
    """Each layer's frame size; a layer not seen at a key frame yet is guessed from one
    that was, at half the size per step down (the page's scaleResolutionDownBy 4, 2, 1)."""
    known = next(((i, f) for i, f in enumerate(layers) if f.width and f.height), None)
    if known is None:
        return None
    k, ref = known
    out = []
    for i, f in enumerate(layers):
        if f.width and f.height:
            out.append((f.width, f.height))
        else:
            scale = 2.0 ** (i - k)
            out.append((int(ref.width * scale), int(ref.height * scale)))
    return out


def _pick_layer(layers: list[Forwarder], want: int, now_ns: int) -> Forwarder:
    """Layer ``want`` if it is being sent; else the nearest lower one that is, else the
    nearest higher one; else (nothing sent yet) ``want`` itself."""
    want = min(want, len(layers) - 1)
    for i in range(want, -1, -1):
        if layers[i].flowing(now_ns, FRESH_NS):
            return layers[i]
    for i in range(want + 1, len(layers)):
        if layers[i].flowing(now_ns, FRESH_NS):
            return layers[i]
    return layers[want]
