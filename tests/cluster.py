"""Real cluster parts for tests: ``roundtable serve`` nodes as subprocesses sharing one
redis-server, which a test may stop and start again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.ports import MEDIA_HOST, free_tcp_port, free_udp_port
from tests.process import WatchedProcess

BIN = Path(sys.executable).parent / "roundtable"


class RedisProcess:
    """redis-server on a fixed loopback port, so it can be stopped and started again at
    the same URL (a Redis outage and its recovery)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (make test installs it from Debian)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_tcp_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            # Persistent like a production Redis (AOF): a restart keeps the state.
            + ["--appendonly", "yes", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


class Node(WatchedProcess):
    """One ``roundtable serve`` of a cluster; its output is kept for failure messages."""

    def __init__(self, name: str, state: Path, shared: dict[str, str], **env: str) -> None:
        self.name = name
        self.port = free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = shared["ROUNDTABLE_API_KEY"]
        full = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ROUNDTABLE_")},
            **shared,
            "ROUNDTABLE_NODE_ID": name,
            "ROUNDTABLE_PORT": str(self.port),
            "ROUNDTABLE_HOST": "127.0.0.1",
            "ROUNDTABLE_PUBLIC_URL": self.url,
            "ROUNDTABLE_MEDIA_HOST": MEDIA_HOST,
            "ROUNDTABLE_MEDIA_PORT": str(free_udp_port()),
            "ROUNDTABLE_STATE_DIR": str(state),
            "ROUNDTABLE_LOG_LEVEL": "INFO",
            **env,
        }
        self._watch(
            subprocess.Popen(
                [str(BIN), "serve"],
                env=full,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )

    @classmethod
    def attach(cls, name: str, url: str, shared: dict[str, str]) -> Node:
        """A node started some other way (``serve --workers``): its HTTP side only."""
        node = cls.__new__(cls)
        node.name, node.url, node.api_key = name, url, shared["ROUNDTABLE_API_KEY"]
        return node

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)  # two at once may arrive as one
            self.proc.send_signal(signal.SIGTERM)  # a second one: at once, no drain
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token or self.api_key}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(self.url + path, headers=headers) as resp:
                return resp.status, await resp.json()

    async def delete(self, path: str, token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {token or self.api_key}"}
        async with aiohttp.ClientSession() as http:
            async with http.delete(self.url + path, headers=headers) as resp:
                return resp.status

    async def create_room(self, **body: Any) -> dict[str, Any]:
        """The client link joins directly and without the consent step unless asked."""
        body.setdefault("client_lobby", False)
        body.setdefault("client_consent", False)
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url + "/api/rooms", json=body, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
                return await resp.json()


class Nodes:
    """Nodes sharing one secret, API key and Redis; all stopped at the end."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.shared = {
            "ROUNDTABLE_SECRET": secrets.token_urlsafe(48),
            "ROUNDTABLE_API_KEY": secrets.token_urlsafe(24),
            "ROUNDTABLE_REDIS_URL": redis_url,
            # Every participant of these tests connects from 127.0.0.1; in the field each
            # has its own address. With the default (30 a minute) the retries of two
            # participants waiting out a dead node's lease used up the one address's joins,
            # and the failover test failed on too_many_requests, not on failover.
            "ROUNDTABLE_JOINS_PER_IP_PER_MINUTE": "600",
        }
        self.started: list[Node] = []

    def start(self, name: str, **env: str) -> Node:
        node = Node(name, self.tmp_path / name, self.shared, **env)
        self.started.append(node)
        return node

    def ready(self, *nodes: Node) -> None:
        for node in nodes:
            node.line_with("listening on")

    def stop(self) -> None:
        for node in self.started:
            node.stop()


class MovingPeer:
    """An aiortc participant that stays in its call the way the page does: it follows
    ``wrong_node``, and when its connection drops (node killed, drained or stopped) it
    reconnects through the URLs of its last ``welcome`` and publishes again, with new
    peer connections. Frames count over every connection it had."""

    def __init__(self, token: str, colour: tuple[int, int, int], url: str) -> None:
        self.token = token
        self.colour = colour
        self.urls = [url]
        self.peers: list[Any] = []
        self.id: str | None = None
        self.welcomes = 0
        self.told: list[dict[str, Any]] = []  # node_draining / server_shutdown payloads
        self._watch: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def peer(self) -> Any:
        return self.peers[-1]

    @property
    def url(self) -> str | None:
        return self.peer.client.url

    def frames(self, pid: str | None, kind: str = "video") -> int:
        return sum(p.frames[(pid, kind)] for p in self.peers)

    def frames_now(self, pid: str | None, kind: str = "video") -> int:
        """Frames on the current connection only (after a move: is media back?)."""
        return self.peer.frames[(pid, kind)] if self.peers else 0

    async def _try(self, url: str) -> bool:
        from tests.controlplane import MediaParticipant, SignalClient

        client = SignalClient()
        peer = MediaParticipant(client, self.colour)
        for event in ("node_draining", "server_shutdown"):
            client.sio.on(event, self.told.append)
        try:
            if not await client.connect(url, self.token):
                await peer.close()
                return False
            welcome = await client.wait("welcome")
        except Exception:
            await peer.close()
            return False
        self.peers.append(peer)
        self.id = welcome["you"]["id"]
        self.welcomes += 1
        self.urls = welcome.get("cluster") or self.urls
        if welcome["you"]["state"] != "waiting":
            await peer.publish()
        else:

            async def admitted(_: Any) -> None:
                peer._spawn(peer.publish())

            client.sio.on("admitted", admitted)
        return True

    async def join(self) -> None:
        assert await self._try(self.urls[0]), "first join refused"
        self._watch = asyncio.ensure_future(self._stay())

    async def _stay(self) -> None:
        while not self._closed:
            client = self.peer.client
            await client.wait("_disconnect", within=24 * 3600)
            errors = client.events.get("error") or []
            if errors and errors[-1].get("error") in ("removed", "room_ended", "lobby_denied"):
                return
            await self.peer.close()
            delay = 0.4  # as the page's reconnect (web/call.js RECONNECT): 0.4 s up to 1.5 s
            while not self._closed:
                for url in list(self.urls):
                    if await self._try(url):
                        break
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.5)
                    continue
                break

    async def close(self) -> None:
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
        for peer in self.peers:
            with contextlib.suppress(Exception):
                await peer.close()
