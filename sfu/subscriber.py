"""A participant's subscribe connection: the SFU offers the tracks it forwards to them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCPeerConnection, RTCSessionDescription

from . import aiortc_hooks as hooks
from . import ice
from .allocator import Allocator, Rank
from .codecs import preference_for
from .downlink import HOST, DownlinkEstimate
from .errors import MediaError
from .forwarder import SYNC_INTERVAL, Forwarder, Leg
from .peer import add_candidate, close_quietly, new_peer_connection, set_remote
from .ports import MediaPorts, gather_on
from .stats import RoomStats
from .timers import Timer, Wheel, wheel

log = logging.getLogger(__name__)

Accept = Callable[[str, str], bool]  # (publisher id, kind) -> may this subscriber get it


@dataclass(frozen=True, slots=True)
class OfferedTrack:
    mid: str
    participant: str
    kind: str
    track: str


@dataclass(frozen=True, slots=True)
class SubscribeOffer:
    sdp: str
    tracks: tuple[OfferedTrack, ...]


class Subscriber:
    """Owns the legs that carry other participants' tracks to one participant.

    Negotiation is one offer at a time: a change while an offer is outstanding marks the
    subscriber dirty, and the router asks for a new offer once the answer arrived.
    Transceivers of removed tracks go ``inactive`` and are reused for the next track of
    the same kind and codec, so the SDP does not grow for ever as partners come and go.
    """

    def __init__(
        self,
        pid: str,
        stats: RoomStats,
        video_queue: int,
        audio_queue: int,
        on_state: Callable[[str], None],
        ports: MediaPorts | None = None,
        rank: Rank | None = None,
        on_paused: Callable[[str, bool], None] | None = None,
        on_renegotiate: Callable[[], None] | None = None,
    ) -> None:
        self.pid = pid
        self.accept: Accept = lambda publisher, kind: True
        self.pc: RTCPeerConnection | None = None
        self.legs: dict[str, Leg] = {}  # active, by track id
        # The forwarder each active leg was offered for. A track id names a publisher's
        # transceiver (pid:mid), not its connection: the participant's new page after a
        # seat takeover publishes the same ids on new forwarders.
        self._feeds: dict[str, Forwarder] = {}
        self.negotiating = False
        self.dirty = False
        self._idle: list[Leg] = []
        self._pending: list[tuple[Leg, Forwarder]] = []
        self._stats = stats
        self._ports = ports
        # A restart asked for (the browser lost its network): the next offer carries new
        # ICE credentials; the answer's start the checks.
        self.restart_due = False
        self._restarting = False
        self._ice_task: asyncio.Task[None] | None = None
        self._consent_lost = False  # RFC 7675: the legs are held until a restart
        self._queues = {"video": video_queue, "audio": audio_queue}
        self._on_state = on_state
        # Asks the control plane for a new offer (Router: RenegotiationNeeded).
        self._on_renegotiate = on_renegotiate or (lambda: None)
        # Folding the legs' C counters into aiortc's, on the loop's timer wheel
        # (sfu.timers): a job, not a task and a loop wake-up per subscriber (issue 16).
        self._sync_timer: Timer | None = None
        self._wheel: Wheel | None = None  # the loop's, looked up once (a weak-dict get)
        # What this connection can take, and what to forward within it (audio first).
        self.estimate = DownlinkEstimate(
            label=pid,
            sent=lambda: dict(leg.sent_seq for leg in self.legs.values()),
            host=HOST,
            on_lower=lambda: self.allocator.soon(),
            on_brake=lambda: self.allocator.soon(),
        )
        self.allocator = Allocator(
            self.estimate,
            lambda: list(self.legs.values()),
            rank or (lambda publisher: 2),
            on_paused or (lambda publisher, paused: None),
        )
        # What the page shows of each publisher (Router.set_view): visible, width, height.
        self.views: dict[str, tuple[bool, int, int]] = {}

    def _wanted(self, forwarders: list[Forwarder]) -> dict[str, Forwarder]:
        return {
            f.track_id: f
            for f in forwarders
            if f.ready and f.publisher_id != self.pid and self.accept(f.publisher_id, f.kind)
        }

    async def offer(self, forwarders: list[Forwarder]) -> SubscribeOffer | None:
        """A new offer if what this participant should receive changed, else ``None``."""
        if self.negotiating:
            self.dirty = True
            return None
        wanted = self._wanted(forwarders)
        current = set(self.legs)
        replaced = {t for t in current & wanted.keys() if self._feeds.get(t) is not wanted[t]}
        restart = self.restart_due and self.pc is not None and self.pc.remoteDescription is not None
        self.restart_due = False
        if wanted.keys() == current and not replaced and not restart:
            return None
        if restart:
            ice.restart(self.pc)
            self._restarting = True
        if self.pc is None:
            self.pc = new_peer_connection()
            pc = self.pc
            pc.on("connectionstatechange", lambda: self._connection_state(pc))
        # A replaced track's leg is let go here and, with the same codec, taken again
        # just below: the same transceiver, following the new forwarder after the answer.
        for track_id in (current - wanted.keys()) | replaced:
            leg = self.legs.pop(track_id)
            del self._feeds[track_id]
            leg.detach()
            leg.transceiver.direction = "inactive"
            self._idle.append(leg)
        self._pending = []
        for track_id in sorted(wanted.keys() - self.legs.keys()):
            fwd = wanted[track_id]
            leg = self._reuse(fwd) or self._new_leg(fwd)
            leg.transceiver.direction = "sendonly"
            leg.track_id = track_id
            self.legs[track_id] = leg
            self._feeds[track_id] = fwd
            self._pending.append((leg, fwd))
        offer = await self.pc.createOffer()
        gather_on(self.pc, self._ports)
        ice.mark(self.pc, self._consent, self.estimate.baseline)
        await self.pc.setLocalDescription(offer)
        self.negotiating = True
        tracks = tuple(
            OfferedTrack(
                mid=leg.transceiver.mid,
                participant=track_id.split(":", 1)[0],
                kind=leg.kind,
                track=track_id,
            )
            for track_id, leg in self.legs.items()
        )
        return SubscribeOffer(sdp=self.pc.localDescription.sdp, tracks=tracks)

    def _reuse(self, fwd: Forwarder) -> Leg | None:
        for leg in self._idle:
            codec, _ = hooks.negotiated(leg.transceiver)
            if (
                leg.kind == fwd.kind
                and codec is not None
                and fwd.codec is not None
                and codec.mimeType.lower() == fwd.codec.mimeType.lower()
                and codec.parameters == fwd.codec.parameters
            ):
                self._idle.remove(leg)
                return leg
        return None

    def _new_leg(self, fwd: Forwarder) -> Leg:
        assert self.pc is not None and fwd.codec is not None
        transceiver = self.pc.addTransceiver(hooks.SilentTrack(fwd.kind), direction="sendonly")
        transceiver.setCodecPreferences(preference_for(fwd.kind, fwd.codec))
        if self._sync_timer is None:
            self._wheel = wheel()
            self._sync_timer = self._wheel.call_later(SYNC_INTERVAL, self._sync_legs)
        self.allocator.start()
        leg = Leg(
            fwd.kind, transceiver, self._stats, self._queues[fwd.kind], feedback=self.estimate
        )
        if self._consent_lost:
            leg.hold(True)
        return leg

    def _consent(self, granted: bool) -> None:
        """ICE consent of the connection expired (stop sending media, RFC 7675 section
        5.1; the participant keeps its reconnect grace) or a restart won it back."""
        self._consent_lost = not granted
        log.info(
            "subscriber %s: %s",
            self.pid,
            "consent regained, media resumes" if granted else "consent expired, media held",
        )
        for leg in [*self.legs.values(), *self._idle]:
            leg.hold(not granted)
        if not granted and self.pc is not None:
            # The SFU offers on this connection, so it restarts ICE itself (as
            # Router.restart_ice): the page answers a restart offer whatever its own ICE
            # state says. Chromium keeps a pc "connected" while it hears the SFU's
            # answers to its own checks, so waiting for the page to see "failed" could
            # hold the legs for good.
            self.restart_due = True
            self._on_renegotiate()

    def _connection_state(self, pc: RTCPeerConnection) -> None:
        if pc.connectionState == "connected":
            try:
                hooks.read_in_c(pc)
            except Exception:  # aiortc's own read path stays in place
                log.exception("subscriber %s: reading in C failed", self.pid)
        self._on_state(pc.connectionState)

    def _sync_legs(self) -> None:
        """Keep aiortc's RTCP sender reports and getStats true for what the legs' C send
        path sent (aiortc sends a report every 0.5-1.5 s)."""
        if self._sync_timer is None or self._wheel is None:
            return  # closed
        for leg in [*self.legs.values(), *self._idle]:
            try:
                leg.sync()
            except Exception:
                log.exception("subscriber %s: syncing a leg failed", self.pid)
        self._sync_timer = self._wheel.call_later(SYNC_INTERVAL, self._sync_legs)

    async def accept_answer(self, answer_sdp: str) -> bool:
        """Apply the browser's answer and start forwarding; ``True`` if a new offer is due."""
        if not self.negotiating or self.pc is None:
            raise MediaError("no_offer", "There is no subscribe offer waiting for an answer.")
        await set_remote(self.pc, RTCSessionDescription(sdp=answer_sdp, type="answer"))
        self.negotiating = False
        if self._restarting:
            self._restarting = False
            remote = ice.credentials(answer_sdp)
            if remote is not None:
                if self._ice_task is not None:
                    self._ice_task.cancel()
                self._ice_task = ice.resume(self.pc, remote)
        for leg, fwd in self._pending:
            codec, mid_ext = hooks.negotiated(leg.transceiver)
            if codec is None or self.legs.get(fwd.track_id) is not leg:
                continue
            abs_ext, rtx_pt = hooks.negotiated_feedback(leg.transceiver)
            leg.configure(
                codec.payloadType,
                codec.clockRate,
                leg.transceiver.mid,
                mid_ext,
                abs_ext,
                rtx_pt,
                vp8=codec.mimeType.lower() == "video/vp8",
            )
            leg.follow(fwd, self.views.get(fwd.publisher_id))
        self._pending = []
        due, self.dirty = self.dirty, False
        return due

    async def add_ice_candidate(self, candidate: dict | None) -> None:
        if self.pc is not None:
            await add_candidate(self.pc, candidate)

    def set_view(self, views: dict[str, tuple[bool, int, int]]) -> None:
        """The page's report of its tiles, by publisher id; publishers not named keep
        their last view (a page reports only what it shows)."""
        self.views.update(views)
        for leg in self.legs.values():
            track = leg.track
            if leg.kind == "video" and track is not None and track.publisher_id in views:
                leg.set_view(*views[track.publisher_id])

    def video_legs(self) -> list[Leg]:
        return [leg for leg in self.legs.values() if leg.kind == "video"]

    def drop_source(self, track_ids: set[str]) -> None:
        """Stop legs whose publisher went away, before the re-offer removes them."""
        for track_id in track_ids & set(self.legs):
            self.legs[track_id].detach()

    async def close(self) -> None:
        await self.allocator.close()
        if self._ice_task is not None:
            self._ice_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ice_task
            self._ice_task = None
        if self._sync_timer is not None:
            self._sync_timer.cancel()
            self._sync_timer = None
        for leg in [*self.legs.values(), *self._idle]:
            await leg.close()
        self.legs.clear()
        self._feeds.clear()
        self._idle.clear()
        self._pending = []
        if self.pc is not None:
            await close_quietly(self.pc)
            self.pc = None
