"""``StateStore`` on Redis, so several nodes share rooms, revocations and used invites.

Every entry about a token expires with that token (``EXPIREAT`` = the token's ``exp``),
so Redis forgets what no longer matters without a sweeper. Single-use invites rely on
``SET NX``: of two nodes admitting the same invite at the same moment, exactly one wins.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from signaling.store import (
    InviteRecord,
    LiveState,
    PartnerRecord,
    PartnerSave,
    RoomRecord,
    StateStore,
    sorted_partners,
)

PREFIX = "roundtable:"

# The partner directory is two hashes: id -> the entry as JSON (with its ``key``), and
# ``partner_key`` -> id, which keeps names unique. One script checks and writes both, so
# two nodes adding the same name at once cannot both succeed.
# KEYS: partners, partner-names. ARGV: id, key, json, "1" for a new entry.
_SAVE_PARTNER = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old and ARGV[4] ~= '1' then return 'missing' end
local owner = redis.call('HGET', KEYS[2], ARGV[2])
if owner and owner ~= ARGV[1] then return 'name_taken' end
if old then
  local before = cjson.decode(old)['key']
  if before ~= ARGV[2] then redis.call('HDEL', KEYS[2], before) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 'saved'
"""
# KEYS: partners, partner-names. ARGV: id.
_REMOVE_PARTNER = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('HDEL', KEYS[2], cjson.decode(old)['key'])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""


def fast_fail_options() -> dict[str, Any]:
    """Client options for every Redis connection of a node: an unreachable Redis costs a
    join about a second (then ``unavailable``), not redis-py's default retries with
    backoff of up to ten seconds each."""
    return {
        "socket_timeout": 1.0,
        "socket_connect_timeout": 1.0,
        "retry": Retry(ExponentialBackoff(cap=0.25, base=0.05), 1),
    }


class RedisStore(StateStore):
    def __init__(self, url: str, *, prefix: str = PREFIX) -> None:
        # Fails fast (one second) when Redis is gone: a join then gets ``unavailable``.
        self._redis = aioredis.from_url(url, decode_responses=True, **fast_fail_options())
        self._p = prefix
        self._save_partner = self._redis.register_script(_SAVE_PARTNER)
        self._remove_partner = self._redis.register_script(_REMOVE_PARTNER)

    async def ping(self) -> None:
        """Fail at start-up, not at the first join, when Redis is unreachable."""
        await self._redis.ping()
        await self.epoch()

    async def epoch(self) -> int:
        """When this Redis started remembering (``SET NX`` by whichever node is first).

        Read on every join, so a Redis restarted *empty* (no AOF, or its files lost) is
        noticed at once: the key is gone, a new epoch is set, and every token issued
        before it is refused, because the revocations of removed partners went with the
        data. Sessions already running keep their connections; their links need renewing.
        """
        key = self._key("epoch")
        value = await self._redis.get(key)
        if value is None:
            await self._redis.set(key, str(int(time.time())), nx=True)
            value = await self._redis.get(key)
        return int(value or 0)

    def _key(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    @staticmethod
    def _until(until: int) -> int:
        # EXPIREAT in the past deletes at once; keep entries a little past their token.
        return max(int(until), int(time.time())) + 60

    async def put_room(self, room: RoomRecord) -> None:
        value = json.dumps(
            {"created_at": room.created_at, "expires_at": room.expires_at, "closed": room.closed}
        )
        key = self._key("room", room.id)
        await self._redis.set(key, value, exat=self._until(room.expires_at))

    async def get_room(self, room_id: str) -> RoomRecord | None:
        raw = await self._redis.get(self._key("room", room_id))
        if raw is None:
            return None
        data = json.loads(raw)
        closed = bool(data.get("closed")) or await self.is_room_closed(room_id)
        return RoomRecord(room_id, int(data["created_at"]), int(data["expires_at"]), closed)

    async def close_room(self, room_id: str, until: int) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key("closed", room_id), "1", exat=self._until(until))
            await pipe.execute()
        raw = await self._redis.get(self._key("room", room_id))
        if raw is not None:
            data = json.loads(raw)
            data["closed"] = True
            await self._redis.set(
                self._key("room", room_id), json.dumps(data), exat=self._until(data["expires_at"])
            )

    async def is_room_closed(self, room_id: str) -> bool:
        return bool(await self._redis.exists(self._key("closed", room_id)))

    async def revoke_jti(self, jti: str, until: int) -> None:
        await self._redis.set(self._key("revoked", jti), "1", exat=self._until(until))

    async def is_revoked(self, jti: str) -> bool:
        return bool(await self._redis.exists(self._key("revoked", jti)))

    async def use_invite(self, jti: str, until: int) -> bool:
        first = await self._redis.set(
            self._key("invite", jti), "1", nx=True, exat=self._until(until)
        )
        return bool(first)

    async def is_invite_used(self, jti: str) -> bool:
        return bool(await self._redis.exists(self._key("invite", jti)))

    async def put_invite(self, invite: InviteRecord) -> None:
        value = json.dumps({"jti": invite.jti, "expires_at": invite.expires_at})
        key = self._key("invite-record", invite.room, invite.id)
        await self._redis.set(key, value, exat=self._until(invite.expires_at))

    async def get_invite(self, room_id: str, invite_id: str) -> InviteRecord | None:
        raw = await self._redis.get(self._key("invite-record", room_id, invite_id))
        if raw is None:
            return None
        data = json.loads(raw)
        if int(data["expires_at"]) < time.time():
            return None
        return InviteRecord(invite_id, room_id, str(data["jti"]), int(data["expires_at"]))

    async def revoke_invite(self, jti: str, until: int) -> None:
        await self._redis.set(self._key("invite-revoked", jti), "1", exat=self._until(until))

    async def is_invite_revoked(self, jti: str) -> bool:
        return bool(await self._redis.exists(self._key("invite-revoked", jti)))

    async def live_state(self, room_id: str) -> LiveState:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(self._key("locked", room_id))
            pipe.smembers(self._key("admitted", room_id))
            pipe.smembers(self._key("inside", room_id))
            locked, admitted, inside = await pipe.execute()
        return LiveState(bool(locked), frozenset(admitted), frozenset(inside))

    async def set_locked(self, room_id: str, locked: bool, until: int) -> None:
        key = self._key("locked", room_id)
        if locked:
            await self._redis.set(key, "1", exat=self._until(until))
        else:
            await self._redis.delete(key)

    async def _add(self, key: str, member: str, until: int) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, member)
            pipe.expireat(key, self._until(until))
            await pipe.execute()

    async def add_admitted(self, room_id: str, pid: str, until: int) -> None:
        await self._add(self._key("admitted", room_id), pid, until)

    async def set_inside(self, room_id: str, jti: str, inside: bool, until: int) -> None:
        key = self._key("inside", room_id)
        if inside:
            await self._add(key, jti, until)
        else:
            await self._redis.srem(key, jti)

    # -- the partner directory ------------------------------------------------------------

    def _partner_keys(self) -> list[str]:
        return [self._key("partners"), self._key("partner-names")]

    @staticmethod
    def _partner(raw: str) -> PartnerRecord:
        data = json.loads(raw)
        data.pop("key", None)
        return PartnerRecord.from_dict(data)

    async def list_partners(self) -> list[PartnerRecord]:
        rows = await self._redis.hvals(self._key("partners"))
        return sorted_partners(self._partner(raw) for raw in rows)

    async def get_partner(self, partner_id: str) -> PartnerRecord | None:
        raw = await self._redis.hget(self._key("partners"), partner_id)
        return None if raw is None else self._partner(raw)

    async def save_partner(self, partner: PartnerRecord, *, new: bool) -> PartnerSave:
        if not new:
            # Kept from the entry as first made (a race here could only change this date).
            old = await self.get_partner(partner.id)
            if old is not None:
                partner = dataclasses.replace(partner, created_at=old.created_at)
        value = json.dumps({**partner.to_dict(), "key": partner.key})
        outcome = await self._save_partner(
            keys=self._partner_keys(), args=[partner.id, partner.key, value, "1" if new else "0"]
        )
        return PartnerSave(outcome)

    async def remove_partner(self, partner_id: str) -> bool:
        return bool(await self._remove_partner(keys=self._partner_keys(), args=[partner_id]))

    async def close(self) -> None:
        await self._redis.aclose()
