"""Real aiortc participants for tests that drive an SFU router directly (no signalling)."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import defaultdict
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaBlackhole  # noqa: F401  (kept for ad-hoc debugging)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from sfu import ice
from sfu.downlink import REMB_WARMUP
from sfu.router import MediaConfig, PublishRestartNeeded, RenegotiationNeeded, Router, RouterEvent

VIDEO_CLOCK = 90000
# max-bundle as browsers effectively use it; aiortc's default "balanced" policy strands
# a second video receiver on a transport that bundling stops.
CLIENT_CONFIG = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


class ColourVideoTrack(MediaStreamTrack):
    """30 fps frames of one flat colour, so a receiver can tell publishers apart."""

    kind = "video"

    def __init__(self, colour: tuple[int, int, int], width: int = 320, height: int = 240) -> None:
        super().__init__()
        self._frame = np.zeros((height, width, 3), dtype=np.uint8)
        self._frame[:, :] = colour
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += VIDEO_CLOCK // 30
            wait = self._start + self._pts / VIDEO_CLOCK - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = av.VideoFrame.from_ndarray(self._frame, format="rgb24")
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


def close_to(a: tuple[int, ...], b: tuple[int, ...], tol: int = 40) -> bool:
    """Whether a decoded colour is the one sent (VP8 moves each channel a little); a
    colour not decoded yet (``()``) is not."""
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


@dataclass
class Received:
    """What one participant decoded, per publishing participant and kind."""

    frames: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    colours: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    first_video_at: dict[str, float] = field(default_factory=dict)


class Peer:
    """A participant: a publish connection it offers, a subscribe connection it answers."""

    def __init__(
        self, pid: str, router: Router, colour: tuple[int, int, int] = (200, 30, 30)
    ) -> None:
        self.pid = pid
        self.router = router
        self.colour = colour
        self.pub = RTCPeerConnection(CLIENT_CONFIG)
        self.sub: RTCPeerConnection | None = None
        self.received = Received()
        self.mid_owner: dict[str, tuple[str, str]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._ice_tasks: list[asyncio.Task] = []
        self.audio = AudioStreamTrack()
        self.video = ColourVideoTrack(colour)

    async def publish(self, audio: bool = True, video: bool = True) -> None:
        if audio:
            self.pub.addTrack(self.audio)
        if video:
            self.pub.addTrack(self.video)
        await self.pub.setLocalDescription(await self.pub.createOffer())
        answer = await self.router.publish(self.pid, self.pub.localDescription.sdp)
        await self.pub.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def renegotiate(self) -> None:
        offer = await self.router.subscribe(self.pid)
        if offer is None:
            return
        if self.sub is None:
            self.sub = RTCPeerConnection(CLIENT_CONFIG)
            self.sub.on("track", self._on_track)
        for t in offer.tracks:
            self.mid_owner[t.mid] = (t.participant, t.kind)
        # The SFU restarts ICE: do what a browser does on its own (aiortc cannot).
        restarted = ice.remote_changed(self.sub, offer.sdp)
        if restarted is not None:
            ice.restart(self.sub)
        await self.sub.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        await self.sub.setLocalDescription(await self.sub.createAnswer())
        await self.router.accept_answer(self.pid, self.sub.localDescription.sdp)
        if restarted is not None:
            self._ice_tasks.append(ice.resume(self.sub, restarted))

    async def restart_publish(self) -> None:
        """The browser's ``restartIce()`` on the publish leg: a re-offer with new ICE
        credentials on the same connection."""
        ice.restart(self.pub)
        await self.pub.setLocalDescription(await self.pub.createOffer())
        answer = await self.router.publish(self.pid, self.pub.localDescription.sdp)
        await self.pub.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        self._ice_tasks.append(ice.resume(self.pub, ice.credentials(answer)))

    def _on_track(self, track: MediaStreamTrack) -> None:
        transceiver = next(t for t in self.sub.getTransceivers() if t.receiver.track is track)
        task = asyncio.ensure_future(self._consume(transceiver.mid, track))
        self._tasks.add(task)

    async def _consume(self, mid: str, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                owner, kind = self.mid_owner.get(mid, ("?", track.kind))
                self.received.frames[(owner, kind)] += 1
                if kind == "video":
                    self.received.first_video_at.setdefault(owner, time.monotonic())
                    rgb = frame.to_ndarray(format="rgb24")
                    h, w, _ = rgb.shape
                    self.received.colours[owner] = tuple(int(v) for v in rgb[h // 2, w // 2])
        except MediaStreamError:
            pass

    def decoded(self, owner: str, kind: str) -> int:
        return self.received.frames[(owner, kind)]

    async def close(self) -> None:
        for task in [*self._tasks, *self._ice_tasks]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._ice_tasks, return_exceptions=True)
        await self.pub.close()
        if self.sub is not None:
            await self.sub.close()


class Room:
    """A router plus the local 'signalling' that answers its renegotiation events."""

    def __init__(self, room_id: str = "room-1", config: MediaConfig | None = None) -> None:
        self.peers: dict[str, Peer] = {}
        self.events: list[RouterEvent] = []
        self._tasks: set[asyncio.Task] = set()
        self.router = Router(room_id, config, on_event=self._on_event)

    def _on_event(self, event: RouterEvent) -> None:
        self.events.append(event)
        if isinstance(event, RenegotiationNeeded) and event.pid in self.peers:
            task = asyncio.ensure_future(self.peers[event.pid].renegotiate())
        elif isinstance(event, PublishRestartNeeded) and event.pid in self.peers:
            # what the page does on ``publish.restart``
            task = asyncio.ensure_future(self.peers[event.pid].restart_publish())
        else:
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def join(self, pid: str, colour: tuple[int, int, int], publish: bool = True) -> Peer:
        peer = Peer(pid, self.router, colour)
        self.peers[pid] = peer
        await peer.renegotiate()  # registers as a subscriber
        if publish:
            await peer.publish()
        return peer

    async def leave(self, pid: str) -> None:
        peer = self.peers.pop(pid)
        await self.router.remove(pid)
        await peer.close()

    async def close(self) -> None:
        for peer in list(self.peers.values()):
            await peer.close()
        await self.router.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> float:  # noqa: ASYNC109
    """Wait until ``predicate()`` is true; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
    return time.monotonic() - start


async def a_watched_by_b_who_reports_remb(room: Room, settle: float) -> Peer:
    """``a`` publishes, ``b`` decodes it and plays Chromium's part in REMB: aiortc's own
    estimator is taken out (it would send REMBs of its own in between), and b reports
    2 Mbit/s past the warm-up (``settle`` s more; drops before it cut nothing). Returns b."""
    await room.join("a", (200, 30, 30))
    b = await room.join("b", (30, 200, 30))
    await wait_for(lambda: b.decoded("a", "video") >= 10, timeout=20)
    for transceiver in b.sub.getTransceivers():
        transceiver.receiver._RTCRtpReceiver__remote_bitrate_estimator = None
    await send_remb(room, "b", 2_000_000)
    await asyncio.sleep(REMB_WARMUP + settle)
    await send_remb(room, "b", 2_000_000)
    await asyncio.sleep(0.2)
    return b


async def send_remb(room: Room, pid: str, bitrate: int) -> None:
    """The subscriber's own RTCP: a REMB for every video it receives."""
    sub = room.peers[pid].sub
    assert sub is not None
    receivers = [t.receiver for t in sub.getTransceivers() if t.kind == "video"]
    ssrcs = [s for r in receivers for s in r._RTCRtpReceiver__remote_streams]
    rtcp_ssrc = receivers[0]._RTCRtpReceiver__rtcp_ssrc
    packet = RtcpPsfbPacket(
        fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(bitrate, ssrcs)
    )
    await receivers[0]._send_rtcp(packet)
