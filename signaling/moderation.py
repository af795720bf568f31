"""What a moderator may do to others: admit/deny from the waiting room, mute, remove,
lock, end for all (docs/protocol.md, "Counselling flows").

Every action checks the ``moderate`` grant of the acting participant itself, each time:
the page hides buttons, the server decides. Removing or denying someone revokes the
``jti`` of their token, so the same link (an invite included) is refused afterwards.
"""

from __future__ import annotations

import logging

from signaling.errors import InvalidPayload, NotFound, RoundtableError
from signaling.participant import Participant
from signaling.rooms import RoomHub
from signaling.tokens import TokenService

log = logging.getLogger(__name__)


class Moderation:
    def __init__(self, hub: RoomHub, tokens: TokenService) -> None:
        self._hub = hub
        self._tokens = tokens

    def _target(self, actor: Participant, pid: str) -> Participant:
        actor.require("moderate")
        room = self._hub.room(actor.claims.room)
        target = room.get(pid) if room is not None else None
        if target is None or not target.active:
            raise NotFound("not_found", "There is no such participant in this session.")
        return target

    async def admit(self, actor: Participant, pid: str) -> None:
        await self._hub.admit(self._target(actor, pid))

    async def deny(self, actor: Participant, pid: str) -> None:
        target = self._target(actor, pid)
        if target.admitted:
            raise InvalidPayload("invalid_payload", "This participant is not waiting.")
        log.info("room %s: %s denied %s", actor.claims.room, actor.id, target.id)
        await self._tokens.revoke(target.claims)
        await self._hub.expel(
            target, RoundtableError("lobby_denied", "You were not admitted to this session.")
        )

    async def mute(self, actor: Participant, pid: str, kind: str) -> None:
        target = self._target(actor, pid)
        if not target.admitted:
            raise InvalidPayload("invalid_payload", "This participant is still waiting.")
        log.info("room %s: %s muted %s of %s", actor.claims.room, actor.id, kind, target.id)
        self._hub.set_muted(target, kind, True)
        if self._hub.notifier is not None:
            await self._hub.notifier.send(target.sid, "moderation.muted", {"kind": kind})

    def unmute(self, participant: Participant, kind: str) -> None:
        """The muted person resumes; nobody can unmute someone else."""
        if not participant.admitted:
            raise InvalidPayload("invalid_payload", "You are not admitted to this session yet.")
        if participant.muted.get(kind):
            self._hub.set_muted(participant, kind, False)

    async def remove(self, actor: Participant, pid: str) -> None:
        target = self._target(actor, pid)
        if target is actor:
            raise InvalidPayload("invalid_payload", "Use 'leave' to leave the session.")
        log.info("room %s: %s removed %s", actor.claims.room, actor.id, target.id)
        # Revoked first: a reconnect racing the removal must already be refused.
        await self._tokens.revoke(target.claims)
        await self._hub.expel(
            target, RoundtableError("removed", "You were removed from this session.")
        )

    async def lock(self, actor: Participant, locked: bool) -> None:
        actor.require("moderate")
        await self._hub.set_locked(actor.claims.room, locked)

    async def end(self, actor: Participant) -> None:
        """End for all; the actor's own connection is dropped by the caller after the ack."""
        actor.require("moderate")
        log.info("room %s: %s ends the session", actor.claims.room, actor.id)
        await self._hub.end_room(actor.claims.room, spare=actor.sid)
