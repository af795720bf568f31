"""Which node serves which room (LiveKit's ``pkg/routing``, in small).

One interface (``Router`` in ``interfaces``) with two implementations: ``LocalRouter``
for one process without Redis (``make run``: every room is ours), ``RedisRouter`` for a
cluster (node heartbeats and room leases in Redis). ``create_router`` picks one; nothing
else knows which is in use. Choosing a node for a new room is ``selector``.
"""

from __future__ import annotations

from signaling.routing.interfaces import (
    NodeInfo,
    NodeLoad,
    Router,
    RoutingUnavailable,
)
from signaling.routing.local import LocalRouter

__all__ = [
    "LocalRouter",
    "NodeInfo",
    "NodeLoad",
    "Router",
    "RoutingUnavailable",
    "create_router",
]


def create_router(node: NodeInfo, redis_url: str | None) -> Router:
    """The Redis router when Redis is configured, else the local one."""
    if redis_url:
        from signaling.routing.redis import RedisRouter

        return RedisRouter(node, redis_url)
    return LocalRouter(node)
