"""What the control plane needs from the media plane, without importing it.

``sfu/`` never imports ``signaling/`` and ``signaling/`` depends only on this protocol;
``server/app.py`` adapts ``sfu.router.Router`` to it and translates the router's events
into ``MediaSignal``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class OfferedTrack(Protocol):
    mid: str
    participant: str
    kind: str
    track: str


class SubscribeOffer(Protocol):
    """The SFU's offer for a subscribe connection and which transceiver carries what."""

    sdp: str
    tracks: Sequence[OfferedTrack]


class MediaRouter(Protocol):
    """What signalling calls on ``sfu.router.Router`` (structural: no import needed)."""

    async def publish(self, pid: str, offer_sdp: str, kinds: frozenset[str]) -> str: ...

    async def subscribe(
        self, pid: str, accept: Callable[[str, str], bool] | None = None
    ) -> SubscribeOffer | None: ...

    async def accept_answer(self, pid: str, answer_sdp: str) -> None: ...

    async def add_ice_candidate(
        self, pid: str, leg: str, candidate: dict[str, Any] | None
    ) -> None: ...

    def set_paused(self, pid: str, kind: str, paused: bool) -> None: ...

    def set_view(self, pid: str, views: dict[str, tuple[bool, int, int]]) -> None: ...

    def restart_ice(self, pid: str) -> None: ...

    def set_rank(self, pid: str, rank: int) -> None: ...

    async def remove(self, pid: str) -> None: ...

    async def close(self) -> None: ...

    def tracks(self, pid: str) -> Sequence[Any]: ...

    def silence(self, pid: str) -> float | None: ...


class SignalKind(StrEnum):
    TRACKS_CHANGED = "tracks_changed"
    RENEGOTIATION_NEEDED = "renegotiation_needed"
    CONNECTION_STATE = "connection_state"
    VIDEO_PAUSED = "video_paused"
    LAYERS = "layers"  # the publisher should send only these simulcast layers
    PUBLISH_RESTART = "publish_restart"  # the publish connection lost consent: restart ICE


@dataclass(frozen=True, slots=True)
class MediaSignal:
    """A router event, as the control plane sees it."""

    kind: SignalKind
    pid: str
    leg: str | None = None
    state: str | None = None
    publisher: str | None = None  # VIDEO_PAUSED: whose video
    paused: bool = False
    layers: tuple[str, tuple[str, ...]] | None = None  # LAYERS: (mid, rids to keep sending)


# How much a participant's picture matters to the SFU's per-subscriber allocator when a
# link is narrow (sfu.allocator: the caseworker's first, then whoever speaks).
RANK_CASEWORKER = 0
RANK_OTHER = 2

# router_factory(room_id, on_signal) -> router; on_signal is called from the event loop.
RouterFactory = Callable[[str, Callable[[MediaSignal], None]], MediaRouter]
