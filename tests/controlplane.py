"""Helpers for the control-plane tests: a real server on an ephemeral port, real JWTs,
and a python-socketio client that records what the server sends."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import socketio
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.app import HUB, STORE, build_app
from server.config import Config
from signaling.tokens import TokenService
from tests.ports import free_tcp_port, free_udp_port


@dataclass
class RunningServer:
    url: str
    config: Config
    app: web.Application

    @property
    def tokens(self) -> TokenService:
        return TokenService(self.config.secret, self.app[STORE])

    def token(
        self, room: str = "r_test", role: str = "client", name: str = "Name", **kw: Any
    ) -> str:
        return self.tokens.issue(room=room, role=role, name=name, ttl=kw.pop("ttl", 600), **kw)[0]

    async def create_room(self, **body: Any) -> dict[str, Any]:
        """``POST /api/rooms``; the client link joins directly unless a test asks otherwise."""
        body.setdefault("client_lobby", False)
        body.setdefault("client_consent", False)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{self.url}/api/rooms",
                json=body,
                headers={"Authorization": f"Bearer {self.config.api_key}"},
            ) as resp:
                assert resp.status == 201, await resp.text()
                return await resp.json()

    async def invite(
        self, room: str, token: str | None, body: Any = None, **extra: Any
    ) -> tuple[int, dict[str, Any]]:
        """``POST /api/rooms/{room}/invites`` with ``token`` as Bearer; (status, JSON)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"organisation": "DRV", "name": "Frau P", **extra} if body is None else body
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{self.url}/api/rooms/{room}/invites", json=body, headers=headers
            ) as resp:
                return resp.status, await resp.json()

    async def revoke_invite(self, room: str, token: str | None, invite_id: str) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as http:
            async with http.delete(
                f"{self.url}/api/rooms/{room}/invites/{invite_id}", headers=headers
            ) as resp:
                return resp.status

    @property
    def hub(self):
        return self.app[HUB]


def link_token(url: str) -> str:
    """The token in a ``…/join#token=<jwt>`` link."""
    return url.split("#token=", 1)[1]


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "secret": secrets.token_urlsafe(48),
        "api_key": secrets.token_urlsafe(24),
        "media_host": "127.0.0.1",
        "media_port": free_udp_port(),
        "state_dir": tmp_path / "state",
    }
    values.update(overrides)
    return Config(**values)


@asynccontextmanager
async def running_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[RunningServer]:
    if overrides.get("redis_url") and "port" not in overrides:
        # A node of a cluster is reached by its URL (``wrong_node`` redirects): fix it now.
        port = free_tcp_port()
        overrides = {"port": port, "public_url": f"http://127.0.0.1:{port}", **overrides}
    config = make_config(tmp_path, **overrides)
    app = build_app(config)
    server = TestServer(app, host="127.0.0.1", port=config.port)
    await server.start_server()
    try:
        yield RunningServer(str(server.make_url("")).rstrip("/"), config, app)
    finally:
        await server.close()


def raw_token(
    secret: str,
    *,
    drop: tuple[str, ...] = (),
    algorithm: str = "HS256",
    **overrides: Any,
) -> str:
    """A hand-made token: valid by default, with claims changed or dropped."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "roundtable",
        "aud": "roundtable",
        "sub": "p_hand",
        "room": "r_test",
        "role": "client",
        "name": "Hand Made",
        "grants": ["publish", "subscribe", "audio", "video", "see_client"],
        "lobby": False,
        "exp": now + 600,
        "nbf": now - 5,
        "iat": now - 5,
        "jti": secrets.token_urlsafe(8),
    }
    claims.update(overrides)
    for key in drop:
        claims.pop(key, None)
    return jwt.encode(claims, secret if algorithm != "none" else None, algorithm=algorithm)


@dataclass
class SignalClient:
    """A Socket.IO participant that records every event it receives."""

    sio: socketio.AsyncClient = field(
        default_factory=lambda: socketio.AsyncClient(reconnection=False)
    )
    events: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    refusal: dict[str, Any] | None = None
    url: str | None = None  # where it is connected: after a ``wrong_node``, the room's node
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        @self.sio.on("*")
        async def _any(event: str, *args: Any) -> None:
            self.events[event].append(args[0] if len(args) == 1 else args)
            self._changed.set()

        @self.sio.event
        async def connect_error(data: Any) -> None:
            self.refusal = data
            self._changed.set()

        @self.sio.event
        async def disconnect(*args: Any) -> None:
            self.events["_disconnect"].append(args)
            self._changed.set()

    async def connect(
        self, url: str, token: Any = None, headers: dict[str, str] | None = None, **auth: Any
    ) -> bool:
        payload = dict(auth)
        if token is not None:
            payload["token"] = token
        for _ in range(3):  # follow ``wrong_node`` to the room's node, as the page does
            self.refusal = None
            try:
                await self.sio.connect(
                    url,
                    auth=payload,
                    headers=headers or {},
                    transports=["websocket"],
                    wait_timeout=10,
                )
            except socketio.exceptions.ConnectionError:
                data = self.refusal.get("data") if isinstance(self.refusal, dict) else None
                if isinstance(data, dict) and data.get("error") == "wrong_node" and data.get("url"):
                    self.events["_wrong_node"].append(data)
                    url = data["url"]
                    continue
                return False
            self.url = url
            return True
        return False

    async def wait(self, event: str, predicate=None, within: float = 10.0) -> Any:
        """The first received ``event`` payload satisfying ``predicate`` (default: any)."""
        deadline = time.monotonic() + within
        while True:
            for payload in self.events.get(event, []):
                if predicate is None or predicate(payload):
                    return payload
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {event!r} within {within} s; got {dict(self.events)}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def call(self, event: str, data: Any = None) -> Any:
        return await self.sio.call(event, data, timeout=10)

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
        await self.sio.shutdown()
        # A refused handshake (e.g. a foreign Origin) leaves engine.io's HTTP session open.
        if getattr(self.sio.eio, "http", None) is not None and not self.sio.eio.http.closed:
            await self.sio.eio.http.close()


def refusal_code(client: SignalClient) -> str | None:
    if client.refusal is None:
        return None
    data = client.refusal.get("data") if isinstance(client.refusal, dict) else None
    assert isinstance(data, dict), client.refusal
    assert client.refusal["message"] == data["error"], client.refusal
    assert isinstance(data.get("message"), str) and data["message"]
    return data["error"]


class MediaParticipant:
    """A real aiortc participant that joins through Socket.IO like the page does:
    offers on its publish connection, answers the server's subscribe offers."""

    def __init__(self, client: SignalClient, colour: tuple[int, int, int]) -> None:
        from aiortc import RTCPeerConnection

        from tests.media import CLIENT_CONFIG

        self.client = client
        self.colour = colour
        self.pub = RTCPeerConnection(CLIENT_CONFIG)
        self.sub: RTCPeerConnection | None = None
        self.frames: dict[tuple[str, str], int] = defaultdict(int)
        self.colours: dict[str, tuple[int, int, int]] = {}
        self.mid_owner: dict[str, tuple[str, str]] = {}
        self.answers: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._answering = asyncio.Lock()
        self._closed = False
        client.sio.on("subscribe.offer", self._on_offer)
        client.sio.on("publish.restart", self._on_publish_restart)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_offer(self, offer: dict[str, Any]) -> None:
        self.client.events["subscribe.offer"].append(offer)
        if self._closed:
            return
        # Handlers run inside the client's read loop; answering needs an ack, so not here.
        self._spawn(self._answer(offer))

    async def _on_publish_restart(self, msg: Any) -> None:
        self.client.events["publish.restart"].append(msg)
        if not self._closed:
            self._spawn(self.restart_publish())

    async def restart_publish(self) -> None:
        """What the page does on ``publish.restart``: ``restartIce()`` on the publish
        connection and a re-offer with the new credentials (aiortc has no restartIce:
        sfu.ice does it on this client's connection, as tests.media.Peer does)."""
        from aiortc import RTCSessionDescription

        from sfu import ice

        ice.restart(self.pub)
        await self.pub.setLocalDescription(await self.pub.createOffer())
        ack = await self.client.call(
            "publish", {"type": "offer", "sdp": self.pub.localDescription.sdp}
        )
        await self.pub.setRemoteDescription(RTCSessionDescription(sdp=ack["sdp"], type="answer"))
        task = ice.resume(self.pub, ice.credentials(ack["sdp"]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, offer: dict[str, Any]) -> None:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        from tests.media import CLIENT_CONFIG

        async with self._answering:
            if self.sub is None:
                self.sub = RTCPeerConnection(CLIENT_CONFIG)
                self.sub.on("track", self._on_track)
            for t in offer["tracks"]:
                self.mid_owner[t["mid"]] = (t["participant"], t["kind"])
            await self.sub.setRemoteDescription(
                RTCSessionDescription(sdp=offer["sdp"], type="offer")
            )
            await self.sub.setLocalDescription(await self.sub.createAnswer())
            ack = await self.client.call(
                "subscribe.answer", {"type": "answer", "sdp": self.sub.localDescription.sdp}
            )
            self.answers.append(ack)

    def _on_track(self, track: Any) -> None:
        assert self.sub is not None
        transceiver = next(t for t in self.sub.getTransceivers() if t.receiver.track is track)
        self._spawn(self._consume(transceiver.mid, track))

    async def _consume(self, mid: str, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await track.recv()
                owner, kind = self.mid_owner.get(mid, ("?", track.kind))
                self.frames[(owner, kind)] += 1
                if kind == "video":
                    rgb = frame.to_ndarray(format="rgb24")
                    h, w, _ = rgb.shape
                    self.colours[owner] = tuple(int(v) for v in rgb[h // 2, w // 2])
        except MediaStreamError:
            pass

    async def publish(self, audio: bool = True, video: bool = True) -> dict[str, Any]:
        """Offer camera and microphone — whatever the token's rights (a hand-made client)."""
        from aiortc import RTCSessionDescription
        from aiortc.mediastreams import AudioStreamTrack

        from tests.media import ColourVideoTrack

        if audio:
            self.pub.addTrack(AudioStreamTrack())
        if video:
            self.pub.addTrack(ColourVideoTrack(self.colour))
        await self.pub.setLocalDescription(await self.pub.createOffer())
        ack = await self.client.call(
            "publish", {"type": "offer", "sdp": self.pub.localDescription.sdp}
        )
        if ack.get("ok"):
            await self.pub.setRemoteDescription(
                RTCSessionDescription(sdp=ack["sdp"], type="answer")
            )
        return ack

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pub.close()
        if self.sub is not None:
            await self.sub.close()
        await self.client.close()


class Clients:
    """Socket.IO clients (and aiortc participants) made by a test, all closed at its end."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self._made: list[SignalClient] = []
        self._media: list[MediaParticipant] = []

    def new(self) -> SignalClient:
        client = SignalClient()
        self._made.append(client)
        return client

    async def join(self, token: str) -> SignalClient:
        """Connect with ``token`` and wait for ``welcome``."""
        client = self.new()
        assert await client.connect(self.server.url, token), client.refusal
        await client.wait("welcome")
        return client

    async def join_media(self, token: str, colour: tuple[int, int, int]) -> MediaParticipant:
        client = self.new()
        peer = MediaParticipant(client, colour)
        self._media.append(peer)
        assert await client.connect(self.server.url, token), client.refusal
        await client.wait("welcome")
        return peer

    async def reload(self, page: SignalClient, token: str) -> SignalClient:
        """The same page loaded again: it shows the resume secret its tab kept and asks
        for a fresh start (no media to restart), as web/call.js does after a reload."""
        secret = page.events["welcome"][-1]["resume"]
        client = self.new()
        assert await client.connect(self.server.url, token, resume=secret, fresh=True), (
            client.refusal
        )
        await client.wait("welcome")
        return client

    async def refused(self, token: str) -> str | None:
        """Connect and expect a refusal; returns its code."""
        client = self.new()
        assert not await client.connect(self.server.url, token), "expected a refusal"
        return refusal_code(client)

    async def close(self) -> None:
        for peer in self._media:
            await peer.close()
        for client in self._made:
            await client.close()


def me(client: SignalClient) -> str:
    """The participant id a client was welcomed as."""
    return client.events["welcome"][0]["you"]["id"]


def roster_ids(roster: dict[str, Any]) -> set[str]:
    return {p["id"] for p in roster["participants"]}
