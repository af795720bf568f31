"""Who may enter and who receives whose media: the room's lock and capacity, and the
forwarding rule (a client's video only to holders of ``see_client``)."""

from __future__ import annotations

import math
import time
from typing import Any

from signaling.errors import RoundtableError
from signaling.participant import Participant
from signaling.room import Room
from signaling.rooms.state import LiveRoom, Notifier
from signaling.tokens import TokenClaims


class Policy:
    """The deciding half of ``RoomHub``: pure checks, no I/O."""

    # Set by ``RoomHub.__init__`` (signaling.rooms.registry).
    notifier: Notifier | None
    _rooms: dict[str, LiveRoom]

    def check_room(self, claims: TokenClaims) -> None:
        """Would ``join`` refuse for room reasons (full, closing, locked)? Checked before a
        single-use invite is spent, so a full room does not burn the invite."""
        live = self._rooms.get(claims.room)
        if live is not None:
            live.room.check_capacity(claims.sub)
            self._check_lock(live, claims)

    @staticmethod
    def _check_lock(live: LiveRoom, claims: TokenClaims) -> None:
        # Locked: nobody new gets in directly (the waiting room still takes people, but
        # nobody is admitted from it). The host and reconnects of people inside may.
        if not live.room.locked or claims.lobby or claims.has("moderate"):
            return
        current = live.room.get(claims.sub)
        if current is not None and current.active or claims.sub in live.admitted_elsewhere:
            return
        if live.room.seats.get(claims.sub) == claims.jti:
            return  # admitted before (reload, network gone for longer): their own seat
        raise RoundtableError("room_locked", "This session is locked; nobody new may enter.")

    def _accept(self, room: Room, subscriber: Participant):
        def accept(publisher_pid: str, kind: str) -> bool:
            publisher = room.get(publisher_pid)
            if publisher is None or not publisher.admitted or not subscriber.admitted:
                return False
            if not subscriber.claims.has("subscribe"):
                return False
            if (
                kind == "video"
                and publisher.role == "client"
                and not subscriber.claims.has("see_client")
            ):
                return False
            return True

        return accept

    @staticmethod
    def _host_status(live: LiveRoom) -> dict[str, Any] | None:
        if not live.host_away:
            return None
        deadline = min(d for d, _ in live.host_away.values())
        return {"present": False, "grace_seconds": max(0, math.ceil(deadline - time.monotonic()))}
