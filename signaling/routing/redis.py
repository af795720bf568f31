"""Routing state in Redis: node heartbeats and room leases, shared by every node.

Keys (prefix ``roundtable:``): ``node:<id>`` holds the node's JSON (URL, draining, load)
with a lease of ``NODE_LEASE_SECONDS`` that the node renews; ``room-node:<room>`` holds
the id of the node serving the room, with a lease of ``ROOM_LEASE_SECONDS`` that only its
owner renews. A node killed with ``kill -9`` renews nothing: within one lease its
heartbeat and its rooms are gone and the next join re-pins each room. A room whose owner's
heartbeat is gone is free at once, even while its own lease still runs.

Every Redis call has a short timeout: a join while Redis is unreachable fails with
``RoutingUnavailable`` within about a second instead of hanging, and calls already
running never wait for Redis (their media does not pass through here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from signaling.redis_store import fast_fail_options
from signaling.routing.interfaces import (
    NODE_LEASE_SECONDS,
    RENEW_EVERY_SECONDS,
    ROOM_LEASE_SECONDS,
    NodeInfo,
    NodeLoad,
    Router,
    RoutingUnavailable,
    origin,
)
from signaling.routing.selector import least_loaded

log = logging.getLogger(__name__)

PREFIX = "roundtable:"
# Pin KEYS[1] to ARGV[1] unless a live owner holds it. An owner is live while its node
# key (KEYS[2] is the prefix of node keys) exists; a dead owner's lease is taken over.
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur and redis.call('EXISTS', KEYS[2] .. cur) == 1 then
  return cur
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""
# Renew the lease of a room this node serves: also when it ran out meanwhile (Redis was
# unreachable for longer than a lease, or restarted): the call is still here. Only a room
# another node took over in that time stays with that node.
_RENEW = """
local cur = redis.call('GET', KEYS[1])
if not cur or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Delete KEYS[1] only while it still names this node (ARGV[1]).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def connect(url: str) -> aioredis.Redis:
    """A client that fails fast: ``redis://``, ``rediss://``, ``unix://`` URLs (redis-py's
    ``from_url``); Sentinel and Cluster need their own clients (docs/deploy.md)."""
    return aioredis.from_url(url, decode_responses=True, **fast_fail_options())


class RedisRouter(Router):
    def __init__(self, node: NodeInfo, url: str, *, prefix: str = PREFIX) -> None:
        super().__init__(node)
        self._redis = connect(url)
        self._p = prefix
        self._task: asyncio.Task[None] | None = None
        self._healthy = True
        self._placed: list[
            tuple[float, str]
        ] = []  # (when, node): placements not yet in a heartbeat
        self._origins: frozenset[str] = frozenset()
        # Never expires: the origins of a cluster's nodes change only with its setup.
        self._origins_key = f"{prefix}origins"
        self._claim = self._redis.register_script(_CLAIM)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)

    @property
    def healthy(self) -> bool:
        return self._healthy

    def _with_recent(self, node: NodeInfo) -> NodeInfo:
        """A node's heartbeat load plus the rooms this node placed there since: joins
        arriving faster than heartbeats would otherwise all go to the same node."""
        since = time.monotonic() - RENEW_EVERY_SECONDS * 2
        self._placed = [(t, n) for t, n in self._placed if t > since]
        recent = sum(1 for _, n in self._placed if n == node.id)
        if not recent:
            return node
        load = node.load
        return node.with_(
            load=NodeLoad(
                load.rooms + recent,
                load.participants + 2 * recent,  # a room starts with two people
                load.packets_per_second,
                load.cpu,
            )
        )

    @property
    def origins(self) -> frozenset[str]:
        return self._origins

    def _node_key(self, node_id: str) -> str:
        return f"{self._p}node:{node_id}"

    def _drain_key(self, node_id: str) -> str:
        return f"{self._p}drain:{node_id}"

    def _room_key(self, room: str) -> str:
        return f"{self._p}room-node:{room}"

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        # A request meant for an earlier process of the same id is not for this one.
        await self._redis.delete(self._drain_key(self.node.id))
        await self._heartbeat()  # an unreachable Redis fails the start
        self._task = asyncio.get_running_loop().create_task(self._keep_alive())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(RedisError, OSError):
            for room in self._rooms():
                await self._release(keys=[self._room_key(room)], args=[self.node.id])
            await self._redis.delete(self._node_key(self.node.id), self._drain_key(self.node.id))
        await self._redis.aclose()

    async def _heartbeat(self) -> None:
        self.node = self.node.with_(load=self._load())
        ms = int(NODE_LEASE_SECONDS * 1000)
        room_ms = int(ROOM_LEASE_SECONDS * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._node_key(self.node.id), json.dumps(self.node.to_dict()), px=ms)
            for room in self._rooms():
                # A script in a pipeline is loaded before it runs (also after a restart
                # of Redis that forgot it).
                await self._renew(
                    keys=[self._room_key(room)], args=[self.node.id, room_ms], client=pipe
                )
            if self.node.url:
                pipe.sadd(self._origins_key, origin(self.node.url))
            pipe.smembers(self._origins_key)
            pipe.exists(self._drain_key(self.node.id))
            results = await pipe.execute()
        self._origins = frozenset(results[-2])
        if results[-1] and not self.drain_requested.is_set():
            log.info("routing: drain requested for this node")
            self.drain_requested.set()

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_SECONDS)
            try:
                await self._heartbeat()
            except (RedisError, OSError) as exc:
                if self._healthy:
                    log.warning(
                        "routing: Redis unreachable (%s); calls continue", type(exc).__name__
                    )
                self._healthy = False
                continue
            if not self._healthy:
                log.info("routing: Redis reachable again")
            self._healthy = True

    # -- queries ------------------------------------------------------------------------

    async def live_nodes(self) -> list[NodeInfo]:
        try:
            keys = [k async for k in self._redis.scan_iter(match=self._node_key("*"), count=100)]
            values = await self._redis.mget(keys) if keys else []
        except (RedisError, OSError) as exc:
            raise RoutingUnavailable(str(exc)) from exc
        nodes = []
        for raw in values:
            if raw is None:
                continue  # expired between SCAN and MGET
            try:
                nodes.append(NodeInfo.from_dict(json.loads(raw)))
            except (ValueError, KeyError, TypeError):
                log.warning("routing: unreadable node record ignored")
        return sorted(nodes, key=lambda n: n.id)

    async def _node(self, node_id: str) -> NodeInfo | None:
        if node_id == self.node.id:
            return self.node
        raw = await self._redis.get(self._node_key(node_id))
        return NodeInfo.from_dict(json.loads(raw)) if raw is not None else None

    async def owner(self, room: str) -> NodeInfo | None:
        try:
            node_id = await self._redis.get(self._room_key(room))
            return await self._node(node_id) if node_id is not None else None
        except (RedisError, OSError) as exc:
            raise RoutingUnavailable(str(exc)) from exc

    async def place(self, room: str) -> NodeInfo:
        try:
            current = await self.owner(room)
            if current is not None:
                return current
            nodes = [self._with_recent(n) for n in await self.live_nodes()]
            chosen = least_loaded(nodes, prefer=self.node.id)
            if chosen is None:
                # Every node drains: this one still serves rather than refusing the call.
                chosen = self.node
            room_ms = int(ROOM_LEASE_SECONDS * 1000)
            winner = await self._claim(
                keys=[self._room_key(room), self._node_key("")], args=[chosen.id, room_ms]
            )
            if winner == chosen.id:
                log.info("routing: room %s pinned to node %s", room, chosen.id)
                self._placed.append((time.monotonic(), chosen.id))
                return chosen
            # Another node pinned it at the same moment: that one serves.
            found = await self._node(str(winner))
            if found is None:
                raise RoutingUnavailable("the room's node vanished while placing it")
            return found
        except (RedisError, OSError) as exc:
            raise RoutingUnavailable(str(exc)) from exc

    async def release(self, room: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._release(keys=[self._room_key(room)], args=[self.node.id])

    async def drain(self) -> None:
        self.node = self.node.with_(draining=True)
        with contextlib.suppress(RedisError, OSError):
            await self._heartbeat()


async def request_drain(url: str, node_id: str, *, prefix: str = PREFIX) -> bool:
    """Ask node ``node_id`` to drain (it sees the request at its next heartbeat);
    False if no such node is alive."""
    client = connect(url)
    try:
        if not await client.exists(f"{prefix}node:{node_id}"):
            return False
        await client.set(f"{prefix}drain:{node_id}", "1", ex=24 * 3600)
        return True
    except RedisError as exc:
        raise OSError(str(exc)) from exc
    finally:
        await client.aclose()
