"""The routing interface: nodes with a heartbeat and a load, rooms pinned to one node."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

# A node that has not renewed its heartbeat for this long is dead; its rooms move on the
# next join. Short, because a participant of a killed node waits this long (plus ICE) for
# its media to come back; renewed three times per lease so one slow Redis round trip does
# not drop a healthy node.
NODE_LEASE_SECONDS = 5.0
ROOM_LEASE_SECONDS = 5.0
RENEW_EVERY_SECONDS = NODE_LEASE_SECONDS / 4


class RoutingUnavailable(Exception):
    """The shared routing state cannot be read or written (Redis unreachable)."""


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """What a node reports with each heartbeat; ``selector`` picks the least loaded."""

    rooms: int = 0
    participants: int = 0
    packets_per_second: float = 0.0
    cpu: float = 0.0  # share of one core this process used since the last heartbeat

    def to_dict(self) -> dict[str, Any]:
        return {
            "rooms": self.rooms,
            "participants": self.participants,
            "packets_per_second": round(self.packets_per_second, 1),
            "cpu": round(self.cpu, 3),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeLoad:
        return cls(
            int(data.get("rooms", 0)),
            int(data.get("participants", 0)),
            float(data.get("packets_per_second", 0.0)),
            float(data.get("cpu", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the others see it: ``url`` is where browsers reach it."""

    id: str
    url: str | None
    draining: bool = False
    load: NodeLoad = field(default_factory=NodeLoad)

    def with_(self, **changes: Any) -> NodeInfo:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "draining": self.draining,
            "load": self.load.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeInfo:
        return cls(
            str(data["id"]),
            data.get("url"),
            bool(data.get("draining", False)),
            NodeLoad.from_dict(data.get("load") or {}),
        )


def origin(url: str) -> str:
    """``https://host:port`` of a URL (what a browser sends as Origin)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


LoadProbe = Callable[[], NodeLoad]
RoomsProbe = Callable[[], list[str]]


class Router(ABC):
    """Room → node routing (the shape of LiveKit's ``routing.Router``).

    ``start`` registers this node and keeps its heartbeat (and the leases of the rooms it
    serves, from ``rooms``) alive until ``stop``. ``place`` is the one question a join
    asks: which node serves this room — claiming it for the least-loaded live node,
    atomically, when nobody does.
    """

    def __init__(self, node: NodeInfo) -> None:
        self.node = node
        # Set when an operator asks this node to drain (``roundtable drain NODE``).
        self.drain_requested = asyncio.Event()
        self._load: LoadProbe = NodeLoad
        self._rooms: RoomsProbe = list

    def watch(self, load: LoadProbe, rooms: RoomsProbe) -> None:
        """Where heartbeats read this node's load and the rooms it must keep leased."""
        self._load = load
        self._rooms = rooms

    @property
    def origins(self) -> frozenset[str]:
        """Origins (``scheme://host:port``) of every node seen in the cluster, dead ones
        included: a page loaded from a node that has gone still reconnects to the others,
        which must accept its Origin (and its CSP must name them)."""
        return frozenset()

    @property
    def draining(self) -> bool:
        return self.node.draining

    @property
    def healthy(self) -> bool:
        """Was the shared state reachable at the last heartbeat? (``/readyz``)"""
        return True

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None:
        """Unregister: this node's rooms are free for others at once."""

    @abstractmethod
    async def live_nodes(self) -> list[NodeInfo]:
        """Nodes with a current heartbeat, this one included while it runs."""

    @abstractmethod
    async def owner(self, room: str) -> NodeInfo | None:
        """The live node serving ``room`` now, if any."""

    @abstractmethod
    async def place(self, room: str) -> NodeInfo:
        """The node that serves ``room``: its live owner, or the least-loaded live node
        that is not draining, pinned atomically. Raises ``RoutingUnavailable``."""

    @abstractmethod
    async def release(self, room: str) -> None:
        """This node no longer serves ``room`` (emptied, ended, drained)."""

    @abstractmethod
    async def drain(self) -> None:
        """No new room is placed here; rooms already here stay until released."""
