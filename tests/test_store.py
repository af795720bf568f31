"""The state store contract, for the in-memory store and for a real redis-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from signaling.redis_store import RedisStore
from signaling.sqlite_store import SqliteStore
from signaling.store import RoomRecord, StateStore


def later(seconds: int = 600) -> int:
    return int(time.time()) + seconds


async def test_rooms_are_stored_and_closed(store: StateStore) -> None:
    await store.put_room(RoomRecord("r1", int(time.time()), later()))
    room = await store.get_room("r1")
    assert room is not None and not room.closed
    assert await store.get_room("nope") is None
    assert not await store.is_room_closed("r1")
    await store.close_room("r1", later())
    assert await store.is_room_closed("r1")
    room = await store.get_room("r1")
    assert room is not None and room.closed


async def test_revocation(store: StateStore) -> None:
    assert not await store.is_revoked("j1")
    await store.revoke_jti("j1", later())
    assert await store.is_revoked("j1")
    assert not await store.is_revoked("j2")


async def test_invite_is_single_use(store: StateStore) -> None:
    assert await store.use_invite("inv", later())
    assert not await store.use_invite("inv", later())
    assert await store.use_invite("other", later())


@pytest.mark.redis
async def test_two_nodes_share_state_and_race_for_an_invite(redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex}:"
    node_a, node_b = RedisStore(redis_url, prefix=prefix), RedisStore(redis_url, prefix=prefix)
    try:
        await node_a.ping()
        await node_a.put_room(RoomRecord("shared", int(time.time()), later()))
        assert (await node_b.get_room("shared")) is not None
        await node_a.revoke_jti("removed-partner", later())
        assert await node_b.is_revoked("removed-partner")
        await node_b.close_room("shared", later())
        assert await node_a.is_room_closed("shared")
        # Many concurrent first uses across both nodes: exactly one wins.
        results = await asyncio.gather(
            *[(node_a if i % 2 else node_b).use_invite("hot", later()) for i in range(20)]
        )
        assert results.count(True) == 1
    finally:
        await node_a.close()
        await node_b.close()


@pytest.mark.redis
async def test_token_entries_expire_with_their_token(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix=f"t{uuid.uuid4().hex}:")
    try:
        await store.revoke_jti("short", int(time.time()) + 1)
        ttl = await store._redis.ttl(store._key("revoked", "short"))
        assert 0 < ttl <= 62  # forgotten shortly after the token would be expired anyway
    finally:
        await store.close()


async def test_sqlite_store_keeps_everything_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.sqlite3"
    first = SqliteStore(path)
    await first.put_room(RoomRecord("r1", int(time.time()), later()))
    await first.close_room("r1", later())
    await first.revoke_jti("removed", later())
    assert await first.use_invite("spent", later())
    await first.revoke_invite("withdrawn", later())
    await first.revoke_jti("long-expired", int(time.time()) - 10)
    epoch = await first.epoch()
    # No close(): as after kill -9, only what was committed counts.
    second = SqliteStore(path)
    try:
        room = await second.get_room("r1")
        assert room is not None and room.closed and await second.is_room_closed("r1")
        assert await second.is_revoked("removed")
        assert not await second.use_invite("spent", later())
        assert await second.is_invite_revoked("withdrawn")
        assert not await second.is_revoked("long-expired")  # pruned: refused as expired
        assert await second.epoch() == epoch
    finally:
        await first.close()
        await second.close()


@pytest.mark.redis
async def test_a_redis_restarted_empty_readmits_no_removed_partner(redis_url: str) -> None:
    from signaling.tokens import TokenService

    prefix = f"t{uuid.uuid4().hex}:"
    store = RedisStore(redis_url, prefix=prefix)
    try:
        await store.ping()
        tokens = TokenService("s" * 40, store, now=lambda: time.time() - 120)
        token, claims = tokens.issue(room="r1", role="partner", name="P", ttl=3600)
        await tokens.revoke(claims)
        # Redis loses everything (restarted without AOF): the revocation is gone...
        for key in await store._redis.keys(prefix + "*"):
            await store._redis.delete(key)
        assert not await store.is_revoked(claims.jti)
        # ...but the token predates the new epoch, so it is refused all the same.
        fresh = TokenService("s" * 40, store)
        try:
            await fresh.authenticate(token, room="r1")
        except Exception as exc:
            assert getattr(exc, "code", None) == "token_revoked"
        else:
            raise AssertionError("a token older than the store's epoch was accepted")
        new_token, _ = fresh.issue(room="r1", role="partner", name="P", ttl=3600)
        assert (await fresh.authenticate(new_token, room="r1")).role == "partner"
    finally:
        await store.close()
