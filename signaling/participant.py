"""A participant's life in a room as an explicit state machine.

    waiting ──admit──► admitted ──media up──► connected
       │                  │  ▲                   │
       │                  │  └──media lost───────┘
       └──────────────────┴───────────────► left | removed   (terminal)

``admitted`` means the person passed the waiting room and may publish and subscribe;
``connected`` means their media connection to the SFU is up.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from signaling.errors import Forbidden
from signaling.tokens import TokenClaims


class ParticipantState(StrEnum):
    WAITING = "waiting"
    ADMITTED = "admitted"
    CONNECTED = "connected"
    LEFT = "left"
    REMOVED = "removed"


_TRANSITIONS: dict[ParticipantState, frozenset[ParticipantState]] = {
    ParticipantState.WAITING: frozenset(
        {ParticipantState.ADMITTED, ParticipantState.LEFT, ParticipantState.REMOVED}
    ),
    ParticipantState.ADMITTED: frozenset(
        {ParticipantState.CONNECTED, ParticipantState.LEFT, ParticipantState.REMOVED}
    ),
    ParticipantState.CONNECTED: frozenset(
        {ParticipantState.ADMITTED, ParticipantState.LEFT, ParticipantState.REMOVED}
    ),
    ParticipantState.LEFT: frozenset(),
    ParticipantState.REMOVED: frozenset(),
}


class IllegalTransition(Exception):
    pass


@dataclass(frozen=True, slots=True)
class TrackRef:
    id: str
    kind: str


@dataclass(slots=True)
class Participant:
    """One person in one room, bound to one Socket.IO connection (``sid``)."""

    claims: TokenClaims
    sid: str
    state: ParticipantState = ParticipantState.WAITING
    tracks: list[TrackRef] = field(default_factory=list)
    muted: dict[str, bool] = field(default_factory=lambda: {"audio": False, "video": False})
    # The video track shows a shared screen (the page says so: the SFU forwards it on the
    # camera's track, so the others cannot tell from the media).
    sharing: bool = False
    # When the hand went up (time.time()), None when it is down: the caseworker sees the order.
    hand_at: float | None = None
    joined_at: float = field(default_factory=time.monotonic)
    # What the person switched off themselves (shown to everyone; the moderator's mute
    # is ``muted``).
    self_muted: dict[str, bool] = field(default_factory=lambda: {"audio": False, "video": False})
    # From the page's own measurements (getStats): good | poor | lost.
    quality: str = "good"
    # Proves a reconnect is this very participant coming back (docs/protocol.md,
    # "Reconnecting"); only this connection's page ever sees it.
    resume_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # monotonic time its connection dropped; None while connected.
    away_since: float | None = None

    @property
    def id(self) -> str:
        return self.claims.sub

    @property
    def role(self) -> str:
        return self.claims.role

    @property
    def active(self) -> bool:
        return self.state not in (ParticipantState.LEFT, ParticipantState.REMOVED)

    @property
    def admitted(self) -> bool:
        return self.state in (ParticipantState.ADMITTED, ParticipantState.CONNECTED)

    def _move(self, to: ParticipantState) -> None:
        if to not in _TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.id}: {self.state} -> {to}")
        self.state = to

    def admit(self) -> None:
        self._move(ParticipantState.ADMITTED)

    def media_connected(self) -> bool:
        """The publish leg is up; False if the state did not change (already connected)."""
        if self.state is ParticipantState.ADMITTED:
            self._move(ParticipantState.CONNECTED)
            return True
        return False

    def media_lost(self) -> bool:
        if self.state is ParticipantState.CONNECTED:
            self._move(ParticipantState.ADMITTED)
            return True
        return False

    def leave(self) -> None:
        if self.active:
            self._move(ParticipantState.LEFT)

    def remove(self) -> None:
        if self.active:
            self._move(ParticipantState.REMOVED)

    def require(self, grant: str) -> None:
        """Refuse an action unless admitted and granted; the server, not the page, decides."""
        if not self.admitted:
            raise Forbidden("forbidden", "You are not admitted to this session yet.")
        if not self.claims.has(grant):
            raise Forbidden("forbidden", f"You do not have the {grant!r} right.")

    def public(self) -> dict[str, Any]:
        """The ``Participant`` object of docs/protocol.md."""
        return {
            "id": self.id,
            "role": self.role,
            "name": self.claims.name,
            "org": self.claims.org,
            "state": str(self.state),
            "tracks": [{"id": t.id, "kind": t.kind} for t in self.tracks],
            "muted": dict(self.muted),
            "self_muted": dict(self.self_muted),
            "connection": "reconnecting" if self.away_since is not None else "live",
            "quality": "lost" if self.away_since is not None else self.quality,
            "sharing": self.sharing,
            "hand": self.hand_at,
            "client_present": self.claims.client_present,
        }
