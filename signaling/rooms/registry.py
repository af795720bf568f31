"""The rooms of this node: membership, their SFU routers and the tasks they own.

The hub (``RoomHub``, assembled here from ``policy``, ``broadcast`` and
``negotiation``) is transport-agnostic: it talks to clients through the ``Notifier`` it is
given when made (``signaling.socket.SocketNotifier``) and to the media plane through a
``MediaRouter`` per room, created
lazily on the first join and closed when the room empties or ends. Every task it starts
belongs to a room and is cancelled and awaited when that room is torn down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import Coroutine
from typing import Any

from signaling.deadline import Deadline, iso, run_clock
from signaling.errors import Forbidden, InvalidPayload, RoundtableError
from signaling.media import RouterFactory
from signaling.participant import Participant, ParticipantState
from signaling.room import Room, RoomState
from signaling.rooms.broadcast import Broadcast
from signaling.rooms.negotiation import Negotiator
from signaling.rooms.policy import Policy
from signaling.rooms.state import ENDED_AT_LEAST_SECONDS, LiveRoom, NegotiationState, Notifier
from signaling.store import RoomRecord, StateStore
from signaling.tokens import TokenClaims
from signaling.turn import IceServers, TurnSettings

log = logging.getLogger(__name__)


class RoomHub(Policy, Broadcast, Negotiator):
    """Registry and lifecycle of this node's rooms: joins, leaves, admissions, grace
    timers, the session clock, teardown; the other concerns live in its bases."""

    def __init__(
        self,
        store: StateStore,
        router_factory: RouterFactory,
        notifier: Notifier | None = None,
        *,
        max_participants: int = 12,
        host_grace_seconds: float = 120.0,
        reconnect_grace_seconds: float = 60.0,
        ice_servers: IceServers | None = None,
        end_warning_seconds: float = 300.0,
        max_extend_seconds: float = 240 * 60,
    ) -> None:
        self._store = store
        self._end_warning = end_warning_seconds
        self._max_extend = max_extend_seconds
        self._ice = ice_servers or IceServers(TurnSettings())
        self._host_grace = host_grace_seconds
        self._reconnect_grace = reconnect_grace_seconds
        self._router_factory = router_factory
        self.notifier: Notifier | None = notifier
        self._max_participants = max_participants
        self._rooms: dict[str, LiveRoom] = {}

    @property
    def reconnect_grace(self) -> float:
        """How long a dropped participant keeps its seat (docs/protocol.md, "Reconnecting")."""
        return self._reconnect_grace

    def snapshot(self) -> tuple[int, dict[str, int]]:
        by_state: dict[str, int] = {}
        for live in self._rooms.values():
            for p in live.room.active():
                by_state[str(p.state)] = by_state.get(str(p.state), 0) + 1
        return sum(1 for lr in self._rooms.values() if not lr.room.empty), by_state

    def rooms(self) -> list[str]:
        """Ids of the rooms this node serves now (their leases are renewed)."""
        return list(self._rooms)

    def room(self, room_id: str) -> Room | None:
        live = self._rooms.get(room_id)
        return live.room if live else None

    def present(self, claims: TokenClaims) -> bool:
        """Is this very token's participant still in its room on this node?

        A single-use invite reconnecting (reload, network change) while its participant is
        still in the room replaces the old connection instead of counting as a second use.
        """
        live = self._rooms.get(claims.room)
        current = live.room.get(claims.sub) if live is not None else None
        return current is not None and current.active and current.claims.jti == claims.jti

    async def present_anywhere(self, claims: TokenClaims) -> bool:
        """``present`` here, or inside when the room's previous node stopped (failover)."""
        if self.present(claims):
            return True
        if not claims.invite or claims.room in self._rooms:
            return False
        return claims.jti in (await self._store.live_state(claims.room)).inside

    @staticmethod
    async def _remember(write: Coroutine[Any, Any, None]) -> None:
        """Copy live state to the store for a successor node; a store that cannot be
        reached (Redis down) must not stop the call, it only weakens a later failover."""
        try:
            await write
        except Exception as exc:
            log.warning("live state not stored: %s", type(exc).__name__)

    def seated_before(self, claims: TokenClaims) -> bool:
        """Was this very token's participant admitted in this room already? Then coming
        back (after a reload or a long network cut) does not spend its invite again."""
        live = self._rooms.get(claims.room)
        return live is not None and live.room.seats.get(claims.sub) == claims.jti

    def _admit(self, live: LiveRoom, participant: Participant) -> None:
        participant.admit()
        live.room.seats[participant.id] = participant.claims.jti

    async def join(self, claims: TokenClaims, sid: str, *, takeover: bool = False) -> Participant:
        """Add a verified participant; admitted at once unless its token says lobby.

        A seat in use (its connection live) is not taken over by a second device or tab
        with the same link: that is refused (``seat_taken``) and the moderators are told.
        Taking it over needs ``takeover`` (the page proved with the seat's resume secret
        that it is the same person, e.g. after a reload), or the seat's connection to be
        gone (``reconnecting``).

        The seat is taken in one step with no ``await`` inside: the same link joined many
        times at once must leave exactly one participant, each earlier connection moved to
        ``left`` before anyone else can see it. Telling the replaced connections happens
        afterwards.
        """
        record = await self._store.get_room(claims.room)
        if record is None:
            # A token signed with our secret (e.g. from `roundtable token`) is authority
            # enough to open its room; the record lets other nodes see the room exists.
            now = int(time.time())
            record = RoomRecord(claims.room, now, claims.exp)
            await self._store.put_room(record)
        # A room new on this node may have lived on another one (failover, drain): its
        # lock and who was admitted come along.
        saved = (
            await self._store.live_state(claims.room) if claims.room not in self._rooms else None
        )
        # -- from here to the seat: no await --
        live = self._rooms.get(claims.room)
        if live is None:
            live = LiveRoom(Room(claims.room, self._max_participants))
            if saved is not None:
                live.room.locked = saved.locked
                live.admitted_elsewhere = set(saved.admitted)
            self._rooms[claims.room] = live
        if live.deadline is None:
            live.deadline = Deadline(float(record.expires_at))
            self._spawn(live, self._session_clock(live, live.deadline))
        participant = Participant(claims=claims, sid=sid)
        try:
            self._check_lock(live, claims)
            current = live.room.get(claims.sub)
            if (
                current is not None
                and current.active
                and current.away_since is None
                and not takeover
            ):
                raise RoundtableError(
                    "seat_taken",
                    "This link is already in use in the session on another device.",
                )
            previous = live.room.add(participant)
            was_admitted = (
                previous is not None and previous.admitted
            ) or participant.id in live.admitted_elsewhere
        except RoundtableError:
            if live.room.empty and not live.tasks:
                self._rooms.pop(claims.room, None)
            raise
        if previous is not None:
            previous.leave()
        live.negotiations[participant.id] = NegotiationState()
        # A reload of someone already admitted does not send them back to the waiting room.
        if not claims.lobby or was_admitted or live.room.seats.get(claims.sub) == claims.jti:
            self._admit(live, participant)
        away = live.host_away.pop(participant.id, None)
        grace = live.reconnecting.pop(participant.id, None)
        if grace is not None:
            grace.cancel()
        # -- seated; now tell whoever needs to know --
        if participant.admitted:
            await self._remember(self._store.add_admitted(claims.room, participant.id, claims.exp))
        if claims.invite:
            await self._remember(self._store.set_inside(claims.room, claims.jti, True, claims.exp))
        if previous is not None:
            # Same person again (reload, second tab): the newer connection wins.
            log.info(
                "room %s: participant %s replaced connection %s",
                claims.room,
                previous.id,
                previous.sid,
            )
            await self._forget_media(live, previous.id)
            if self.notifier:
                await self.notifier.drop(
                    previous.sid, RoundtableError("replaced", "You joined from another window.")
                )
        if away is not None:
            away[1].cancel()
            log.info("room %s: host %s is back", claims.room, participant.id)
            await self.notify_admitted(
                live.room, "host.status", {"present": True, "grace_seconds": 0}, but=participant
            )
        log.info(
            "room %s: participant %s (%s) joined as %s",
            claims.room,
            participant.id,
            claims.role,
            participant.state,
        )
        return participant

    def welcome(self, participant: Participant) -> dict[str, Any]:
        live = self._rooms[participant.claims.room]
        # A credential per welcome: every (re)connect gets a fresh one, and one that ran out
        # is replaced only by connecting again, which a removed participant's revoked
        # token cannot do.
        ice = self._ice.for_participant(participant.id, participant.claims.exp)
        room = live.room.public()
        if live.deadline is not None:
            room["ends_at"] = iso(int(live.deadline.ends_at))
        return {"you": participant.public(), "room": room, "ice": ice}

    def refresh_ice(self, participant: Participant) -> dict[str, Any]:
        """New TURN credentials for someone in the call (``ice.refresh``), e.g. before an
        ICE restart on a live connection.

        A live connection lasts until the session's end, whatever the link's ``exp`` (which
        bounds joining), so this credential runs to the session's end (at most the TTL and
        24 h). Only admitted participants get one: a removed, denied or departed
        participant is no longer in the room, and someone waiting has no media.
        """
        live = self._live(participant)
        if not participant.admitted:
            raise Forbidden("forbidden", "Only participants in the call get TURN credentials.")
        until = participant.claims.exp
        if live.deadline is not None:
            until = int(live.deadline.ends_at)
        return self._ice.for_participant(participant.id, until)

    async def _session_clock(self, live: LiveRoom, deadline: Deadline) -> None:
        async def warn() -> None:
            log.info("room %s: session ends in %d s", live.room.id, deadline.seconds_left())
            await self._notify_all(live.room, "session.ending", self._end_payload(deadline))

        async def end() -> None:
            log.info("room %s: the session's time is over", live.room.id)
            await self.end_room(
                live.room.id,
                reason=RoundtableError("session_expired", "The session's time is over."),
            )

        await run_clock(deadline, self._end_warning, warn, end)

    @staticmethod
    def _end_payload(deadline: Deadline) -> dict[str, Any]:
        return {"ends_at": iso(int(deadline.ends_at)), "seconds_left": deadline.seconds_left()}

    async def extend(self, participant: Participant, minutes: int) -> dict[str, Any]:
        """Move the session's end ``minutes`` later, to at most the operator's session
        length (``ROUNDTABLE_ROOM_MINUTES``) from now. Tokens keep their ``exp``: the
        extension keeps the call going, it does not let expired links join again."""
        participant.require("moderate")
        live = self._live(participant)
        deadline = live.deadline
        assert deadline is not None
        now = time.time()
        ends_at = max(deadline.ends_at, now) + minutes * 60
        if ends_at > now + self._max_extend:
            raise InvalidPayload(
                "invalid_payload",
                f"A session may run at most {round(self._max_extend / 60)} minutes from now.",
            )
        record = await self._store.get_room(live.room.id)
        created = record.created_at if record is not None else int(now)
        await self._store.put_room(RoomRecord(live.room.id, created, int(ends_at)))
        deadline.move(ends_at)
        log.info(
            "room %s: %s extended the session by %d min", live.room.id, participant.id, minutes
        )
        payload = self._end_payload(deadline)
        await self._notify_all(live.room, "session.extended", payload)
        return payload

    async def start(self, participant: Participant) -> None:
        """After ``welcome``: tell the room, and offer what there is to receive."""
        live = self._rooms.get(participant.claims.room)
        if live is None or not participant.active:
            return
        await self.broadcast_roster(live.room)
        if participant.state is ParticipantState.WAITING:
            await self.broadcast_lobby(live.room)
        elif participant.admitted:
            await self._entered(live, participant)

    async def _entered(self, live: LiveRoom, participant: Participant) -> None:
        """Someone is in the room proper (joined directly or admitted from the lobby)."""
        if self.notifier is not None:
            if participant.claims.has("moderate"):
                await self.notifier.send(participant.sid, "lobby", self._lobby(live.room))
            status = self._host_status(live)
            if status is not None:
                await self.notifier.send(participant.sid, "host.status", status)
        await self._renegotiate(live, participant.id)

    async def admit(self, participant: Participant) -> None:
        """Let a waiting participant into the room (a moderator's ``lobby.admit``)."""
        live = self._live(participant)
        if participant.state is not ParticipantState.WAITING:
            raise InvalidPayload("invalid_payload", "This participant is not waiting.")
        if live.room.locked:
            raise RoundtableError("room_locked", "The session is locked; unlock it to admit.")
        self._admit(live, participant)
        log.info("room %s: participant %s admitted", live.room.id, participant.id)
        claims = participant.claims
        await self._remember(self._store.add_admitted(claims.room, participant.id, claims.exp))
        if self.notifier is not None:
            await self.notifier.send(participant.sid, "admitted", {})
        await self.broadcast_roster(live.room)
        await self.broadcast_lobby(live.room)
        await self._entered(live, participant)

    async def set_locked(self, room_id: str, locked: bool) -> None:
        live = self._rooms.get(room_id)
        if live is None:
            return
        live.room.locked = locked
        log.info("room %s: %s", room_id, "locked" if locked else "unlocked")
        until = int(time.time()) + ENDED_AT_LEAST_SECONDS
        await self._remember(self._store.set_locked(room_id, locked, until))
        await self.notify_admitted(live.room, "room.state", {"locked": locked})

    def set_muted(self, participant: Participant, kind: str, muted: bool) -> None:
        """Stop (or resume) forwarding a participant's ``kind``; the page cannot override."""
        live = self._live(participant)
        participant.muted[kind] = muted
        if live.router is not None:
            live.router.set_paused(participant.id, kind, muted)
        self._spawn(live, self.broadcast_roster(live.room))

    async def dropped(self, participant: Participant) -> None:
        """The connection went away without ``leave``: the participant stays in the call
        as ``reconnecting`` for the reconnect grace, media kept for an ICE restart
        (docs/protocol.md, "Reconnecting"); then it is gone (:meth:`disconnected`)."""
        live = self._rooms.get(participant.claims.room)
        if (
            live is None
            or self._reconnect_grace <= 0
            or not participant.active
            or live.room.get(participant.id) is not participant
        ):
            await self.disconnected(participant)
            return
        participant.away_since = time.monotonic()
        old = live.reconnecting.pop(participant.id, None)
        if old is not None:
            old.cancel()
        live.reconnecting[participant.id] = self._spawn(
            live, self._reconnect_expiry(live, participant)
        )
        log.info(
            "room %s: participant %s reconnecting, grace %.0f s",
            live.room.id,
            participant.id,
            self._reconnect_grace,
        )
        await self.broadcast_roster(live.room)

    async def _reconnect_expiry(self, live: LiveRoom, participant: Participant) -> None:
        await asyncio.sleep(self._reconnect_grace)
        if participant.away_since is None or live.room.get(participant.id) is not participant:
            return
        live.reconnecting.pop(participant.id, None)
        log.info("room %s: participant %s did not come back", live.room.id, participant.id)
        await self.notify_admitted(
            live.room, "participant.gone", {"id": participant.id, "reason": "connection_lost"}
        )
        await self.disconnected(participant)

    def resume(self, claims: TokenClaims, secret: str, sid: str) -> tuple[Participant, str] | None:
        """Bind a reconnecting page to its participant again: same id, admission, rights
        and media (the page restarts ICE). ``(participant, previous sid)``, or None when
        the secret does not belong to this token's participant in its room."""
        live = self._rooms.get(claims.room)
        participant = live.room.get(claims.sub) if live is not None else None
        if (
            participant is None
            or not participant.active
            or participant.claims.jti != claims.jti
            or not hmac.compare_digest(secret, participant.resume_secret)
        ):
            return None
        assert live is not None
        previous_sid, participant.sid = participant.sid, sid
        participant.away_since = None
        grace = live.reconnecting.pop(participant.id, None)
        if grace is not None:
            grace.cancel()
        log.info("room %s: participant %s resumed", live.room.id, participant.id)
        return participant, previous_sid

    def owns_seat(self, claims: TokenClaims, secret: str) -> bool:
        """Does ``secret`` prove this token's participant (e.g. a reloaded page)?"""
        live = self._rooms.get(claims.room)
        participant = live.room.get(claims.sub) if live is not None else None
        return (
            participant is not None
            and participant.active
            and participant.claims.jti == claims.jti
            and hmac.compare_digest(secret, participant.resume_secret)
        )

    async def back(self, participant: Participant) -> None:
        """After the ``welcome`` of a resumed connection: everyone sees it live again;
        the page restarts ICE on its own legs."""
        live = self._rooms.get(participant.claims.room)
        if live is None or not participant.active:
            return
        await self.broadcast_roster(live.room)
        if self.notifier is not None and participant.admitted:
            if participant.claims.has("moderate"):
                await self.notifier.send(participant.sid, "lobby", self._lobby(live.room))
            status = self._host_status(live)
            if status is not None:
                await self.notifier.send(participant.sid, "host.status", status)
            neg = live.negotiations.get(participant.id)
            if neg is not None and neg.awaiting_answer and neg.last_offer is not None:
                await self.notifier.send(participant.sid, "subscribe.offer", neg.last_offer)

    def spawn_in(self, room_id: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` owned by the room (cancelled with it); dropped if it is not here."""
        live = self._rooms.get(room_id)
        if live is None:
            coro.close()
            return
        self._spawn(live, coro)

    def set_self_muted(self, participant: Participant, kind: str, muted: bool) -> None:
        live = self._live(participant)
        if participant.self_muted.get(kind) != muted:
            participant.self_muted[kind] = muted
            self._spawn(live, self.broadcast_roster(live.room))

    async def disconnected(self, participant: Participant) -> None:
        """The connection went away without ``leave``: for the host, a grace period."""
        live = self._rooms.get(participant.claims.room)
        hosting = (
            live is not None
            and self._host_grace > 0
            and participant.role == "caseworker"
            and participant.admitted
            and live.room.state is RoomState.OPEN
            and live.room.get(participant.id) is participant
            and any(p.id != participant.id for p in live.room.active())
            # Another caseworker still inside keeps hosting.
            and not any(
                p.role == "caseworker" and p.id != participant.id for p in live.room.admitted()
            )
        )
        await self.leave(participant)
        if not hosting or live is None or self._rooms.get(live.room.id) is not live:
            return
        deadline = time.monotonic() + self._host_grace
        task = self._spawn(live, self._host_grace_expiry(live, participant.id, deadline))
        live.host_away[participant.id] = (deadline, task)
        log.info(
            "room %s: host %s dropped, grace %.0f s", live.room.id, participant.id, self._host_grace
        )
        await self.notify_admitted(
            live.room,
            "host.status",
            {"present": False, "grace_seconds": math.ceil(self._host_grace)},
        )

    async def _host_grace_expiry(self, live: LiveRoom, pid: str, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        if live.host_away.get(pid, (None,))[0] != deadline:
            return
        log.info("room %s: host %s did not come back; ending the session", live.room.id, pid)
        await self.end_room(live.room.id)

    async def set_presence(
        self, participant: Participant, event: str, payload: dict[str, Any]
    ) -> None:
        """``screen.share`` / ``hand``: what the others should see of someone, in the roster."""
        if not participant.admitted:
            raise Forbidden("forbidden", "You are not admitted to this session yet.")
        live = self._live(participant)
        if event == "screen.share":
            participant.require("screen")
            changed = participant.sharing != payload["sharing"]
            participant.sharing = payload["sharing"]
        else:
            raised = payload["raised"]
            changed = (participant.hand_at is not None) != raised
            if changed:
                participant.hand_at = time.time() if raised else None
        if changed:
            await self.broadcast_roster(live.room)

    async def leave(
        self,
        participant: Participant,
        state: ParticipantState = ParticipantState.LEFT,
        *,
        forfeit: bool = False,
    ) -> None:
        live = self._rooms.get(participant.claims.room)
        if live is not None and (forfeit or state is ParticipantState.REMOVED):
            if live.room.seats.get(participant.id) == participant.claims.jti:
                del live.room.seats[participant.id]
        was_waiting = participant.state is ParticipantState.WAITING
        if state is ParticipantState.REMOVED:
            participant.remove()
        else:
            participant.leave()
        if live is None or not live.room.discard(participant):
            return  # replaced by a newer connection, which keeps the media
        live.negotiations.pop(participant.id, None)
        log.info("room %s: participant %s %s", live.room.id, participant.id, participant.state)
        claims = participant.claims
        if claims.invite:
            await self._remember(self._store.set_inside(claims.room, claims.jti, False, claims.exp))
        await self._forget_media(live, participant.id)
        if live.room.empty:
            await self._teardown(live)
        else:
            await self.broadcast_roster(live.room)
            if was_waiting:
                await self.broadcast_lobby(live.room)

    async def expel(self, participant: Participant, error: RoundtableError) -> None:
        """Remove someone (``removed``, ``lobby_denied``): media stops before they are told."""
        await self.leave(participant, ParticipantState.REMOVED)
        if self.notifier is not None:
            await self.notifier.drop(participant.sid, error)

    async def room_until(self, room_id: str) -> int:
        """How long the "ended" mark must last: past every token the room can have."""
        record = await self._store.get_room(room_id)
        floor = int(time.time()) + ENDED_AT_LEAST_SECONDS
        return max(floor, record.expires_at if record is not None else 0)

    async def end_room(
        self,
        room_id: str,
        until: int | None = None,
        *,
        spare: str | None = None,
        reason: RoundtableError | None = None,
    ) -> None:
        """End a session for everyone: revoke its tokens, disconnect, close the router.

        ``spare``: a connection not to drop here (the moderator who ended the session is
        dropped after its ack has gone out). ``reason``: what everyone is told; by default
        ``room_ended`` (someone ended it).
        """
        reason = reason or RoundtableError("room_ended", "This session has ended.")
        if until is None:
            until = await self.room_until(room_id)
        await self._store.close_room(room_id, until)
        live = self._rooms.get(room_id)
        if live is None or not live.room.begin_close():
            return
        log.info("room %s: ended for everyone", room_id)
        for p in live.room.active():
            p.remove()
            if self.notifier and p.sid != spare:
                await self.notifier.drop(p.sid, reason)
        await self._teardown(live)

    async def shutdown(self) -> None:
        for live in list(self._rooms.values()):
            await self._teardown(live)

    def _live(self, participant: Participant) -> LiveRoom:
        live = self._rooms.get(participant.claims.room)
        if live is None or live.room.get(participant.id) is not participant:
            raise Forbidden("forbidden", "You are no longer in this session.")
        return live

    def spawn_for(self, participant: Participant, coro: Coroutine[Any, Any, None]) -> None:
        live = self._rooms.get(participant.claims.room)
        if live is None:
            coro.close()
            return
        self._spawn(live, coro)

    def _spawn(self, live: LiveRoom, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        live.tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(live, t))
        return task

    @staticmethod
    def _task_done(live: LiveRoom, task: asyncio.Task[None]) -> None:
        live.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("room %s: task failed", live.room.id, exc_info=task.exception())

    async def _teardown(self, live: LiveRoom) -> None:
        live.room.begin_close()
        if self._rooms.get(live.room.id) is live:
            del self._rooms[live.room.id]
        current = asyncio.current_task()
        tasks = [t for t in live.tasks if t is not current]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if live.router is not None:
            router, live.router = live.router, None
            try:
                await router.close()
            except Exception:
                log.exception("room %s: router.close failed", live.room.id)
        live.room.finish_close()
        log.info("room %s: closed on this node", live.room.id)
