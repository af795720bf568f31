"""One router per room: publishers, subscribers and the forwarding between them.

The router knows participant ids, tracks and peer connections, never roles, names or
tokens: the control plane decides who may publish which kinds and who may receive
what, and tells the router through :meth:`Router.publish` (``kinds``) and
:meth:`Router.subscribe` (``accept``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from . import aiortc_hooks as hooks
from .allocator import RANK_OTHER, RANK_SPEAKER, is_speaking
from .errors import MediaError
from .forwarder import Forwarder, Leg
from .ports import MediaPorts
from .publisher import Publisher
from .simulcast import Layers
from .stats import RoomStats
from .subscriber import Accept, OfferedTrack, SubscribeOffer, Subscriber

log = logging.getLogger(__name__)

ALL_KINDS = frozenset({"audio", "video"})
LAYER_TICK = 0.1  # s between re-evaluating every video leg's layer
# s a voice keeps its video's rank after its audio last looked like speech: through the
# pauses between words (and a fake microphone's beeps) the speaker's rank would come and
# go every few ticks, and each time the allocator gives the layer to the other video
SPEAKER_HOLD = 3.0
# A layer nobody wants is still sent for this long before the publisher is asked to stop
# it, so a tile that shrinks and grows back (a layout flip) does not restart a layer.
LAYER_OFF_AFTER = 4.0


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """Media-plane settings, built by ``server/`` from the one typed config."""

    media_host: str | None = None
    ports: MediaPorts | None = None  # shared port, range, announced address; None: ephemeral
    video_queue: int = 256  # packets a subscriber leg may lag behind before it drops
    audio_queue: int = 64
    keyframe_interval: float = 0.3  # seconds between PLIs relayed to one publisher


@dataclass(frozen=True, slots=True)
class TrackInfo:
    id: str
    kind: str
    paused: bool


@dataclass(frozen=True, slots=True)
class LegInfo:
    """One video leg as metrics show it: who gets whose video, on which layer."""

    subscriber: str
    publisher: str
    layer: int | None  # None: paused (hidden tile or the allocator's cap)
    wanted: int | None  # what view and cap ask for (the layer may lag: key frame, bandwidth)
    packets: int
    octets: int


@dataclass(frozen=True, slots=True)
class DownlinkInfo:
    """One subscriber's downlink as metrics show it: what the allocator may spend."""

    subscriber: str
    estimate_bps: float
    sent_bps: float  # what the allocator chose to forward (headers included)


@dataclass(frozen=True, slots=True)
class TracksChanged:
    pid: str


@dataclass(frozen=True, slots=True)
class RenegotiationNeeded:
    pid: str


@dataclass(frozen=True, slots=True)
class PublishRestartNeeded:
    """``pid``'s publish connection lost ICE consent: its page should restart ICE on
    it (a re-offer with new credentials; the page offers there, so the SFU cannot)."""

    pid: str


@dataclass(frozen=True, slots=True)
class ConnectionState:
    pid: str
    leg: str  # "publish" | "subscribe"
    state: str


@dataclass(frozen=True, slots=True)
class VideoPaused:
    """``pid``'s connection cannot take ``publisher``'s video now (``paused``), or can
    again: its page shows the person's initials and says why."""

    pid: str
    publisher: str
    paused: bool


@dataclass(frozen=True, slots=True)
class LayersWanted:
    """``pid`` should send only these simulcast layers (rids) of its track ``mid``."""

    pid: str
    mid: str
    rids: tuple[str, ...]


RouterEvent = (
    TracksChanged
    | RenegotiationNeeded
    | PublishRestartNeeded
    | ConnectionState
    | VideoPaused
    | LayersWanted
)


class _Turns:
    """A participant id's lock and how many calls hold or wait for it (Router._turn)."""

    __slots__ = ("calls", "lock")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.calls = 0


class Router:
    """Forwards encoded media between the participants of one room."""

    def __init__(
        self,
        room_id: str,
        config: MediaConfig | None = None,
        on_event: Callable[[RouterEvent], None] | None = None,
    ) -> None:
        self.room_id = room_id
        self.config = config or MediaConfig()
        hooks.negotiate_opus_fec_dtx()
        self.stats = RoomStats()
        self.publishers: dict[str, Publisher] = {}
        self.subscribers: dict[str, Subscriber] = {}
        self._on_event = on_event or (lambda event: None)
        # pid -> (its lock, the calls holding or waiting for it): gone with the last one.
        self._locks: dict[str, _Turns] = {}
        self._ranks: dict[str, int] = {}
        self._spoke: dict[str, float] = {}  # publisher id -> when it last spoke (monotonic s)
        self.closed = False
        self._tick_task: asyncio.Task[None] | None = None
        # Per simulcast track id: when each layer was last wanted (monotonic s), and the
        # rids the publisher was last told to send.
        self._layer_wanted_at: dict[str, list[float]] = {}
        self._layer_active: dict[str, tuple[str, ...]] = {}
        self._early_views: dict[str, dict[str, tuple[bool, int, int]]] = {}

    # -- control-plane API --------------------------------------------------------

    async def publish(self, pid: str, offer_sdp: str, kinds: frozenset[str] = ALL_KINDS) -> str:
        """Apply ``pid``'s publish offer (first or re-offer); returns the SFU's answer."""
        self._check_open()
        async with self._turn(pid):
            self._check_open()  # closed while this call waited
            publisher = self.publishers.get(pid)
            if publisher is None:
                publisher = Publisher(
                    pid,
                    frozenset(kinds),
                    self.stats,
                    self.config.keyframe_interval,
                    ports=self.config.ports,
                    on_tracks_changed=lambda: self._tracks_changed(pid),
                    on_state=lambda state: self._emit(ConnectionState(pid, "publish", state)),
                    on_consent_lost=lambda: self._emit(PublishRestartNeeded(pid)),
                    downlink_bps=lambda: self._downlink_bps(pid),
                )
                self.publishers[pid] = publisher
            self._start_tick()
            try:
                return await publisher.negotiate(offer_sdp)
            except MediaError:
                if not publisher.forwarders and publisher.pc.remoteDescription is None:
                    await self.publishers.pop(pid).close()
                raise

    async def subscribe(self, pid: str, accept: Accept | None = None) -> SubscribeOffer | None:
        """Register ``pid`` as a subscriber and return an offer if its tracks changed.

        ``None`` means nothing to (re)negotiate now — no tracks yet, nothing changed, or an
        offer is still waiting for its answer (a new one is asked for after it).
        """
        self._check_open()
        async with self._turn(pid):
            self._check_open()
            subscriber = self.subscribers.get(pid)
            if subscriber is None:
                subscriber = Subscriber(
                    pid,
                    self.stats,
                    self.config.video_queue,
                    self.config.audio_queue,
                    ports=self.config.ports,
                    on_state=lambda state: self._emit(ConnectionState(pid, "subscribe", state)),
                    rank=self.rank,
                    on_paused=lambda publisher, paused: self._emit(
                        VideoPaused(pid, publisher, paused)
                    ),
                    on_renegotiate=lambda: self._emit(RenegotiationNeeded(pid)),
                )
                self.subscribers[pid] = subscriber
                subscriber.views.update(self._early_views.pop(pid, {}))
            if accept is not None:
                subscriber.accept = accept
            return await subscriber.offer(self._forwarders())

    async def accept_answer(self, pid: str, answer_sdp: str) -> None:
        self._check_open()
        subscriber = self.subscribers.get(pid)
        if subscriber is None:
            raise MediaError("no_offer", "There is no subscribe offer waiting for an answer.")
        async with self._turn(pid):
            due = await subscriber.accept_answer(answer_sdp)
        if due:
            self._emit(RenegotiationNeeded(pid))

    async def add_ice_candidate(self, pid: str, leg: str, candidate: dict | None) -> None:
        self._check_open()
        if leg == "publish":
            if pid in self.publishers:
                await self.publishers[pid].add_ice_candidate(candidate)
        elif leg == "subscribe":
            if pid in self.subscribers:
                await self.subscribers[pid].add_ice_candidate(candidate)
        else:
            raise MediaError("invalid_payload", "pc must be 'publish' or 'subscribe'.")

    def restart_ice(self, pid: str) -> None:
        """``pid`` lost its network: its next subscribe offer restarts ICE (new
        credentials, same DTLS and legs). Its publish leg restarts with its own re-offer."""
        self._check_open()
        subscriber = self.subscribers.get(pid)
        if subscriber is not None and subscriber.pc is not None:
            subscriber.restart_due = True
            self._emit(RenegotiationNeeded(pid))

    def set_paused(self, pid: str, kind: str, paused: bool) -> None:
        """Stop (or resume) forwarding ``pid``'s tracks of ``kind`` — e.g. a moderator mute."""
        publisher = self.publishers.get(pid)
        if publisher is None:
            return
        for fwd in publisher.forwarders.values():
            if fwd.kind == kind:
                fwd.paused = paused
                if not paused:
                    for leg in fwd.legs:
                        leg.on_keyframe_request()

    def set_rank(self, pid: str, rank: int) -> None:
        """How much ``pid``'s picture matters when a subscriber's link is narrow: the
        control plane gives the caseworker ``RANK_CASEWORKER`` (0); everyone else is
        ``RANK_OTHER`` (2) unless speaking (:meth:`rank`)."""
        self._ranks[pid] = rank

    def rank(self, publisher: str) -> int:
        """The allocator's order of videos: the caseworker, then whoever speaks (their
        Opus sends at full rate, not DTX), then the others."""
        rank = self._ranks.get(publisher, RANK_OTHER)
        if rank <= RANK_SPEAKER:
            return rank
        pub = self.publishers.get(publisher)
        audio = (
            next((f for f in pub.forwarders.values() if f.kind == "audio"), None)
            if pub is not None
            else None
        )
        now = time.monotonic()
        if is_speaking(audio):
            self._spoke[publisher] = now
        elif now - self._spoke.get(publisher, -1e9) >= SPEAKER_HOLD:
            return rank
        return RANK_SPEAKER

    def set_view(self, pid: str, views: Mapping[str, tuple[bool, int, int]]) -> None:
        """What ``pid``'s page shows, by publisher id: ``(visible, width, height)`` in
        device pixels. A hidden tile gets no video at all; a visible one the smallest
        layer that covers it (see :class:`sfu.forwarder.Leg`)."""
        subscriber = self.subscribers.get(pid)
        if subscriber is not None:
            subscriber.set_view(dict(views))
        else:  # the page reported before its first subscribe offer: keep it for then
            self._early_views.setdefault(pid, {}).update(views)

    def legs_of(self, pid: str) -> list[Leg]:
        """``pid``'s video legs: what the bandwidth allocator drives (``Leg.set_cap``)."""
        subscriber = self.subscribers.get(pid)
        return subscriber.video_legs() if subscriber is not None else []

    def video_legs(self) -> list[LegInfo]:
        """Every subscriber's video legs (counts as of the last fold, every 0.5 s)."""
        return [
            LegInfo(
                sub.pid,
                leg.track.publisher_id,
                leg.layer,
                leg.wanted_layer(),
                leg.packets,
                leg.octets,
            )
            for sub in self.subscribers.values()
            for leg in sub.video_legs()
            if leg.track is not None
        ]

    def downlinks(self) -> list[DownlinkInfo]:
        """Every subscriber's downlink estimate (sfu.downlink) and what is spent of it."""
        return [
            DownlinkInfo(sub.pid, sub.estimate.bps, sub.estimate.sent_bps)
            for sub in self.subscribers.values()
        ]

    def _downlink_bps(self, pid: str) -> float | None:
        """``pid``'s downlink estimate, which its publish feedback shares (sfu.twcc)."""
        sub = self.subscribers.get(pid)
        return sub.estimate.bps if sub is not None else None

    def tracks(self, pid: str) -> list[TrackInfo]:
        publisher = self.publishers.get(pid)
        if publisher is None:
            return []
        return [
            TrackInfo(id=f.track_id, kind=f.kind, paused=f.paused)
            for f in publisher.forwarders.values()
            if f.ready
        ]

    def silence(self, pid: str) -> float | None:
        """Seconds since anything last came from ``pid``'s browser over the media: RTP
        of any track it publishes, RTCP on the connection it receives on. Media keeps
        coming from a browser whose page is too busy to answer signalling pings, and
        stops at once when its network goes: the control plane uses this to tell a cut
        from a slow page.

        ``None`` (do not judge by media) unless something is bound to arrive at least
        about once a second: an audio track it publishes that is not muted by the
        moderator (Opus with DTX still sends every 400 ms), or a video being forwarded
        to it whose source is flowing (its receiver reports come about every second; an
        attached leg whose camera is off gets none, and reports on it stop). Without that - audio
        received only (RTCP every ~5 s), a camera switched off, a muted track (its
        packets are not even looked at) - a quiet second proves nothing."""
        ages: list[float] = []
        bound = False
        publisher = self.publishers.get(pid)
        if publisher is not None:
            for fwd in publisher.forwarders.values():
                bound = bound or (fwd.kind == "audio" and not fwd.paused)
            latest = max(
                (layer.last_ns for fwd in publisher.forwarders.values() for layer in fwd.layers),
                default=0,
            )
            if latest:
                ages.append((time.perf_counter_ns() - latest) / 1e9)
        subscriber = self.subscribers.get(pid)
        if subscriber is not None:
            now_ns = time.perf_counter_ns()
            bound = bound or any(
                leg.source is not None and leg.source.flowing(now_ns)
                for leg in subscriber.video_legs()
            )
            if subscriber.estimate.heard_at is not None:
                ages.append(time.monotonic() - subscriber.estimate.heard_at)
        if not bound or not ages:
            return None
        return max(0.0, min(ages))

    async def remove(self, pid: str) -> None:
        """Drop everything of ``pid``: its media stops reaching anyone at once.

        Waits for a publish or subscribe of ``pid`` already under way (their connections
        are gathering sockets): closed in the middle, a connection would go on gathering
        into sockets nobody closes, and a call queued behind it would register a new
        one after the removal. A call made after this one starts afresh (the same
        person's new page after a seat takeover)."""
        async with self._turn(pid):
            publisher = self.publishers.pop(pid, None)
            subscriber = self.subscribers.pop(pid, None)
            if publisher is not None:
                gone = {f.track_id for f in publisher.forwarders.values()}
                for other in self.subscribers.values():
                    other.drop_source(gone)
                await publisher.close()
            if subscriber is not None:
                await subscriber.close()
            self._ranks.pop(pid, None)
            self._spoke.pop(pid, None)
            self._early_views.pop(pid, None)
            if publisher is not None:
                self._tracks_changed(pid)

    async def close(self) -> None:
        self.closed = True
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
            self._tick_task = None
        # Each after its calls under way (remove); those still waiting find it closed.
        for pid in list(self.publishers) + list(self.subscribers):
            await self.remove(pid)

    # -- internals ---------------------------------------------------------------------

    def _start_tick(self) -> None:
        if self._tick_task is None and not self.closed:
            self._tick_task = asyncio.ensure_future(self._tick())

    def _has_layers(self) -> bool:
        return any(
            isinstance(fwd, Layers)
            for p in self.publishers.values()
            for fwd in p.forwarders.values()
        )

    async def _tick(self) -> None:
        # Only simulcast tracks need the tick (their layers start and stop on the
        # publisher's side); a single-layer leg's layer changes only with its view or
        # cap, which update it themselves. Without one the task ends, so a room without
        # simulcast costs no wake-up every LAYER_TICK (issue 16); a new track's
        # _tracks_changed starts it again.
        while True:
            await asyncio.sleep(LAYER_TICK)
            try:
                self.update_layers()
            except Exception:
                log.exception("router %s: layer update failed", self.room_id)
            if not self._has_layers():
                self._tick_task = None
                return

    def update_layers(self) -> None:
        """Move every video leg towards its wanted layer, and tell publishers which
        layers somebody wants (the others stop after a while)."""
        wanted: dict[str, set[int]] = {}
        for subscriber in self.subscribers.values():
            for leg in subscriber.video_legs():
                if leg.track is None or len(leg.track.layers) < 2:
                    continue  # one layer: nothing the tick could move (see _tick)
                leg.update_layer()
                if leg.track is not None:
                    # Kept: what the leg wants and what it receives now (when the wanted
                    # layer is not sent, e.g. the publisher's bandwidth does not reach
                    # it, the leg stays on a lower one, which must not be stopped).
                    for layer in (leg.wanted_layer(), leg.layer):
                        if layer is not None:
                            wanted.setdefault(leg.track.track_id, set()).add(layer)
        now = time.monotonic()
        live: set[str] = set()
        for publisher in self.publishers.values():
            for mid, fwd in publisher.forwarders.items():
                if isinstance(fwd, Layers):
                    live.add(fwd.track_id)
                    self._publisher_layers(publisher.pid, mid, fwd, wanted.get(fwd.track_id), now)
        for track_id in set(self._layer_wanted_at) - live:
            del self._layer_wanted_at[track_id]
            self._layer_active.pop(track_id, None)

    def _publisher_layers(
        self, pid: str, mid: str, track: Layers, wanted: set[int] | None, now: float
    ) -> None:
        n = len(track.layers)
        at = self._layer_wanted_at.setdefault(track.track_id, [now] * n)
        # The lowest layer always: a new subscriber's first picture, and what every leg
        # can fall back to at once while a higher layer starts again.
        for i in {0} | {min(w, n - 1) for w in wanted or ()}:
            at[i] = now
        rids = tuple(track.layers[i].rid or "" for i in range(n) if now - at[i] < LAYER_OFF_AFTER)
        if rids != self._layer_active.get(track.track_id, track.rids):
            self._layer_active[track.track_id] = rids
            self._emit(LayersWanted(pid, mid, rids))

    def _forwarders(self) -> list[Forwarder | Layers]:
        return [f for p in self.publishers.values() for f in p.forwarders.values()]

    def _tracks_changed(self, pid: str) -> None:
        if self.closed:
            return
        if self._has_layers():
            self._start_tick()
        self._emit(TracksChanged(pid))
        for other in self.subscribers:
            if other != pid:
                self._emit(RenegotiationNeeded(other))

    def _emit(self, event: RouterEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("router %s: event handler failed for %s", self.room_id, event)

    @contextlib.asynccontextmanager
    async def _turn(self, pid: str) -> AsyncIterator[None]:
        """The calls for one participant id (publish, subscribe, remove) take turns. Its
        lock lives while a call holds or waits for it: dropped while one still waits, a
        call made then would get a new lock and not wait its turn; kept for good, a room
        held one per id that ever joined (every reconnect and takeover a new one)."""
        turns = self._locks.get(pid)
        if turns is None:
            turns = self._locks[pid] = _Turns()
        turns.calls += 1
        try:
            async with turns.lock:
                yield
        finally:
            turns.calls -= 1
            if turns.calls == 0:
                del self._locks[pid]

    def _check_open(self) -> None:
        if self.closed:
            raise MediaError("room_closed", "This room's media router is closed.")


__all__ = [
    "ALL_KINDS",
    "ConnectionState",
    "LayersWanted",
    "LegInfo",
    "MediaConfig",
    "OfferedTrack",
    "PublishRestartNeeded",
    "RenegotiationNeeded",
    "Router",
    "RouterEvent",
    "SubscribeOffer",
    "TrackInfo",
    "TracksChanged",
    "VideoPaused",
]
