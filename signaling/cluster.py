"""Actions that must reach the node serving a room, from whichever node is asked.

The HTTP API answers on every node, but a room's participants are connected to one
(``signaling.routing``). Ending a session, removing a participant or telling its
moderators about an invite's delivery is therefore done by the room's node: each action
runs here and is published to the other nodes, where it acts on the rooms they hold and
is a no-op elsewhere. With Redis the messages travel on python-socketio's Redis channel
(``ClusterManager``, the same manager that carries Socket.IO emits across nodes); one
process without Redis only runs them locally.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import socketio

from signaling.redis_store import fast_fail_options

log = logging.getLogger(__name__)

METHOD = "roundtable"  # beside python-socketio's own methods ("emit", "disconnect", …)
CHANNEL = "roundtable-socketio"

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class ClusterManager(socketio.AsyncRedisManager):
    """``AsyncRedisManager`` that also carries roundtable's room actions.

    Two changes to the library's manager: messages with ``method == "roundtable"`` go to
    ``on_action`` instead of the library's dispatcher (which ignores unknown methods), and
    an emit to one connection of this node is delivered directly, without the round trip
    through Redis — signalling of running calls (offers, rosters) never waits for Redis
    and keeps working while it is down.
    """

    def __init__(self, url: str) -> None:
        # No socket_timeout: the subscriber blocks reading messages by design.
        options = fast_fail_options()
        options.pop("socket_timeout")
        super().__init__(url, channel=CHANNEL, redis_options=options)
        self.on_action: Handler | None = None

    async def emit(self, event, data, namespace=None, room=None, skip_sid=None, **kwargs):  # type: ignore[override]
        target = kwargs.get("to") or room
        ns = namespace or "/"
        if (
            isinstance(target, str)
            and kwargs.get("callback") is None
            and self.is_connected(target, ns)
        ):
            kwargs.pop("to", None)
            return await super().emit(
                event, data, namespace=ns, room=target, skip_sid=skip_sid, ignore_queue=True
            )
        return await super().emit(
            event, data, namespace=namespace, room=room, skip_sid=skip_sid, **kwargs
        )

    async def publish_action(self, action: dict[str, Any]) -> None:
        await self._publish({"method": METHOD, "host_id": self.host_id, "action": action})

    async def _listen(self) -> AsyncIterator[Any]:  # type: ignore[override]
        async for message in super()._listen():
            data = _decode(message)
            if data is None or data.get("method") != METHOD:
                yield message
                continue
            if data.get("host_id") == self.host_id or self.on_action is None:
                continue
            action = data.get("action")
            if not isinstance(action, dict):
                continue
            try:
                await self.on_action(action)
            except Exception:
                log.exception("cluster action %s failed", action.get("do"))


def _decode(message: Any) -> dict[str, Any] | None:
    if isinstance(message, dict):
        return message
    try:
        data = json.loads(message)
    except (TypeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Cluster:
    """Room actions for every node: run here, and published to the others."""

    def __init__(self, manager: ClusterManager | None = None) -> None:
        self._manager = manager
        self._handler: Handler | None = None
        if manager is not None:
            manager.on_action = self._on_remote

    def handle(self, handler: Handler) -> None:
        """Who carries out actions on this node (``signaling.socket``)."""
        self._handler = handler

    async def _on_remote(self, action: dict[str, Any]) -> None:
        if self._handler is not None:
            await self._handler(action)

    async def _run(self, action: dict[str, Any]) -> None:
        if self._handler is not None:
            await self._handler(action)
        if self._manager is not None:
            await self._manager.publish_action(action)

    async def end_room(self, room: str) -> None:
        await self._run({"do": "end", "room": room})

    async def remove(self, room: str, pid: str) -> None:
        await self._run({"do": "remove", "room": room, "participant": pid})

    async def notify_moderators(self, room: str, event: str, payload: dict[str, Any]) -> None:
        await self._run(
            {"do": "notify_moderators", "room": room, "event": event, "payload": payload}
        )
