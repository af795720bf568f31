"""A synthetic participant: a real aiortc peer behind a real Socket.IO signalling client.

It joins the way the page does (docs/protocol.md): connect with ``auth: {token}``, wait
for ``welcome``, publish an offer with ack, answer every ``subscribe.offer``. It
publishes pre-encoded, pre-packetised media through the C send path of
``bench.publisher`` (or, with ``aiortc_publisher``, through aiortc's own sender from a
``bench.media.ReplayTrack``) and measures what it receives without decoding:
``sfu.aiortc_hooks.tap_receiver`` stops aiortc's decoder thread and the C reader hands
every RTP packet straight to the participant, which routes it by SSRC itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import socketio
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription

from sfu import _fastpath, aiortc_hooks

from .media import SIMULCAST_LAYERS, EncodedMedia, ReplayTrack
from .publisher import PacedSender, SimulcastSender

log = logging.getLogger(__name__)

# One transport like a browser's max-bundle; STUN/TURN only if welcome names servers.
CLIENT_CONFIG = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def rtc_configuration(ice: Any) -> RTCConfiguration:
    """``welcome.ice`` as aiortc takes it: the same servers and policy the page uses
    (aioice speaks TURN over UDP and TCP; ``turns:`` it does not verify like a browser)."""
    if not isinstance(ice, dict):
        return CLIENT_CONFIG
    servers = [
        RTCIceServer(
            urls=entry["urls"],
            username=entry.get("username"),
            credential=entry.get("credential"),
        )
        for entry in ice.get("iceServers") or []
        if isinstance(entry, dict) and entry.get("urls")
    ]
    policy = (
        RTCIceTransportPolicy.RELAY
        if ice.get("iceTransportPolicy") == "relay"
        else RTCIceTransportPolicy.ALL
    )
    return RTCConfiguration(
        iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE, iceTransportPolicy=policy
    )


SIGNAL_TIMEOUT = 30.0
# Header extension ids the bench's simulcast offer uses (aiortc's own offer takes 1-3).
RID_EXT, RRID_EXT = 10, 11
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
RRID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
# --view: which layer each subscriber's tiles ask for (tiles as big as that layer).
# "mixed": participant i asks publisher j (its j-th other publisher) for layer (i+j) mod 3,
# so in a room of three every layer is forwarded; "top": no view report (0 × 0 = top).
VIEWS = ("mixed", "l", "m", "h", "top")


def simulcast_offer(sdp: str, rids: tuple[str, ...]) -> str:
    """aiortc's offer with its video section shaped like Chromium's simulcast offer:
    no ``a=ssrc`` lines (the layers' SSRCs are learnt from their rid), the
    ``rtp-stream-id`` / ``repaired-rtp-stream-id`` extensions, ``a=rid:<rid> send`` per
    layer and ``a=simulcast:send l;m;h`` (low → high, as web/call.js lists them)."""
    out: list[str] = []
    video = False
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            video = line.startswith("m=video")
        if video and (line.startswith("a=ssrc:") or line.startswith("a=ssrc-group:")):
            continue
        out.append(line)
        if video and line.startswith("a=mid:"):
            out += [
                f"a=extmap:{RID_EXT} {RID_URI}",
                f"a=extmap:{RRID_EXT} {RRID_URI}",
                *(f"a=rid:{r} send" for r in rids),
                "a=simulcast:send " + ";".join(rids),
            ]
    return "\r\n".join(out)


@dataclass(slots=True)
class Window:
    """The measurement window shared by every participant of one generator process."""

    active: bool = False


# What one subscriber received of one publisher's track, counted in C by an
# sfu._fastpath.RxTally (sfu/fastpath/tally.c): packets (every one), and in the
# measurement window w_packets, w_bytes, frames (with a readable trailer), markers
# (packets ending a frame, trailer or not), first_seq/last_seq (trailer frame numbers),
# rtp_first/rtp_last (extended RTP sequence numbers).
Flow = _fastpath.RxFlow


@dataclass(slots=True)
class Rx:
    """Everything one participant measured as a subscriber."""

    flows: dict[str, Flow] = field(default_factory=dict)  # by subscribe-side mid
    e2e_ns: list[int] = field(default_factory=list)
    first_media_ns: int | None = None


def offered_ssrcs(sdp: str) -> dict[int, str | None]:
    """SSRC → mid of every media section of an offer (its ``a=ssrc`` lines); the RTX
    SSRCs (second of an ``a=ssrc-group:FID``) → ``None``: retransmissions and the
    SFU's padding probes have sequence numbers of their own, so counting them into
    the media's flow would make up losses (RxTally skips an SSRC mapped to None)."""
    out: dict[int, str | None] = {}
    for media in SessionDescription.parse(sdp).media:
        if not media.rtp.muxId:
            continue
        rtx = {g.items[1] for g in media.ssrc_group if g.semantic == "FID" and len(g.items) > 1}
        for ssrc in media.ssrc:
            out[ssrc.ssrc] = None if ssrc.ssrc in rtx else media.rtp.muxId
    return out


class SyntheticParticipant:
    def __init__(
        self,
        url: str,
        token: str,
        role: str,
        index: int,
        media: EncodedMedia,
        window: Window,
        audio_only: bool = False,
        tls_verify: bool = True,
        aiortc_publisher: bool = False,
        view: str | None = None,
        layer_sizes: tuple[tuple[int, int], ...] = (),
        shaped: bool = False,
    ) -> None:
        self.url = url
        self.token = token
        self.role = role
        self.index = index  # publisher index written into the trailer
        self.media = media
        self.window = window
        self.audio_only = audio_only
        self.aiortc_publisher = aiortc_publisher
        # simulcast (media.layers): publish the layers; ``view``: the layer our tiles ask
        # for (see VIEWS), reported with the page's `view` event; layer_sizes low → high
        self.simulcast = bool(media.layers) and not audio_only
        self.view = view
        self.layer_sizes = layer_sizes
        self._viewed: tuple[str, ...] = ()
        # behind a shaped link (--link): receive like a browser does for the SFU's
        # estimate (REMB, receiver reports with loss, NACKs), not only count
        self.shaped = shaped
        self._remb: aiortc_hooks.RembState | None = None  # the subscribe PC's estimator
        self._remb_pc: RTCPeerConnection | None = None
        self.runner: Any = None  # its bench.link.NetnsLoop
        self.timeline: list[Any] = []  # bench.generator.Generator.sample_shaped
        self.pid: str | None = None
        self.via = "room"  # how the token came: the room's links, an invite, or minted
        self.rx = Rx()
        self.pub: RTCPeerConnection | None = None
        self.sub: RTCPeerConnection | None = None
        self.tracks: list[ReplayTrack | PacedSender] = []
        self.errors: list[str] = []
        self.join_started_ns = 0
        self.mid_owner: dict[str, tuple[str, str]] = {}
        # what on_rtp routes by: SSRCs from the subscribe offers, and each SSRC's flow
        # (forgotten at every offer: a mid may have passed to another publisher)
        self._ssrc_mid: dict[int, str | None] = {}
        self._by_ssrc: dict[int, Flow | None] = {}
        # Per received packet, in C: count it, extend its sequence number and, on a
        # frame's last packet, read the trailer (sfu/fastpath/tally.c).
        self._on_rtp = _fastpath.RxTally(self.window, self.rx.e2e_ns, self._by_ssrc, self._learn)
        self._sub_lock = asyncio.Lock()
        self._welcome = asyncio.Event()
        self._rtc_config = CLIENT_CONFIG
        self._tasks: set[asyncio.Task[Any]] = set()
        self._grants: set[str] = set()
        # Behind a shaped link the signalling can drop for seconds (a flooded queue
        # holds TCP back past the server's 4 s ping limit); the page then reconnects
        # with its resume secret and keeps its seat and media (docs/protocol.md,
        # "Reconnecting"), so a shaped participant does too, at the page's pace.
        self.sio = socketio.AsyncClient(
            reconnection=shaped,
            reconnection_delay=0.4,
            reconnection_delay_max=1.5,
            randomization_factor=0.3,
            ssl_verify=tls_verify,
        )
        self._resume: str | None = None
        self.reconnects = 0
        self.sio.on("welcome", self._on_welcome)
        self.sio.on("subscribe.offer", self._on_offer)
        self.sio.on("error", self._on_error)
        self.sio.on("publish.layers", self._on_layers)
        self.sio.on("disconnect", self._on_disconnect)
        self.closing = False
        self.sio.on("connect_error", self._on_connect_error)
        self._refusal: dict[str, Any] | None = None

    # -- joining ------------------------------------------------------------------------

    async def join(self, started_ns: int | None = None) -> None:
        """Connect, wait for ``welcome``, publish. Raises on refusal or timeout."""
        self.join_started_ns = started_ns or time.monotonic_ns()
        url = self.url
        for hop in range(3):
            self._refusal = None
            try:
                await self.sio.connect(
                    url,
                    auth=self._auth,
                    transports=["websocket"],
                    socketio_path="socket.io",
                    wait_timeout=SIGNAL_TIMEOUT,
                )
                break
            except socketio.exceptions.ConnectionError:
                # A cluster node that does not serve the room names the one that does.
                # python-socketio hands over {"message": code, "data": {"error", ...}}.
                refusal = (self._refusal or {}).get("data") or {}
                if hop < 2 and refusal.get("error") == "wrong_node" and refusal.get("url"):
                    url = refusal["url"]
                    continue
                raise
        await asyncio.wait_for(self._welcome.wait(), SIGNAL_TIMEOUT)
        if "publish" in self._grants:
            await self._publish()

    def _auth(self) -> dict[str, str]:
        # called at every (re)connect: come back as the same participant once we have
        # a resume secret
        return {"token": self.token, **({"resume": self._resume} if self._resume else {})}

    async def _on_welcome(self, data: dict[str, Any]) -> None:
        if data.get("resumed"):
            self.reconnects += 1
        if isinstance(data.get("resume"), str):
            self._resume = data["resume"]
        you = data.get("you", {})
        self.pid = you.get("id")
        self._rtc_config = rtc_configuration(data.get("ice"))
        self._grants = {"publish", "subscribe"}  # the server enforces the real grants
        if you.get("state") == "waiting":
            self.errors.append("waiting_room")
        self._welcome.set()

    async def _on_disconnect(self, *reason: Any) -> None:
        # The bench does not reconnect (the page would): say that the run lost it.
        if not self.closing:
            self.errors.append(f"signalling lost ({reason[0] if reason else 'disconnect'})")

    async def _on_connect_error(self, data: Any) -> None:
        self._refusal = data if isinstance(data, dict) else None

    async def _on_error(self, data: Any) -> None:
        code = data.get("error") if isinstance(data, dict) else str(data)
        self.errors.append(str(code))

    async def _publish(self) -> None:
        self.pub = RTCPeerConnection(self._rtc_config)
        self.pub.on("connectionstatechange", self._publish_state)
        kinds = [("audio", self.media.audio)]
        if not self.audio_only and self.media.video:
            kinds.append(("video", self.media.video))
        paced: list[tuple[PacedSender, Any]] = []
        # The C send path writes to a host pair's UDP socket; a relay-only peer's media
        # must be wrapped for the TURN server by aioice, so it goes through aiortc's sender.
        via_aiortc = (
            self.aiortc_publisher
            or self._rtc_config.iceTransportPolicy is RTCIceTransportPolicy.RELAY
        )
        for kind, frames in kinds:
            if via_aiortc:
                track = ReplayTrack(kind, frames, self.index)
                sender = self.pub.addTrack(track)
                # A PLI/FIR relayed by the server restarts the replay at its key frame,
                # the way a live encoder answers it (aiortc's sender cannot: it only packs).
                sender._send_keyframe = track.request_keyframe  # type: ignore[method-assign]
                self.tracks.append(track)
                continue
            # aiortc negotiates and keeps RTCP; its encoder loop waits on a silent track
            # and bench.publisher sends the media.
            sender = self.pub.addTrack(aiortc_hooks.SilentTrack(kind))
            if kind == "video" and self.simulcast:
                rids = tuple(r for r, _, _ in SIMULCAST_LAYERS[: len(self.media.layers)])
                publisher = SimulcastSender(self.media.layers, rids, self.index)
            else:
                publisher = PacedSender(kind, frames, self.index)
            publisher.attach(sender)
            transceiver = next(t for t in self.pub.getTransceivers() if t.sender is sender)
            paced.append((publisher, transceiver))
            self.tracks.append(publisher)
        await self.pub.setLocalDescription(await self.pub.createOffer())
        offer = self.pub.localDescription.sdp
        simulcast = any(isinstance(p, SimulcastSender) for p, _ in paced)
        if simulcast:
            offer = simulcast_offer(offer, next(p.rids for p, _ in paced if p.kind == "video"))
        ack = await self.sio.call(
            "publish",
            {"type": "offer", "sdp": offer},
            timeout=SIGNAL_TIMEOUT,
        )
        if not isinstance(ack, dict) or not ack.get("ok"):
            raise RuntimeError(f"publish refused: {ack}")
        if simulcast and "a=simulcast:recv " not in ack["sdp"]:
            raise RuntimeError("the server's answer takes no simulcast (no a=simulcast:recv)")
        await self.pub.setRemoteDescription(RTCSessionDescription(sdp=ack["sdp"], type="answer"))
        for publisher, transceiver in paced:
            if isinstance(publisher, SimulcastSender):
                publisher.start_layers(transceiver, RID_EXT)
            else:
                publisher.start(transceiver)

    async def _on_layers(self, data: Any) -> None:
        # publish.layers: the layers someone receives; the page turns the others off.
        if isinstance(data, dict) and isinstance(data.get("active"), list):
            for t in self.tracks:
                if isinstance(t, SimulcastSender):
                    t.set_active({str(r) for r in data["active"]})

    async def _report_view(self) -> None:
        """The page's `view` event: one tile per video publisher, as big as the layer
        :attr:`view` asks for (sent when the set of video publishers changed)."""
        if self.view in (None, "top") or not self.layer_sizes:
            return
        pubs = tuple(sorted({p for p, kind in self.mid_owner.values() if kind == "video"}))
        if pubs == self._viewed:
            return
        self._viewed = pubs
        rids = [r for r, _, _ in SIMULCAST_LAYERS[: len(self.layer_sizes)]]
        tiles = []
        for j, pub in enumerate(pubs):
            k = (
                (self.index % 100 + j) % len(rids)
                if self.view == "mixed"
                else rids.index(self.view)
            )
            w, h = self.layer_sizes[k]
            tiles.append({"participant": pub, "visible": True, "width": w, "height": h})
        ack = await self.sio.call("view", {"tiles": tiles}, timeout=SIGNAL_TIMEOUT)
        if isinstance(ack, dict) and not ack.get("ok"):
            self.errors.append(f"view: {ack.get('error')}")

    def _publish_state(self) -> None:
        # Only RTCP arrives on the publish connection (receiver reports, REMB, PLI,
        # NACK): read it in C like the SFU's send-only connections, not through
        # asyncio's one-datagram reads, aioice's queue and the DTLS transport's task.
        if self.pub is not None and self.pub.connectionState == "connected":
            aiortc_hooks.read_in_c(self.pub)

    async def _on_offer(self, data: dict[str, Any]) -> None:
        # Answer in a task: an event handler must not hold up the client's reader.
        task = asyncio.ensure_future(self._answer(data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, data: dict[str, Any]) -> None:
        async with self._sub_lock:
            try:
                if self.sub is None:
                    self.sub = RTCPeerConnection(self._rtc_config)
                    self.sub.on("track", self._on_track)
                    if self.shaped:
                        task = asyncio.ensure_future(self._remb_with_reports(self.sub))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                for t in data.get("tracks", []):
                    self.mid_owner[t["mid"]] = (t["participant"], t["kind"])
                self._ssrc_mid.update(offered_ssrcs(data["sdp"]))
                self._by_ssrc.clear()
                await self.sub.setRemoteDescription(
                    RTCSessionDescription(sdp=data["sdp"], type="offer")
                )
                await self.sub.setLocalDescription(await self.sub.createAnswer())
                ack = await self.sio.call(
                    "subscribe.answer",
                    {"type": "answer", "sdp": self.sub.localDescription.sdp},
                    timeout=SIGNAL_TIMEOUT,
                )
                if isinstance(ack, dict) and not ack.get("ok"):
                    self.errors.append(str(ack.get("error")))
                await self._report_view()
            except Exception as exc:  # recorded and reported; the run goes on
                self.errors.append(f"subscribe: {type(exc).__name__}: {exc}")

    async def _remb_with_reports(self, pc: RTCPeerConnection) -> None:
        """Behind a shaped link: the connection's latest REMB again on the RTCP report
        timer (1 s nominal, varied over [0.5, 1.5] as RFC 3550 and aiortc), as Chromium
        puts its REMB into every regular report; aiortc sends one only when a packet
        with abs-send-time arrives (aiortc_hooks.send_latest_remb)."""
        while not self.closing and pc.connectionState not in ("closed", "failed"):
            await asyncio.sleep(0.5 + random.random())
            # one estimate for the connection (RembState), so one REMB per report
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video" and aiortc_hooks.send_latest_remb(
                    transceiver.receiver
                ):
                    break

    # -- measuring ----------------------------------------------------------------------

    def _on_track(self, track: Any) -> None:
        assert self.sub is not None
        transceiver = next(
            (t for t in self.sub.getTransceivers() if t.receiver.track is track), None
        )
        if transceiver is None:
            return
        # Count and timestamp only (account=False): no REMB, RTCP statistics or NACKs
        # from synthetic subscribers, so the generator stays cheap and an overloaded
        # generator does not make the server retransmit what it merely read late.
        # Behind a shaped link the SFU's estimate needs them: aiortc's receiver keeps
        # its REMB, receiver reports and NACKs, and every packet reaches _tap.
        if self.shaped:
            # one estimator for the connection, as a browser has (aiortc_hooks.RembState)
            if self._remb is None or self._remb_pc is not self.sub:
                self._remb, self._remb_pc = aiortc_hooks.RembState(), self.sub
            aiortc_hooks.tap_receiver(
                transceiver.receiver,
                self._tap,
                lambda codecs: None,
                shared_remb=self._remb,
            )
            return
        aiortc_hooks.tap_receiver(transceiver.receiver, self._tap, self._read_in_c, account=False)

    def _read_in_c(self, codecs: list[Any]) -> None:
        # The receiver has just started the C reader on the connection: have it hand
        # every RTP packet to on_rtp, which routes by SSRC itself, rather than through
        # aiortc's router and the receiver's handler to _tap (two Python calls fewer).
        assert self.sub is not None
        aiortc_hooks.read_in_c(self.sub, on_rtp=self._on_rtp)

    def _tap(self, packet: Any, codecs: dict[int, Any]) -> None:
        # Only where the C reader could not be installed: aiortc routed the packet; the
        # tally counts the C reader's packets, so give it one.
        if isinstance(packet, _fastpath.Packet):  # the C reader's own (aiortc_hooks)
            self._on_rtp(packet, 0)
            return
        arrived = aiortc_hooks.arrival_ns(packet)
        parsed = _fastpath.parse_rtp(packet.serialize(), 0, 0)
        if parsed is not None:
            parsed.arrival_ns = arrived
            self._on_rtp(parsed, 0)

    def _learn(self, packet: Any) -> Flow | None:
        """The flow of a packet from an SSRC not seen since the last offer, if known."""
        if packet.ssrc in self._ssrc_mid and self._ssrc_mid[packet.ssrc] is None:
            self._by_ssrc[packet.ssrc] = None  # RTX: not counted, not asked again
            return None
        mid = self._ssrc_mid.get(packet.ssrc) or packet.extensions.mid
        owner = self.mid_owner.get(mid) if mid else None
        if owner is None:
            return None
        flows = self.rx.flows
        flow = flows.get(mid)
        if flow is None or flow.publisher != owner[0]:
            flow = flows[mid] = Flow(owner[0], owner[1])
        self._by_ssrc[packet.ssrc] = flow
        if self.rx.first_media_ns is None:
            self.rx.first_media_ns = packet.arrival_ns
        return flow

    def received_from(self) -> set[str]:
        """Publishers this participant received at least one packet from."""
        return {f.publisher for f in self.rx.flows.values() if f.packets > 0}

    @property
    def sent_frames(self) -> int:
        return sum(t.sent for t in self.tracks)

    @property
    def send_drops(self) -> int:
        """Packets the publisher's socket did not take (the C publish path only)."""
        return sum(t.dropped for t in self.tracks if isinstance(t, PacedSender))

    # -- leaving ------------------------------------------------------------------------

    async def close(self) -> None:
        self.closing = True
        for track in self.tracks:
            if isinstance(track, PacedSender):
                await track.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            if self.sio.connected:
                await asyncio.wait_for(self.sio.call("leave", {}, timeout=5), 5)
        except Exception:
            pass
        try:
            await asyncio.wait_for(self.sio.disconnect(), 5)
        except Exception:
            pass
        for pc in (self.pub, self.sub):
            if pc is not None:
                try:
                    await asyncio.wait_for(pc.close(), 5)
                except Exception:
                    pass
