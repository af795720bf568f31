"""Text chat of a room: passed on to the people in the call, never kept.

A message exists on the server only while it is being passed on: it is not stored (not
in memory after the send, not in the state store, not in Redis) and never logged — the
log may say that someone chatted, by participant id, never what. Who takes part is the
``chat`` grant; a moderator can switch the chat off for the room (docs/protocol.md,
"Chat").
"""

from __future__ import annotations

import logging
import time
from typing import Any

from signaling.errors import Forbidden, RoundtableError, TooManyRequests
from signaling.participant import Participant
from signaling.ratelimit import TokenBucket
from signaling.rooms import RoomHub

log = logging.getLogger(__name__)

# A person types; a script floods. Five quick lines, then one every two seconds.
CHAT_BURST = 5.0
CHAT_RATE = 0.5
MAX_TRACKED = 10_000


class Chat:
    def __init__(self, hub: RoomHub) -> None:
        self._hub = hub
        # Per participant, so that a reconnect does not buy a fresh burst.
        self._buckets: dict[str, TokenBucket] = {}
        self._sent = 0

    def _allow(self, participant: Participant) -> bool:
        bucket = self._buckets.get(participant.id)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._buckets.clear()  # bounded memory; the worst case is one fresh burst
            bucket = self._buckets[participant.id] = TokenBucket(CHAT_RATE, CHAT_BURST)
        return bucket.allow()

    async def send(self, participant: Participant, text: str) -> str:
        """Pass ``text`` on to everyone admitted who may chat; returns the message id."""
        if not participant.admitted:
            raise Forbidden("forbidden", "You are not admitted to this session yet.")
        participant.require("chat")
        room = self._hub.room(participant.claims.room)
        if room is None:
            raise Forbidden("forbidden", "You are no longer in this session.")
        if not room.chat_enabled:
            raise RoundtableError("chat_disabled", "The chat is switched off in this session.")
        if not self._allow(participant):
            raise TooManyRequests("too_many_requests", "Too many chat messages; slow down.")
        self._sent += 1
        message: dict[str, Any] = {
            "id": f"m{self._sent}",
            "from": participant.id,
            "name": participant.claims.name,
            "role": participant.role,
            "text": text,
            "at": int(time.time() * 1000),
        }
        notifier = self._hub.notifier
        if notifier is not None:
            for p in room.admitted():
                # Someone without the grant neither writes nor reads.
                if p.claims.has("chat"):
                    await notifier.send(p.sid, "chat.message", message)
        return message["id"]

    async def set_enabled(self, actor: Participant, enabled: bool) -> None:
        actor.require("moderate")
        room = self._hub.room(actor.claims.room)
        if room is None:
            raise Forbidden("forbidden", "You are no longer in this session.")
        room.chat_enabled = enabled
        log.info("room %s: chat %s by %s", room.id, "on" if enabled else "off", actor.id)
        await self._hub.notify_admitted(room, "chat.state", {"enabled": enabled})
