"""One process, no Redis: every room is served here (``make run``)."""

from __future__ import annotations

from signaling.routing.interfaces import NodeInfo, Router


class LocalRouter(Router):
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def live_nodes(self) -> list[NodeInfo]:
        return [self.node.with_(load=self._load())]

    async def owner(self, room: str) -> NodeInfo | None:
        return self.node if room in self._rooms() else None

    async def place(self, room: str) -> NodeInfo:
        # Even draining: there is nowhere else to go.
        return self.node

    async def release(self, room: str) -> None:
        return None

    async def drain(self) -> None:
        self.node = self.node.with_(draining=True)
