"""Media negotiation of the rooms: the publish offer/answer, the SFU's subscribe offers
(strictly one outstanding per participant), trickled ICE, and the SFU's signals back
(renegotiation needed, tracks changed, connection state)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from signaling.errors import STATUS_BY_CODE, Forbidden, InvalidPayload, RoundtableError
from signaling.events import MAX_CANDIDATES_BEFORE_OFFER, MAX_CANDIDATES_PER_CONNECTION
from signaling.media import (
    RANK_CASEWORKER,
    RANK_OTHER,
    MediaRouter,
    MediaSignal,
    RouterFactory,
    SignalKind,
)
from signaling.participant import Participant, TrackRef
from signaling.rooms.state import LiveRoom, Notifier

log = logging.getLogger(__name__)


def _media_error(
    live: LiveRoom, participant: Participant, what: str, exc: Exception
) -> RoundtableError:
    """The SFU's refusals carry a code (``sfu.errors.MediaError``); keep it if we know it."""
    if isinstance(exc, RoundtableError):
        return exc
    code = getattr(exc, "code", None)
    log.info(
        "room %s: %s by %s refused: %s",
        live.room.id,
        what,
        participant.id,
        code or type(exc).__name__,
    )
    if code == "no_offer":
        return InvalidPayload("invalid_payload", "There is no subscribe offer to answer.")
    if isinstance(code, str) and code in STATUS_BY_CODE and code != "internal":
        return RoundtableError(code, str(getattr(exc, "message", "")) or None)
    return RoundtableError("sdp_invalid", "The session description could not be applied.")


class Negotiator:
    """The media half of ``RoomHub``."""

    # Set by ``RoomHub.__init__`` (signaling.rooms.registry).
    notifier: Notifier | None
    _rooms: dict[str, LiveRoom]
    _router_factory: RouterFactory

    def _router(self, live: LiveRoom) -> MediaRouter:
        if live.router is None:
            room_id = live.room.id
            live.router = self._router_factory(room_id, lambda s: self._on_signal(room_id, s))
        return live.router

    async def publish(self, participant: Participant, offer_sdp: str) -> str:
        # The seat first: a replaced connection is told it is no longer in the session,
        # not that it is not admitted yet.
        live = self._live(participant)
        participant.require("publish")
        # A screen share is a second video track; until the SFU tells them apart, the
        # `screen` right lets a participant publish video as well.
        grants = participant.claims.grants
        kinds = frozenset(
            k
            for k, rights in (("audio", {"audio"}), ("video", {"video", "screen"}))
            if rights & grants
        )
        neg = live.negotiations[participant.id]
        async with neg.publish_lock:
            # Asked again now that this offer has its turn: an offer that waited here
            # (behind the same page's earlier one) while its connection was replaced or
            # removed would reach the router after that removal and leave a publisher
            # under the seat's id, which the next page's offer would re-offer. From here
            # to its place in the router's queue there is no await, so a removal after
            # this check is queued behind the call and undoes it.
            live = self._live(participant)
            router = self._router(live)
            # On a narrow link the caseworker's picture goes before the others'.
            role = participant.claims.role
            router.set_rank(participant.id, RANK_CASEWORKER if role == "caseworker" else RANK_OTHER)
            try:
                answer = await router.publish(participant.id, offer_sdp, kinds)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise _media_error(live, participant, "publish", exc) from exc
            if not participant.active:
                # Removed while its offer was being applied: drop what the router made.
                await self._forget_if_gone(live, participant)
                raise Forbidden("forbidden", "You are no longer in this session.")
            neg.published = True
            neg.candidates["publish"] = 0
            early, neg.early_candidates = neg.early_candidates, []
        for candidate in early:
            await self._add_candidate(live, participant.id, "publish", candidate)
        return answer

    async def subscribe_answer(self, participant: Participant, answer_sdp: str) -> None:
        participant.require("subscribe")
        live = self._live(participant)
        neg = live.negotiations[participant.id]
        if not neg.awaiting_answer:
            raise InvalidPayload("invalid_payload", "There is no subscribe offer to answer.")
        try:
            await self._router(live).accept_answer(participant.id, answer_sdp)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _media_error(live, participant, "subscribe.answer", exc) from exc
        finally:
            neg.awaiting_answer = False
            neg.candidates["subscribe"] = 0
        if neg.pending:
            neg.pending = False
            self._spawn(live, self._renegotiate(live, participant.id))

    async def ice(
        self, participant: Participant, leg: str, candidate: dict[str, Any] | None
    ) -> None:
        if not participant.admitted:
            raise Forbidden("forbidden", "You are not admitted to this session yet.")
        live = self._live(participant)
        neg = live.negotiations[participant.id]
        sent = neg.candidates.get(leg, 0)
        if sent >= MAX_CANDIDATES_PER_CONNECTION:
            raise InvalidPayload("invalid_payload", "Too many candidates for this connection.")
        neg.candidates[leg] = sent + 1
        if candidate is not None and ".local" in candidate.get("candidate", ""):
            # mDNS names are not resolved; the browser's checks reveal its address anyway.
            return
        if leg == "publish" and not neg.published:
            if len(neg.early_candidates) >= MAX_CANDIDATES_BEFORE_OFFER:
                raise InvalidPayload("invalid_payload", "Too many candidates before the offer.")
            neg.early_candidates.append(candidate)
            return
        await self._add_candidate(live, participant.id, leg, candidate)

    async def _add_candidate(
        self, live: LiveRoom, pid: str, leg: str, candidate: dict[str, Any] | None
    ) -> None:
        try:
            await self._router(live).add_ice_candidate(pid, leg, candidate)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A stale or unparsable candidate must not fail the call; ICE has others.
            log.debug("room %s: candidate for %s/%s ignored: %r", live.room.id, pid, leg, exc)

    async def _renegotiate(self, live: LiveRoom, pid: str) -> None:
        participant = live.room.get(pid)
        neg = live.negotiations.get(pid)
        if participant is None or neg is None or not participant.admitted:
            return
        if not participant.claims.has("subscribe"):
            return
        if neg.awaiting_answer:
            neg.pending = True
            return
        async with neg.lock:
            if neg.awaiting_answer:
                neg.pending = True
                return
            # Asked again now that this renegotiation has its turn: one that waited here
            # while its connection was replaced would register a subscriber under the
            # seat's id with the replaced page's rights (none). As in publish, no await
            # until the router's queue, so a later removal undoes the call.
            if live.room.get(pid) is not participant or not participant.active:
                return
            offer = await self._router(live).subscribe(
                pid, accept=self._accept(live.room, participant)
            )
            if not participant.active:
                await self._forget_if_gone(live, participant)
                return
            if offer is None:
                return
            neg.awaiting_answer = True
            neg.last_offer = {
                "type": "offer",
                "sdp": offer.sdp,
                "tracks": [
                    {
                        "mid": t.mid,
                        "participant": t.participant,
                        "kind": t.kind,
                        "track": t.track,
                    }
                    for t in offer.tracks
                ],
            }
        if self.notifier:
            await self.notifier.send(participant.sid, "subscribe.offer", neg.last_offer)

    def _on_signal(self, room_id: str, signal: MediaSignal) -> None:
        live = self._rooms.get(room_id)
        if live is None or live.room.get(signal.pid) is None:
            return
        if signal.kind is SignalKind.RENEGOTIATION_NEEDED:
            self._spawn(live, self._renegotiate(live, signal.pid))
        elif signal.kind is SignalKind.TRACKS_CHANGED:
            self._spawn(live, self._tracks_changed(live, signal.pid))
        elif signal.kind is SignalKind.VIDEO_PAUSED and signal.publisher is not None:
            participant = live.room.get(signal.pid)
            if participant is not None and participant.admitted and self.notifier:
                payload = {"participant": signal.publisher, "paused": signal.paused}
                self._spawn(live, self.notifier.send(participant.sid, "video.paused", payload))
        elif signal.kind is SignalKind.LAYERS and signal.layers is not None:
            participant = live.room.get(signal.pid)
            if participant is not None and participant.admitted and self.notifier:
                mid, rids = signal.layers
                payload = {"mid": mid, "active": list(rids)}
                self._spawn(live, self.notifier.send(participant.sid, "publish.layers", payload))
        elif signal.kind is SignalKind.PUBLISH_RESTART:
            participant = live.room.get(signal.pid)
            if participant is not None and participant.admitted and self.notifier:
                self._spawn(live, self.notifier.send(participant.sid, "publish.restart", {}))
        elif signal.kind is SignalKind.CONNECTION_STATE and signal.leg == "publish":
            participant = live.room.get(signal.pid)
            assert participant is not None
            changed = False
            if signal.state == "connected":
                changed = participant.media_connected()
            elif signal.state in ("failed", "closed"):
                changed = participant.media_lost()
            if changed:
                self._spawn(live, self.broadcast_roster(live.room))

    async def _tracks_changed(self, live: LiveRoom, pid: str) -> None:
        participant = live.room.get(pid)
        if participant is None or live.router is None:
            return
        # A track published after a moderator's mute starts paused too.
        for kind, muted in participant.muted.items():
            if muted:
                live.router.set_paused(pid, kind, True)
        participant.tracks = [
            TrackRef(str(getattr(t, "id", "")), str(getattr(t, "kind", "")))
            for t in live.router.tracks(pid)
        ]
        await self.broadcast_roster(live.room)

    async def _forget_if_gone(self, live: LiveRoom, participant: Participant) -> None:
        # Not when a newer connection of the same person took over: the media is its own.
        if live.room.get(participant.id) is None:
            await self._forget_media(live, participant.id)

    async def _forget_media(self, live: LiveRoom, pid: str) -> None:
        if live.router is not None:
            try:
                await live.router.remove(pid)
            except Exception:
                log.exception("room %s: router.remove(%s) failed", live.room.id, pid)

    def restart_ice(self, participant: Participant) -> None:
        """The page's network changed: its next subscribe offer restarts ICE."""
        live = self._live(participant)
        if live.router is not None and participant.admitted:
            live.router.restart_ice(participant.id)

    def media_silence(self, participant: Participant) -> float | None:
        """Seconds since the SFU last heard from this participant's browser (RTP it
        publishes, RTCP of what it receives); ``None``: no media to tell by."""
        live = self._rooms.get(participant.claims.room)
        if live is None or live.router is None:
            return None
        return live.router.silence(participant.id)

    def set_view(self, participant: Participant, tiles: list[dict[str, Any]]) -> None:
        """The page's tiles: the SFU sends hidden ones nothing and small ones a small
        layer. Ids of people not in the room are ignored (the page may lag a roster)."""
        live = self._live(participant)
        if live.router is None or not participant.admitted:
            return
        views = {
            t["participant"]: (t["visible"], t["width"], t["height"])
            for t in tiles
            if t["participant"] != participant.id and live.room.get(t["participant"]) is not None
        }
        if views:
            live.router.set_view(participant.id, views)

    def set_quality(self, participant: Participant, level: str) -> None:
        live = self._live(participant)
        if participant.quality != level:
            participant.quality = level
            self._spawn(live, self.broadcast_roster(live.room))
