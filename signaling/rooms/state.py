"""What a room on this node holds besides its ``Room``: the media router, its tasks, the
negotiation state per participant, grace timers; and the ``Notifier`` the rooms talk to
clients through."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from signaling.deadline import Deadline
from signaling.errors import RoundtableError
from signaling.media import MediaRouter
from signaling.room import Room

# How long the "room ended" mark outlives a session at least: tokens minted outside the
# REST API (``roundtable token``) carry their own expiry, which the hub does not know.
ENDED_AT_LEAST_SECONDS = 24 * 3600


class Notifier(Protocol):
    async def send(self, sid: str, event: str, payload: dict[str, Any]) -> None: ...

    async def drop(self, sid: str, error: RoundtableError | None) -> None:
        """Tell the client why (``error`` event) and disconnect it."""


@dataclass(slots=True)
class NegotiationState:
    """Per participant: subscribe offers are strictly one at a time.

    aiortc (like a browser) cannot create a new offer while one is outstanding, so a
    renegotiation requested meanwhile is remembered (``pending``) and run after the answer.
    """

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    publish_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    awaiting_answer: bool = False
    pending: bool = False
    published: bool = False
    early_candidates: list[dict[str, Any] | None] = field(default_factory=list)
    # Candidates trickled per leg since its last offer/answer (bounded: each one is work
    # for aioice, and a client has no reason to send hundreds).
    candidates: dict[str, int] = field(default_factory=dict)
    # The subscribe offer awaiting its answer: sent again to a resumed connection, since
    # one sent while the network was gone never arrived.
    last_offer: dict[str, Any] | None = None


@dataclass(slots=True)
class LiveRoom:
    room: Room
    router: MediaRouter | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    negotiations: dict[str, NegotiationState] = field(default_factory=dict)
    # Caseworkers whose connection dropped: participant id -> (deadline, grace task).
    host_away: dict[str, tuple[float, asyncio.Task[None]]] = field(default_factory=dict)
    # Anyone whose connection dropped, still in the call: participant id -> grace task.
    reconnecting: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # The session's end (docs/protocol.md, "Session end"); set on the first join.
    deadline: Deadline | None = None
    # Participant ids admitted while the room lived on another node (``LiveState``).
    admitted_elsewhere: set[str] = field(default_factory=set)
