"""State that must outlive one connection and, later, be shared between nodes.

The control plane keeps live objects (``Room``, ``Participant``) in process; what a second
node or a restart needs — which rooms exist, which have ended, which token ids are
revoked, which invites were used — goes through ``StateStore``. The in-memory
implementation serves the embedded single-process mode; a Redis implementation can follow
behind the same small async interface (every method maps to one Redis command or two).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any


@dataclass(frozen=True, slots=True)
class RoomRecord:
    """A session as created by ``POST /api/rooms`` (or implicitly by an operator token)."""

    id: str
    created_at: int
    expires_at: int
    closed: bool = False


@dataclass(frozen=True, slots=True)
class LiveState:
    """What a room's node knows beyond its tokens, kept where a successor node finds it
    (failover, drain): the lock, who was admitted from the waiting room (participant
    ids) and which single-use invites are inside now (``jti``: their reconnect is not a
    second use)."""

    locked: bool = False
    admitted: frozenset[str] = frozenset()
    inside: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class InviteRecord:
    """A partner invite made by ``POST /api/rooms/{room}/invites``: enough to revoke it."""

    id: str
    room: str
    jti: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class PartnerRecord:
    """A partner organisation in the operator's directory (``/api/partners``): what the
    dial-in form fills in when the caseworker picks it. Not tied to any room or token,
    so it never expires; every node of a cluster reads the same directory."""

    id: str
    name: str
    type: str
    rights: tuple[str, ...]
    valid_minutes: int
    email: str | None = None
    contact: str | None = None  # the person usually sent (the invite's "name")
    created_at: int = 0

    @property
    def key(self) -> str:
        return partner_key(self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "contact": self.contact,
            "email": self.email,
            "rights": list(self.rights),
            "valid_minutes": self.valid_minutes,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartnerRecord:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            type=str(data["type"]),
            rights=tuple(data.get("rights") or ()),
            valid_minutes=int(data["valid_minutes"]),
            email=data.get("email") or None,
            contact=data.get("contact") or None,
            created_at=int(data.get("created_at") or 0),
        )


def partner_key(name: str) -> str:
    """What makes two partner names the same entry: "DRV  Bund" and "drv bund" are one
    organisation to a caseworker choosing from a list, so the directory keeps one."""
    return " ".join(name.split()).casefold()


class PartnerSave(StrEnum):
    """Outcome of ``StateStore.save_partner``."""

    SAVED = "saved"
    NAME_TAKEN = "name_taken"  # another entry has this name (``partner_key``)
    MISSING = "missing"  # an update of an id that is not (or no longer) there


class StateStore(ABC):
    """Async seam between the control plane and its persistent state.

    Entries about tokens carry ``until`` (the token's ``exp``): after that the token is
    refused as expired anyway, so the store may forget them (Redis: ``EXPIRE``).
    """

    @abstractmethod
    async def put_room(self, room: RoomRecord) -> None: ...

    @abstractmethod
    async def get_room(self, room_id: str) -> RoomRecord | None: ...

    @abstractmethod
    async def close_room(self, room_id: str, until: int) -> None:
        """Mark the room ended; every token for it stops working (see ``is_room_closed``)."""

    @abstractmethod
    async def is_room_closed(self, room_id: str) -> bool: ...

    @abstractmethod
    async def revoke_jti(self, jti: str, until: int) -> None: ...

    @abstractmethod
    async def is_revoked(self, jti: str) -> bool: ...

    @abstractmethod
    async def use_invite(self, jti: str, until: int) -> bool:
        """Record the first use of a single-use token; False if it was used before.

        Must be atomic (Redis: ``SET NX``) so two nodes cannot both admit the same invite.
        """

    @abstractmethod
    async def is_invite_used(self, jti: str) -> bool:
        """Has ``use_invite`` recorded this token? (A look, not a use.)"""

    @abstractmethod
    async def put_invite(self, invite: InviteRecord) -> None: ...

    @abstractmethod
    async def get_invite(self, room_id: str, invite_id: str) -> InviteRecord | None: ...

    @abstractmethod
    async def revoke_invite(self, jti: str, until: int) -> None:
        """Withdraw an invite before its use: joins with it are refused ``invite_revoked``."""

    @abstractmethod
    async def is_invite_revoked(self, jti: str) -> bool: ...

    async def epoch(self) -> int:
        """Unix time since which this store has recorded everything.

        Tokens issued before it may belong to someone removed while nothing was recorded
        (a deleted state file, a Redis restarted empty); ``TokenService`` refuses them.
        0: the store forgets nothing it was told (or, in memory, is not meant to remember).
        """
        return 0

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; nothing to do in memory."""

    # A room's live state lives in its node's memory; only a store shared by several
    # nodes keeps a copy for the node that takes the room over. One process keeps none.

    async def live_state(self, room_id: str) -> LiveState:
        return LiveState()

    async def set_locked(self, room_id: str, locked: bool, until: int) -> None:  # noqa: B027
        """Remember the room's lock for a successor node."""

    async def add_admitted(self, room_id: str, pid: str, until: int) -> None:  # noqa: B027
        """Remember that ``pid`` was admitted: it does not wait again on another node."""

    async def set_inside(self, room_id: str, jti: str, inside: bool, until: int) -> None:  # noqa: B027
        """Remember that an invite's participant is in the room (or left it)."""


class MemoryStore(StateStore):
    """Single-process store; forgets token entries once their token would be expired."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._rooms: dict[str, RoomRecord] = {}
        self._closed: dict[str, int] = {}
        self._revoked: dict[str, int] = {}
        self._used_invites: dict[str, int] = {}
        self._invites: dict[tuple[str, str], InviteRecord] = {}
        self._revoked_invites: dict[str, int] = {}
        self._partners: dict[str, PartnerRecord] = {}

    def _prune(self, table: dict[str, int]) -> None:
        now = self._now()
        for key in [k for k, until in table.items() if until < now]:
            del table[key]

    async def put_room(self, room: RoomRecord) -> None:
        self._rooms[room.id] = room

    async def get_room(self, room_id: str) -> RoomRecord | None:
        room = self._rooms.get(room_id)
        if room is not None and room.expires_at < self._now() and room.id not in self._closed:
            # An expired room's tokens are expired too; drop the record.
            del self._rooms[room_id]
            return None
        return room

    async def close_room(self, room_id: str, until: int) -> None:
        self._prune(self._closed)
        self._closed[room_id] = until
        room = self._rooms.get(room_id)
        if room is not None:
            self._rooms[room_id] = RoomRecord(
                room.id, room.created_at, room.expires_at, closed=True
            )

    async def is_room_closed(self, room_id: str) -> bool:
        return room_id in self._closed

    async def revoke_jti(self, jti: str, until: int) -> None:
        self._prune(self._revoked)
        self._revoked[jti] = until

    async def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked

    async def use_invite(self, jti: str, until: int) -> bool:
        self._prune(self._used_invites)
        if jti in self._used_invites:
            return False
        self._used_invites[jti] = until
        return True

    async def is_invite_used(self, jti: str) -> bool:
        return jti in self._used_invites

    async def put_invite(self, invite: InviteRecord) -> None:
        now = self._now()
        for key in [k for k, v in self._invites.items() if v.expires_at < now]:
            del self._invites[key]
        self._invites[(invite.room, invite.id)] = invite

    async def get_invite(self, room_id: str, invite_id: str) -> InviteRecord | None:
        invite = self._invites.get((room_id, invite_id))
        if invite is None or invite.expires_at < self._now():
            return None
        return invite

    async def revoke_invite(self, jti: str, until: int) -> None:
        self._prune(self._revoked_invites)
        self._revoked_invites[jti] = until

    async def is_invite_revoked(self, jti: str) -> bool:
        return jti in self._revoked_invites

    async def list_partners(self) -> list[PartnerRecord]:
        return sorted_partners(self._partners.values())

    async def get_partner(self, partner_id: str) -> PartnerRecord | None:
        return self._partners.get(partner_id)

    async def save_partner(self, partner: PartnerRecord, *, new: bool) -> PartnerSave:
        old = self._partners.get(partner.id)
        if old is None and not new:
            return PartnerSave.MISSING
        if any(p.key == partner.key and p.id != partner.id for p in self._partners.values()):
            return PartnerSave.NAME_TAKEN
        if old is not None:
            partner = replace(partner, created_at=old.created_at)
        self._partners[partner.id] = partner
        return PartnerSave.SAVED

    async def remove_partner(self, partner_id: str) -> bool:
        return self._partners.pop(partner_id, None) is not None


def sorted_partners(partners: Any) -> list[PartnerRecord]:
    return sorted(partners, key=lambda p: (p.key, p.id))
