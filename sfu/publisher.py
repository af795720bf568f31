"""A participant's publish connection: the browser offers, the SFU answers and receives."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription

from . import aiortc_hooks as hooks
from . import ice
from .forwarder import Forwarder
from .peer import add_candidate, close_quietly, new_peer_connection, set_remote
from .ports import MediaPorts, gather_on
from .simulcast import Layers, OfferedSimulcast, answer_layers, offered_layers
from .stats import RoomStats
from .timers import Timer, wheel
from .twcc import FeedbackSender

log = logging.getLogger(__name__)

# While the publish connection's consent stays expired, the page is asked again this
# often: a request can meet a page busy with an offer of its own (it restarts only from
# a stable state), or a page whose signalling was away when it was sent.
RESTART_ASK_AGAIN = 10.0


class Publisher:
    """Receives one participant's tracks and owns a :class:`Forwarder` for each.

    Kinds the participant may not publish are answered ``inactive`` and never get a
    forwarder, so a hand-made client that sends them anyway reaches nobody. A video
    offered with simulcast gets :class:`~sfu.simulcast.Layers` (a forwarder per layer)
    and an answer that receives every layer. A browser that offers transport-cc gets
    it (:mod:`sfu.twcc`) instead of our REMB estimate.
    """

    def __init__(
        self,
        pid: str,
        kinds: frozenset[str],
        stats: RoomStats,
        keyframe_interval: float,
        on_tracks_changed: Callable[[], None],
        on_state: Callable[[str], None],
        ports: MediaPorts | None = None,
        on_consent_lost: Callable[[], None] = lambda: None,
        downlink_bps: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.pid = pid
        self._downlink_bps = downlink_bps  # the way back for transport-cc feedback
        self.kinds = kinds
        self.forwarders: dict[str, Forwarder | Layers] = {}  # by publish-side mid
        self._simulcast: dict[str, OfferedSimulcast] = {}  # by mid, from the latest offer
        self.pc: RTCPeerConnection = new_peer_connection()
        self._stats = stats
        self._ports = ports
        self._ice_task: asyncio.Task[None] | None = None
        # transport-cc offered per mid (latest offer), and a feedback sender per transport
        self._twcc: dict[str, tuple[int, frozenset[int]]] = {}
        self._feedback: dict[int, FeedbackSender] = {}
        self._keyframe_interval = keyframe_interval
        self._on_tracks_changed = on_tracks_changed
        self._on_consent_lost = on_consent_lost
        self._consent_lost = False
        self._ask_timer: Timer | None = None
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", lambda: on_state(self.pc.connectionState))

    async def negotiate(self, offer_sdp: str) -> str:
        """Apply the browser's (re-)offer and return the SFU's answer."""
        # The browser's restartIce(): new credentials on a connection that is up.
        restarted = ice.remote_changed(self.pc, offer_sdp)
        if restarted is not None:
            ice.restart(self.pc)
        self._simulcast = offered_layers(offer_sdp)
        self._twcc = hooks.transport_cc_offered(offer_sdp)
        await set_remote(self.pc, RTCSessionDescription(sdp=offer_sdp, type="offer"))
        for sim in self._simulcast.values():
            # With BUNDLE one transport carries every section; extension ids are the
            # session's, so any simulcast section's ids hold for the transport.
            for t in self.pc.getTransceivers():
                if t.mid == sim.mid and t.receiver.transport is not None:
                    hooks.use_stream_id_extensions(t.receiver.transport, sim.rid_ext, sim.rrid_ext)
        hooks.answer_transport_cc(self.pc, self._twcc)
        answer = await self.pc.createAnswer()
        gather_on(self.pc, self._ports)
        ice.mark(self.pc, self._consent)
        await self.pc.setLocalDescription(answer)
        if restarted is not None:
            self._restart_checks(ice.resume(self.pc, restarted))
        # A re-offer may stop sending a track (screen share ended): drop its forwarder.
        receiving = {
            t.mid
            for t in self.pc.getTransceivers()
            if t.currentDirection in ("recvonly", "sendrecv")
        }
        gone = [mid for mid in self.forwarders if mid not in receiving]
        for mid in gone:
            await self.forwarders.pop(mid).close()
        if gone:
            self._on_tracks_changed()
        return answer_layers(self.pc.localDescription.sdp, self._simulcast)

    def _on_track(self, track: MediaStreamTrack) -> None:
        transceiver = next(
            (t for t in self.pc.getTransceivers() if t.receiver.track is track), None
        )
        if transceiver is None:
            return
        if track.kind not in self.kinds:
            transceiver.direction = "inactive"
            log.info("publisher %s: %s not granted, answered inactive", self.pid, track.kind)
            return
        mid = transceiver.mid
        sim = self._simulcast.get(mid) if track.kind == "video" else None
        fwd: Forwarder | Layers
        if sim is not None:
            fwd = Layers(
                track_id=f"{self.pid}:{mid}",
                publisher_id=self.pid,
                receiver=transceiver.receiver,
                rids=sim.rids,
                stats=self._stats,
                keyframe_interval=self._keyframe_interval,
            )
        else:
            fwd = Forwarder(
                track_id=f"{self.pid}:{mid}",
                publisher_id=self.pid,
                kind=track.kind,
                receiver=transceiver.receiver,
                stats=self._stats,
                keyframe_interval=self._keyframe_interval,
            )
        self.forwarders[mid] = fwd

        receiver = transceiver.receiver

        def on_receive(codecs: list) -> None:
            fwd.set_codecs(codecs)
            self._report_arrivals(receiver)
            if fwd.ready:
                self._on_tracks_changed()

        # With transport-cc the browser estimates its uplink from our feedback: no REMB.
        hooks.tap_receiver(receiver, fwd.tap, on_receive, remb=mid not in self._twcc)

    def _report_arrivals(self, receiver: RTCRtpReceiver) -> None:
        """Start transport-cc feedback for ``receiver``'s transport if it records arrivals
        (one sender per transport: with BUNDLE, every track shares it)."""
        recorder = hooks.arrivals(receiver)
        if recorder is None or id(recorder) in self._feedback:
            return
        self._feedback[id(recorder)] = FeedbackSender(
            recorder,
            lambda: hooks.rtcp_ssrc(receiver),
            lambda packet: hooks.send_rtcp(receiver, packet),
            self._downlink_bps,
        )
        log.info("publisher %s: transport-cc feedback", self.pid)

    async def add_ice_candidate(self, candidate: dict | None) -> None:
        await add_candidate(self.pc, candidate)

    def _consent(self, granted: bool) -> None:
        """ICE consent of the publish connection expired (nothing is sent on it: no
        PLI, NACK or REMB reaches the browser, while its media still fans out), or a
        restart won it back. The browser offers on this connection, so only it can
        restart ICE; its pc may stay "connected" (the SFU still answers its checks),
        so it is asked to at once rather than left to notice by itself."""
        log.info(
            "publisher %s: %s",
            self.pid,
            "consent regained" if granted else "consent expired, asking for an ICE restart",
        )
        self._consent_lost = not granted
        if granted and self._ask_timer is not None:
            self._ask_timer.cancel()
            self._ask_timer = None
        if not granted and self._ask_timer is None:
            self._ask_restart()

    def _ask_restart(self) -> None:
        self._ask_timer = None
        if not self._consent_lost:
            return  # a restart won it back
        self._on_consent_lost()
        self._ask_timer = wheel().call_later(RESTART_ASK_AGAIN, self._ask_restart)

    def _restart_checks(self, task: asyncio.Task[None]) -> None:
        if self._ice_task is not None:
            self._ice_task.cancel()
        self._ice_task = task

    async def close(self) -> None:
        self._consent_lost = False
        if self._ask_timer is not None:
            self._ask_timer.cancel()
            self._ask_timer = None
        if self._ice_task is not None:
            self._ice_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ice_task
            self._ice_task = None
        for feedback in self._feedback.values():
            await feedback.close()
        self._feedback.clear()
        for fwd in self.forwarders.values():
            await fwd.close()
        self.forwarders.clear()
        await close_quietly(self.pc)
