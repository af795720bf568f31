"""A room's membership and lifecycle as an explicit state machine: open → closing → closed.

``closing`` exists because ending a room is not instantaneous: participants are told and
disconnected and the SFU router is closed; no one may join meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from signaling.errors import RoomClosed, RoomFull
from signaling.participant import Participant


class RoomState(StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(slots=True)
class Room:
    """The live participants of one session on this node."""

    id: str
    max_participants: int
    state: RoomState = RoomState.OPEN
    locked: bool = False
    chat_enabled: bool = True  # a moderator may switch the chat off (signaling/chat.py)
    participants: dict[str, Participant] = field(default_factory=dict)
    # Everyone ever admitted: participant id -> token id. Their own seat stays theirs
    # (a lock does not keep them out; a single-use invite is not spent again).
    seats: dict[str, str] = field(default_factory=dict)

    def active(self) -> list[Participant]:
        return [p for p in self.participants.values() if p.active]

    def admitted(self) -> list[Participant]:
        return [p for p in self.participants.values() if p.admitted]

    def waiting(self) -> list[Participant]:
        return [p for p in self.participants.values() if p.state == "waiting"]

    def moderators(self) -> list[Participant]:
        return [p for p in self.admitted() if p.claims.has("moderate")]

    def get(self, pid: str) -> Participant | None:
        return self.participants.get(pid)

    def check_capacity(self, pid: str) -> None:
        if self.state is not RoomState.OPEN:
            raise RoomClosed()
        # The same person reconnecting replaces itself, so it does not count twice.
        others = sum(1 for p in self.active() if p.id != pid)
        if others >= self.max_participants:
            raise RoomFull("room_full", f"This session is full ({self.max_participants}).")

    def add(self, participant: Participant) -> Participant | None:
        """Add a participant; returns the one it replaces (same ``sub`` reconnecting)."""
        self.check_capacity(participant.id)
        previous = self.participants.get(participant.id)
        if previous is not None and not previous.active:
            previous = None
        self.participants[participant.id] = participant
        return previous

    def discard(self, participant: Participant) -> bool:
        """Forget a participant that has left; False if another connection replaced it."""
        if self.participants.get(participant.id) is participant:
            del self.participants[participant.id]
            return True
        return False

    @property
    def empty(self) -> bool:
        return not self.active()

    def begin_close(self) -> bool:
        if self.state is RoomState.OPEN:
            self.state = RoomState.CLOSING
            return True
        return False

    def finish_close(self) -> None:
        self.state = RoomState.CLOSED

    def roster(self) -> dict[str, Any]:
        # The waiting room's people are not shown to the room (moderators get them in the
        # `lobby` event); everyone admitted sees everyone admitted.
        return {"participants": [p.public() for p in self.admitted()]}

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "locked": self.locked, "chat": self.chat_enabled}
