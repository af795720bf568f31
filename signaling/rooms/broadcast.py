"""What the rooms tell their participants: roster, waiting room, events to everyone
admitted or to the moderators."""

from __future__ import annotations

from typing import Any

from signaling.participant import Participant
from signaling.room import Room
from signaling.rooms.state import LiveRoom, Notifier


class Broadcast:
    """The telling half of ``RoomHub``."""

    # Set by ``RoomHub.__init__`` (signaling.rooms.registry).
    notifier: Notifier | None
    _rooms: dict[str, LiveRoom]

    async def _notify_all(self, room: Room, event: str, payload: dict[str, Any]) -> None:
        """Everyone in the room, the waiting room included: the end concerns them too."""
        if self.notifier is None:
            return
        for p in room.active():
            await self.notifier.send(p.sid, event, payload)

    async def broadcast_roster(self, room: Room) -> None:
        if self.notifier is None:
            return
        full = room.roster()
        for p in room.active():
            payload = full if p.admitted else {"participants": [p.public()]}
            await self.notifier.send(p.sid, "roster", payload)

    @staticmethod
    def _lobby(room: Room) -> dict[str, Any]:
        return {"waiting": [p.public() for p in room.waiting()]}

    async def broadcast_lobby(self, room: Room) -> None:
        """The waiting room, to the moderators only, on every change."""
        if self.notifier is None:
            return
        payload = self._lobby(room)
        for p in room.moderators():
            await self.notifier.send(p.sid, "lobby", payload)

    async def notify_admitted(
        self,
        room: Room,
        event: str,
        payload: dict[str, Any],
        *,
        but: Participant | None = None,
    ) -> None:
        if self.notifier is None:
            return
        for p in room.admitted():
            if p is not but:
                await self.notifier.send(p.sid, event, payload)

    async def notify_moderators(self, room_id: str, event: str, payload: dict[str, Any]) -> None:
        live = self._rooms.get(room_id)
        if live is None or self.notifier is None:
            return
        for p in live.room.moderators():
            await self.notifier.send(p.sid, event, payload)
