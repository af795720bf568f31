"""Socket.IO signalling (docs/protocol.md, "Socket.IO") on the app's aiohttp server.

Connect authenticates the token in ``auth`` and joins the room; every later event goes
through one dispatcher that rate-limits, validates and maps failures to the ``error``
event and the ack (``signaling.errors``), so no client input can raise into the library.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import engineio
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from signaling.chat import Chat
from signaling.cluster import Cluster
from signaling.errors import (
    InternalError,
    InvalidPayload,
    RoundtableError,
    TokenError,
    TooManyRequests,
    Unavailable,
    UnknownEvent,
    WrongNode,
    connect_refusal,
    socket_error,
)
from signaling.events import MAX_SDP_BYTES, PARSERS
from signaling.metrics import Metrics
from signaling.moderation import Moderation
from signaling.participant import Participant
from signaling.ratelimit import SlidingWindow, TokenBucket
from signaling.rooms import RoomHub
from signaling.routing import LocalRouter, NodeInfo, Router, RoutingUnavailable
from signaling.routing.interfaces import origin
from signaling.tokens import TokenService
from signaling.transport import (
    EIO_SID,
    UNDECODABLE_EVENT,
    Gate,
    HardenedServer,
    client_address,
    same_origin,
)

log = logging.getLogger(__name__)

SOCKETIO_PREFIX = "/socket.io/"


# Sockets under way (not yet authenticated) per address: the floor of the per-address cap.
UNAUTHENTICATED_PER_ADDRESS = 20


def handshake_limit(joins_per_minute: int) -> int:
    """New Engine.IO sessions per address and minute before HTTP 429."""
    return 2 * joins_per_minute + 10


# Shared state out of reach (Redis down): a join is refused ``unavailable`` at once.
UNREACHABLE = (RoutingUnavailable, RedisConnectionError, RedisTimeoutError, ConnectionError)

# Signalling liveness (docs/protocol.md, "Reconnecting"): see make_server.
PING_INTERVAL = 1.5  # s between engine.io pings
PING_TIMEOUT = 10.0  # s engine.io waits for a pong: a page that stays silent this long
LATE_PONG = 2.0  # s a pong may be late before the media is asked whether the page is there
MEDIA_QUIET = 2.0  # s without RTP/RTCP from the browser that, with a late pong, is a cut
LIVENESS_EVERY = 0.5  # s between checks

# engine.io's disconnect reasons that mean the network, not the page, ended a connection.
_NETWORK_LOST = frozenset(
    {engineio.AsyncServer.reason.PING_TIMEOUT, engineio.AsyncServer.reason.TRANSPORT_ERROR}
)


@dataclass(frozen=True, slots=True)
class SocketLimits:
    events_per_second: float = 50.0
    event_burst: float = 50.0
    joins_per_ip_per_minute: int = 30
    # An Engine.IO socket must send its namespace CONNECT (with a token) this soon, and
    # one address may hold this many sockets that have not: legitimate pages connect
    # within milliseconds, a descriptor-exhaustion attack holds them open.
    # Below the ping timeout (1.5 + 10 s, plus the 1 s sweep), so a silent socket is
    # always closed as unauthenticated.
    unauthenticated_seconds: float = 2.5
    unauthenticated_per_address: int = UNAUTHENTICATED_PER_ADDRESS


@dataclass(slots=True)
class _Connection:
    participant: Participant
    bucket: TokenBucket


def peer_origins(routing: Router, cluster_url: str | None) -> Callable[[], frozenset[str]]:
    """Origins of the cluster's nodes (and of its entry URL) whose pages may connect."""
    extra = frozenset({origin(cluster_url)} if cluster_url else ())
    return lambda: routing.origins | extra


def make_server(
    limits: SocketLimits,
    metrics: Metrics,
    *,
    client_manager: Any = None,
    origins: Callable[[], frozenset[str]] = frozenset,
) -> HardenedServer:
    """The Socket.IO server, made before the rooms so that they get their notifier
    (``SocketNotifier``) when they are made, and before the handlers that use the rooms."""

    def origin_allowed(given: str | None, environ: dict[str, Any]) -> bool:
        return same_origin(given, environ) or (given is not None and given in origins())

    return HardenedServer(
        gate=Gate(limits.unauthenticated_per_address, limits.unauthenticated_seconds),
        on_limit=metrics.limit_hit,
        async_mode="aiohttp",
        # With Redis: emits to connections of other nodes, and room actions
        # (``signaling.cluster``), travel through it.
        client_manager=client_manager,
        # Same origin only (Origin must equal where the page was served from, over
        # http or https); clients without Origin (non-browsers) still need a token.
        # A cluster's pages also connect to its other nodes (``wrong_node``, a move).
        cors_allowed_origins=origin_allowed,
        # Large enough for a 64 KiB SDP plus framing so that an oversized SDP gets a
        # clear `payload_too_large` from us instead of a dropped transport.
        max_http_buffer_size=4 * MAX_SDP_BYTES,
        # A vanished client (laptop lid closed, network gone) is noticed within 4 s
        # (engine.io's default: 45 s), so the others see "reconnecting" at once: a ping
        # every 1.5 s, and SignalingSocket's liveness watch closes a connection whose
        # pong is LATE_PONG overdue *and* whose browser the SFU has not heard for
        # MEDIA_QUIET. engine.io's own timeout is long: a page too busy to answer pings
        # (a loaded machine: 2.5 s cost browser tests their signalling at load 25+)
        # still sends media, and that is no cut.
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        logger=False,
        engineio_logger=False,
    )


class SocketNotifier:
    """How the rooms reach their clients (``signaling.rooms.Notifier``) over Socket.IO:
    an event to one connection, or the reason and a disconnect."""

    def __init__(self, sio: HardenedServer) -> None:
        self.sio = sio
        self.connections: dict[str, _Connection] = {}

    async def send(self, sid: str, event: str, payload: dict[str, Any]) -> None:
        await self.sio.emit(event, payload, to=sid)

    async def drop(self, sid: str, error: RoundtableError | None) -> None:
        if self.connections.pop(sid, None) is None:
            # Not (yet) a connection of ours: its connect handler is still running and
            # refuses it itself once it sees its participant gone.
            return
        if error is not None:
            await self.sio.emit("error", socket_error(error), to=sid)
        await self.sio.disconnect(sid)


class SignalingSocket:
    """The Socket.IO handlers: joins, client events, room actions from other nodes."""

    def __init__(
        self,
        hub: RoomHub,
        tokens: TokenService,
        metrics: Metrics,
        limits: SocketLimits,
        *,
        notifier: SocketNotifier,
        routing: Router | None = None,
        cluster: Cluster | None = None,
        cluster_url: str | None = None,
    ) -> None:
        self._hub = hub
        self._routing = routing or LocalRouter(NodeInfo("local", None))
        self._cluster = cluster or Cluster()
        self._cluster.handle(self._on_cluster_action)
        self._cluster_url = cluster_url
        self._tokens = tokens
        self._metrics = metrics
        self._limits = limits
        self._joins = SlidingWindow(limits.joins_per_ip_per_minute, 60.0)
        self._handshakes = SlidingWindow(handshake_limit(limits.joins_per_ip_per_minute), 60.0)
        self._notifier = notifier
        # Who has joined, by sid: shared with the notifier, which forgets a connection
        # it drops (its disconnect is then not a participant's departure).
        self._connections = notifier.connections
        self._moderation = Moderation(hub, tokens)
        self._chat = Chat(hub)
        # Drops that must follow an ack (``room.end``); cancelled at shutdown.
        self._tasks: set[asyncio.Task[None]] = set()
        self._liveness: asyncio.Task[None] | None = None  # runs while anyone is connected
        self.sio = notifier.sio
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        self.sio.on("*", self._event)

    def attach(self, app: web.Application) -> None:
        self.sio.attach(app, socketio_path="socket.io")
        app.middlewares.append(self._handshake_limit)

    @web.middleware
    async def _handshake_limit(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The cheapest refusal of a join flood: before engine.io does any work.

        A new Engine.IO session (a request to /socket.io/ without ``sid``) from an address
        that opened too many in the last minute gets 429 at once: no socket, no upgrade,
        no token to verify. Well above the join limit (``handshake_limit``), so that a
        client a little over it still learns why from the join's own refusal
        (``too_many_requests`` in ``connect_error``), and a page whose session never got as
        far as joining (a reload during the handshake) is not punished.
        """
        if request.path.startswith(SOCKETIO_PREFIX) and "sid" not in request.query:
            if not self._handshakes.allow(request.remote or ""):
                self._metrics.refused("too_many_requests")
                self._metrics.limit_hit("handshakes_per_address")
                raise TooManyRequests(
                    "too_many_requests", "Too many connections from your address; wait a minute."
                )
        return await handler(request)

    # -- handlers -----------------------------------------------------------------------

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        # From the transport only (aiohttp's request.remote, proxy-aware there), never
        # from anything the client sends.
        address = client_address(environ)
        try:
            if not self._joins.allow(address):
                self._metrics.limit_hit("joins_per_address")
                raise TooManyRequests(
                    "too_many_requests", "Too many joins from your address; wait a minute."
                )
            if auth is None:
                auth = {}
            if not isinstance(auth, dict):
                raise TokenError("token_missing", "Connect with auth: {token}.")
            room = auth.get("room")
            if room is not None and not isinstance(room, str):
                raise TokenError("token_wrong_room", "The token is for another session.")
            resume = auth.get("resume")
            if resume is not None and (not isinstance(resume, str) or len(resume) > 64):
                raise InvalidPayload("invalid_payload", "'resume' must be a short string.")
            claims = await self._tokens.authenticate(auth.get("token"), room=room)
            if claims.consent and auth.get("consent") is not True:
                # The page sends it once the person ticked the box; the server, not the
                # page, makes sure nobody skips it.
                raise RoundtableError(
                    "consent_required", "Agree to the consent text before joining."
                )
            # A room is served by one node; another node sends the client there.
            owner = await self._routing.place(claims.room)
            if owner.id != self._routing.node.id:
                raise WrongNode(owner.id, owner.url)
            if resume and auth.get("fresh") is not True:
                # The same page back after a network cut: same participant, same media.
                found = self._hub.resume(claims, resume, sid)
                if found is not None:
                    self._resumed(sid, environ, *found)
                    return
            try:
                # Room checks first: a full room must not spend a single-use invite.
                self._hub.check_room(claims)
            except RoundtableError as err:
                if err.code == "room_locked":
                    self._tell_moderators(claims, "lobby.refused", "room_locked")
                raise
            # An invite is spent on first use; coming back to one's own seat (reconnect,
            # reload) does not spend it again (docs/protocol.md, "Invites").
            resumed = await self._hub.present_anywhere(claims)
            if not (resumed or self._hub.seated_before(claims)):
                await self._tokens.consume_invite(claims)
            takeover = bool(resume) and self._hub.owns_seat(claims, resume)
            try:
                participant = await self._hub.join(claims, sid, takeover=takeover)
            except RoundtableError as err:
                if err.code == "seat_taken":
                    self._tell_moderators(claims, "seat.conflict", "seat_taken")
                raise
            if not participant.active:
                # A newer connection of the same link took the seat while this one was
                # being told about the connection it replaced (docs/protocol.md).
                raise RoundtableError("replaced", "You joined from another window.")
        except RoundtableError as err:
            self._metrics.refused(err.code)
            log.info("connect %s refused: %s", sid, err.code)
            raise connect_refusal(err) from None
        except UNREACHABLE as exc:
            self._metrics.refused("unavailable")
            log.warning(
                "connect %s refused: shared state unreachable (%s)", sid, type(exc).__name__
            )
            raise connect_refusal(Unavailable()) from None
        except Exception:
            log.exception("connect %s failed", sid)
            self._metrics.refused("internal")
            raise connect_refusal(InternalError()) from None
        self.sio.gate.authenticated(environ.get(EIO_SID, ""))
        if resumed:
            self._metrics.resumes.inc()
        self._connections[sid] = _Connection(
            participant, TokenBucket(self._limits.events_per_second, self._limits.event_burst)
        )
        self._watch_liveness()
        self._hub.spawn_for(participant, self._welcome(sid, participant))

    def _watch_liveness(self) -> None:
        if self._liveness is None or self._liveness.done():
            self._liveness = asyncio.get_running_loop().create_task(self._liveness_loop())

    async def _liveness_loop(self) -> None:
        """Tell a cut from a busy page: a connection whose pong is late and whose browser
        sends no media either is closed as lost (the participant is 'reconnecting' for
        the others within about 4 s); a late pong alone waits for engine.io's timeout.
        Ends when nobody is connected."""
        while self._connections:
            await asyncio.sleep(LIVENESS_EVERY)
            for sid, conn in list(self._connections.items()):
                try:
                    late = self.sio.pong_overdue(sid)
                    if late < LATE_PONG:
                        continue
                    quiet = self._hub.media_silence(conn.participant)
                    if quiet is None or quiet < MEDIA_QUIET:
                        continue
                    log.info(
                        "connection %s of %s: pong %.1f s late, no media for %.1f s: lost",
                        sid,
                        conn.participant.id,
                        late,
                        quiet,
                    )
                    await self.sio.close_lost(sid)
                except Exception:
                    log.exception("liveness check of %s failed", sid)

    def _resumed(
        self, sid: str, environ: dict[str, Any], participant: Participant, previous: str
    ) -> None:
        self._metrics.resumes.inc()
        old = self._connections.pop(previous, None)
        self.sio.gate.authenticated(environ.get(EIO_SID, ""))
        self._connections[sid] = _Connection(
            participant,
            old.bucket
            if old is not None
            else TokenBucket(self._limits.events_per_second, self._limits.event_burst),
        )
        self._watch_liveness()
        if old is not None and previous != sid:
            # The server had not noticed the old connection drop yet: close it quietly
            # (its disconnect finds no participant any more). Not through the notifier's
            # drop, which closes only what is still among the connections: the old one
            # was taken out above, and stayed open until engine.io's ping timeout.
            self._hub.spawn_for(participant, self.sio.disconnect(previous))
        self._hub.spawn_for(participant, self._welcome(sid, participant, resumed=True))

    def _tell_moderators(self, claims: Any, event: str, reason: str) -> None:
        """Someone was kept out (locked room, seat in use): the caseworker sees who."""
        self._hub.spawn_in(
            claims.room,
            self._hub.notify_moderators(
                claims.room,
                event,
                {
                    "participant": claims.sub,
                    "name": claims.name,
                    "role": claims.role,
                    "reason": reason,
                },
            ),
        )

    async def _welcome(self, sid: str, participant: Participant, resumed: bool = False) -> None:
        # python-socketio sends the CONNECT packet after the connect handler returns;
        # `welcome` must follow it, so wait until the library reports the client connected.
        for _ in range(200):
            if self.sio.manager.is_connected(sid, "/"):
                break
            await asyncio.sleep(0.005)
        else:
            return
        if self._connections.get(sid) is None or not participant.active:
            return
        welcome = self._hub.welcome(participant)
        welcome["cluster"] = await self.cluster_urls()
        # This node's own public URL: the page may know it by another address, and must
        # not take it for another node when its own network fails.
        welcome["node_url"] = self._routing.node.url
        # Only this page learns the secret that lets it resume this seat.
        welcome.update(
            resume=participant.resume_secret,
            resumed=resumed,
            reconnect_grace_seconds=self._hub.reconnect_grace,
        )
        await self._notifier.send(sid, "welcome", welcome)
        if resumed:
            await self._hub.back(participant)
        else:
            await self._hub.start(participant)

    async def cluster_urls(self) -> list[str]:
        """Where a page reconnects when its node is gone: the load balancer in front of
        the cluster if there is one, else every live node (this one first)."""
        if self._cluster_url:
            return [self._cluster_url]
        try:
            nodes = await self._routing.live_nodes()
        except RoutingUnavailable:
            nodes = []
        me = self._routing.node.id
        ordered = sorted(nodes, key=lambda n: (n.id != me, n.draining, n.id))
        return [n.url for n in ordered if n.url]

    async def _on_cluster_action(self, action: dict[str, Any]) -> None:
        """A room action from the REST API of any node; only the room's node acts."""
        room = action.get("room")
        if not isinstance(room, str) or self._hub.room(room) is None:
            return
        what = action.get("do")
        if what == "end":
            await self._hub.end_room(room)
        elif what == "remove":
            target = self._hub.room(room).get(str(action.get("participant")))  # type: ignore[union-attr]
            if target is None or not target.active:
                return
            log.info("room %s: %s removed through the API", room, target.id)
            await self._tokens.revoke(target.claims)
            await self._hub.expel(
                target, RoundtableError("removed", "You were removed from this session.")
            )
        elif what == "notify_moderators":
            payload = action.get("payload")
            if isinstance(payload, dict):
                await self._hub.notify_moderators(room, str(action.get("event")), payload)

    async def _disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self._connections.pop(sid, None)
        if conn is None:
            return
        if reason in _NETWORK_LOST:
            # The network went (no answer to pings, a broken transport): still in the
            # call while it may come back (reconnect grace), media kept for an ICE restart.
            await self._hub.dropped(conn.participant)
        else:
            # The page closed its connection (tab closed, reload, browser quit): gone now;
            # for the host, the room waits (host grace); the seat stays theirs.
            await self._hub.disconnected(conn.participant)

    async def _event(self, event: Any, sid: str, *args: Any) -> dict[str, Any]:
        conn = self._connections.get(sid)
        try:
            if conn is None:
                raise RoundtableError("forbidden", "This connection has left the session.")
            if not conn.bucket.allow():
                self._metrics.limit_hit("events_per_connection")
                raise TooManyRequests("too_many_requests", "Too many events; slow down.")
            if event == UNDECODABLE_EVENT:
                self._metrics.limit_hit("undecodable_event")
                raise InvalidPayload("invalid_payload", "The event could not be decoded.")
            parse = PARSERS.get(event) if isinstance(event, str) else None
            if parse is None:
                raise UnknownEvent("unknown_event", "Unknown event.")
            payload = parse(args)
            return await self._handle(event, conn.participant, payload)
        except RoundtableError as err:
            return await self._refuse(sid, err)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event from %s failed", sid)
            return await self._refuse(sid, InternalError())

    async def _refuse(self, sid: str, err: RoundtableError) -> dict[str, Any]:
        self._metrics.event_errors.labels(reason=err.code).inc()
        body = socket_error(err)
        # Both: the ack for clients that asked for one, the event for those that did not.
        await self.sio.emit("error", body, to=sid)
        return body

    async def _handle(
        self, event: str, participant: Participant, payload: dict[str, Any]
    ) -> dict[str, Any]:
        if event == "publish":
            answer = await self._hub.publish(participant, payload["sdp"])
            return {"ok": True, "type": "answer", "sdp": answer}
        if event == "subscribe.answer":
            await self._hub.subscribe_answer(participant, payload["sdp"])
            return {"ok": True}
        if event == "ice":
            await self._hub.ice(participant, payload["pc"], payload["candidate"])
            return {"ok": True}
        if event == "leave":
            # On purpose: the seat is given up (a single-use invite cannot come back).
            await self._hub.leave(participant, forfeit=True)
            return {"ok": True}
        if event == "ice.restart":
            self._hub.restart_ice(participant)
            return {"ok": True}
        if event == "self.mute":
            self._hub.set_self_muted(participant, payload["kind"], payload["muted"])
            return {"ok": True}
        if event == "quality":
            self._hub.set_quality(participant, payload["level"])
            return {"ok": True}
        if event == "view":
            self._hub.set_view(participant, payload["tiles"])
            return {"ok": True}
        if event == "chat.send":
            return {"ok": True, "id": await self._chat.send(participant, payload["text"])}
        if event == "chat.enable":
            await self._chat.set_enabled(participant, payload["enabled"])
            return {"ok": True}
        if event in ("screen.share", "hand"):
            await self._hub.set_presence(participant, event, payload)
            return {"ok": True}
        if event == "ice.refresh":
            return {"ok": True, "ice": self._hub.refresh_ice(participant)}
        mod = self._moderation
        if event == "lobby.admit":
            await mod.admit(participant, payload["participant"])
        elif event == "lobby.deny":
            await mod.deny(participant, payload["participant"])
        elif event == "moderate.mute":
            await mod.mute(participant, payload["participant"], payload["kind"])
        elif event == "moderate.remove":
            await mod.remove(participant, payload["participant"])
        elif event == "unmute":
            mod.unmute(participant, payload["kind"])
        elif event == "room.lock":
            await mod.lock(participant, payload["locked"])
        elif event == "room.extend":
            return {"ok": True, **await self._hub.extend(participant, payload["minutes"])}
        elif event == "room.end":
            await mod.end(participant)
            self._after_ack(
                participant.sid, RoundtableError("room_ended", "This session has ended.")
            )
        else:
            raise UnknownEvent("unknown_event", "Unknown event.")  # pragma: no cover
        return {"ok": True}

    def _after_ack(self, sid: str, error: RoundtableError) -> None:
        """Drop a connection once the ack of the current event has gone out."""

        async def later() -> None:
            # The ack is queued when the handler returns; give it a moment on the wire.
            await asyncio.sleep(0.1)
            await self._notifier.drop(sid, error)

        task = asyncio.get_running_loop().create_task(later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def move_all(self, event: str, message: str) -> None:
        """Tell every participant why (``event``: ``node_draining`` / ``server_shutdown``,
        with where to reconnect), then close its connection without it leaving its room:
        a reconnect elsewhere is the same participant (admitted, its invite not spent)."""
        me = self._routing.node.url
        urls = [u for u in await self.cluster_urls() if u != me] or ([me] if me else [])
        body = {"error": event, "message": message, "cluster": urls}
        sids = list(self._connections)
        for sid in sids:
            try:
                await self.sio.emit(event, body, to=sid)
            except Exception:
                log.debug("%s to %s failed", event, sid, exc_info=True)
        if sids:
            await asyncio.sleep(0.2)  # the events on the wire before the close
        for sid in sids:
            try:
                await self._notifier.drop(sid, None)
            except Exception:
                log.debug("disconnect %s failed", sid, exc_info=True)

    async def shutdown(self) -> None:
        """Close every client connection (aiohttp ``on_shutdown``).

        Open websockets keep aiohttp's shutdown waiting for its timeout, so they are closed
        before the server waits for its handlers, not in ``cleanup_ctx``.
        """
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._liveness is not None:
            self._liveness.cancel()
            await asyncio.gather(self._liveness, return_exceptions=True)
        await self.sio.stop_sweeping()
        # Never a bare disconnect: the page says why, and reconnects (to another node
        # of a cluster, or to this one when it is back).
        await self.move_all("server_shutdown", "The server is restarting; reconnecting…")
        # Not engine.io's disconnect-all: it waits for each socket's send queue to drain,
        # forever for a client that has already gone.
        # A None in the send queue is engine.io's own "writer, stop" marker: the websocket is
        # closed at once instead of when the client gets round to it.
        for eio_socket in list(self.sio.eio.sockets.values()):
            await eio_socket.close(wait=False)
            eio_socket.queue.put_nowait(None)
        await self.sio.shutdown()
