"""signaling.routing: the node selector, the local router and the Redis router on a real
redis-server (leases, atomic placement, takeover from a dead node, drain)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from signaling.routing import LocalRouter, NodeInfo, NodeLoad, create_router
from signaling.routing.redis import RedisRouter
from signaling.routing.selector import least_loaded


def _node(node_id: str, participants: int = 0, cpu: float = 0.0, **kw) -> NodeInfo:
    return NodeInfo(node_id, f"http://{node_id}", load=NodeLoad(1, participants, 0.0, cpu), **kw)


def test_least_loaded_prefers_few_participants_then_cpu_then_the_asking_node() -> None:
    nodes = [_node("a", 4), _node("b", 2, cpu=0.9), _node("c", 2, cpu=0.1)]
    assert least_loaded(nodes).id == "c"
    assert least_loaded(nodes[:2] + [_node("c", 2, cpu=0.85)], prefer="c").id == "c"
    assert least_loaded([_node("a"), _node("b")], prefer="b").id == "b"
    # A draining node takes no new room; a node without URL only its own.
    assert least_loaded([_node("a", draining=True), _node("b", 9)]).id == "b"
    assert least_loaded([NodeInfo("x", None)], prefer="y") is None
    assert least_loaded([_node("a", draining=True)]) is None


async def test_the_local_router_serves_every_room_itself() -> None:
    router = create_router(NodeInfo("solo", None), None)
    assert isinstance(router, LocalRouter)
    await router.start()
    assert (await router.place("r_1")).id == "solo"
    await router.drain()
    assert (await router.place("r_2")).id == "solo" and router.draining
    await router.stop()


@pytest.mark.redis
async def test_redis_routers_pin_a_room_once_and_take_over_from_a_dead_node(
    redis_url: str,
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    a = RedisRouter(_node("a"), redis_url, prefix=prefix)
    b = RedisRouter(_node("b"), redis_url, prefix=prefix)
    rooms_a: list[str] = []
    a.watch(lambda: NodeLoad(len(rooms_a), 0, 0.0, 0.0), lambda: list(rooms_a))
    await a.start()
    await b.start()
    try:
        assert [n.id for n in await a.live_nodes()] == ["a", "b"]
        # Both ask at once: one placement wins, both see the same node.
        placed = await asyncio.gather(*(r.place(f"r_{i}") for i in range(5) for r in (a, b)))
        for i in range(5):
            assert placed[2 * i].id == placed[2 * i + 1].id
        # A room pinned to a node whose heartbeat is gone is free at once.
        first = await a.place("r_dead")
        owner, other = (a, b) if first.id == "a" else (b, a)
        await owner._redis.delete(f"{prefix}node:{first.id}")  # a lease running out
        assert (await other.place("r_dead")).id == other.node.id
        # A draining node gets no new room (both beat again).
        await a._heartbeat()
        await b._heartbeat()
        await b.drain()
        assert (await b.place("r_new")).id == "a"
        assert (await b.owner("r_new")).id == "a"
    finally:
        await a.stop()
        await b.stop()
