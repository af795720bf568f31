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
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{self.url}/api/rooms",
                json=body,
                headers={"Authorization": f"Bearer {self.config.api_key}"},
            ) as resp:
                assert resp.status == 201, await resp.text()
                return await resp.json()

    @property
    def hub(self):
        return self.app[HUB]


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "secret": secrets.token_urlsafe(48),
        "api_key": secrets.token_urlsafe(24),
        "media_host": "127.0.0.1",
        "state_dir": tmp_path / "state",
    }
    values.update(overrides)
    return Config(**values)


@asynccontextmanager
async def running_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[RunningServer]:
    config = make_config(tmp_path, **overrides)
    app = build_app(config)
    server = TestServer(app, host="127.0.0.1", port=0)
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

    async def connect(self, url: str, token: Any = None, **auth: Any) -> bool:
        payload = dict(auth)
        if token is not None:
            payload["token"] = token
        try:
            await self.sio.connect(url, auth=payload, transports=["websocket"], wait_timeout=10)
        except socketio.exceptions.ConnectionError:
            return False
        return True

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


def refusal_code(client: SignalClient) -> str | None:
    if client.refusal is None:
        return None
    data = client.refusal.get("data") if isinstance(client.refusal, dict) else None
    assert isinstance(data, dict), client.refusal
    assert client.refusal["message"] == data["error"], client.refusal
    assert isinstance(data.get("message"), str) and data["message"]
    return data["error"]
