"""Choosing the node for a new room: the least loaded live node that is not draining."""

from __future__ import annotations

from signaling.routing.interfaces import NodeInfo


def least_loaded(nodes: list[NodeInfo], prefer: str | None = None) -> NodeInfo | None:
    """Fewest participants, then least CPU (in quarter cores: an idle node's few percent
    are noise), then fewest rooms; on a tie ``prefer`` (the node asking), which saves its
    caller a redirect."""
    # A node without a URL cannot be redirected to; it may still serve its own joins.
    candidates = [n for n in nodes if not n.draining and (n.url is not None or n.id == prefer)]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda n: (
            n.load.participants,
            int(n.load.cpu * 4),
            n.load.rooms,
            n.id != prefer,
            n.id,
        ),
    )
