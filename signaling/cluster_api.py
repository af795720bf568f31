"""HTTP routes for running a cluster: readiness, where a room lives, and the actions an
integration takes on a session from whichever node it reaches (docs/protocol.md,
"Cluster").

- ``GET /readyz``: 200 while this node takes new rooms; 503 while it drains or cannot
  reach Redis (``/healthz`` stays liveness only).
- ``GET /api/rooms/{room}/node`` (API key or a token of that room): the node serving the
  room, placing it if nobody does — for load balancers that route by room.
- ``DELETE /api/rooms/{room}`` (API key or a moderator's token): end the session.
- ``DELETE /api/rooms/{room}/participants/{participant}`` (same): remove someone; their
  token is revoked by the room's node.
"""

from __future__ import annotations

import hmac
import logging
import time

from aiohttp import web

from signaling.api import RestApi, _bearer
from signaling.cluster import Cluster
from signaling.errors import Forbidden, RoundtableError, Unavailable
from signaling.rooms import ENDED_AT_LEAST_SECONDS
from signaling.routing import Router, RoutingUnavailable
from signaling.store import StateStore
from signaling.tokens import TokenClaims

log = logging.getLogger(__name__)


class ClusterApi:
    def __init__(
        self, api: RestApi, api_key: str, store: StateStore, routing: Router, cluster: Cluster
    ) -> None:
        self._api = api
        self._api_key = api_key
        self._store = store
        self._routing = routing
        self._cluster = cluster

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/api/rooms/{room}/node", self.room_node)
        app.router.add_delete("/api/rooms/{room}", self.end_room)
        app.router.add_delete("/api/rooms/{room}/participants/{participant}", self.remove)

    async def _operator_or(self, request: web.Request, room: str) -> TokenClaims | None:
        """None for the API key, else the verified room token."""
        given = _bearer(request)
        if given is not None and hmac.compare_digest(given.encode(), self._api_key.encode()):
            return None
        return await self._api.authenticate(request, room)

    async def _moderator(self, request: web.Request, room: str) -> None:
        claims = await self._operator_or(request, room)
        if claims is not None and not claims.has("moderate"):
            raise Forbidden("forbidden", "Only a moderator or the operator may do this.")

    async def readyz(self, request: web.Request) -> web.Response:
        node = self._routing.node
        redis = "ok" if self._routing.healthy else "unreachable"
        if node.draining:
            status = "draining"
        elif not self._routing.healthy:
            status = "unavailable"
        else:
            status = "ready"
        body = {"status": status, "node": node.id, "redis": redis}
        return web.json_response(body, status=200 if status == "ready" else 503)

    async def room_node(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        await self._operator_or(request, room)
        try:
            node = await self._routing.place(room)
        except RoutingUnavailable:
            raise Unavailable() from None
        return web.json_response({"room": room, "node": node.id, "url": node.url})

    async def end_room(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        await self._moderator(request, room)
        record = await self._store.get_room(room)
        until = max(int(time.time()) + ENDED_AT_LEAST_SECONDS, record.expires_at if record else 0)
        # Revoked first, here: the room's node may be gone, the session still ends.
        await self._store.close_room(room, until)
        log.info("room %s: ended through the API", room)
        await self._cluster.end_room(room)
        return web.Response(status=204)

    async def remove(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        await self._moderator(request, room)
        pid = request.match_info["participant"]
        if not pid or len(pid) > 64:
            raise RoundtableError("not_found", "There is no such participant in this session.")
        await self._cluster.remove(room, pid)
        return web.Response(status=204)
