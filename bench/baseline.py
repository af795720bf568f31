"""The comparison point for ``--baseline``: a transcoding relay, the usual aiortc approach.

A minimal server that speaks the protocol subset the bench uses (``POST /api/rooms``
with the API key, Socket.IO connect with ``auth: {token}``, ``welcome``, ``publish``
with ack, ``subscribe.offer`` / ``subscribe.answer``, ``leave``; docs/protocol.md) and
relays media the way aiortc's examples do: every published track is decoded once and
shared through ``aiortc.contrib.media.MediaRelay``, and every subscriber's sender
re-encodes it. Tokens are roundtable's own (``signaling.tokens``), so the same bench
participants join either server unchanged. Not a product: no lobby, moderation or
limits — only what the load needs.

Run as ``python -m bench.baseline --port 0``; prints ``listening on URL`` like
``roundtable serve``. Secrets come from ``ROUNDTABLE_SECRET`` / ``ROUNDTABLE_API_KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import socketio
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay

from server.cli import until_stopped
from signaling.store import MemoryStore
from signaling.tokens import TokenService, new_id

log = logging.getLogger("bench.baseline")
CONFIG = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


@dataclass
class Member:
    pid: str
    sid: str
    room: str
    pub: RTCPeerConnection | None = None
    sub: RTCPeerConnection | None = None
    tracks: list[MediaStreamTrack] = field(default_factory=list)  # published, decoded
    sent: set[int] = field(default_factory=set)  # ids of source tracks added to `sub`
    mids: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    awaiting: bool = False
    dirty: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class TranscodingRelay:
    def __init__(self, secret: str, api_key: str) -> None:
        self.tokens = TokenService(secret, MemoryStore())
        self.api_key = api_key
        self.relay = MediaRelay()
        self.members: dict[str, Member] = {}  # by sid
        self.tasks: set[asyncio.Task[Any]] = set()
        self.sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
        self.sio.on("connect", self.connect)
        self.sio.on("disconnect", self.disconnect)
        self.sio.on("publish", self.publish)
        self.sio.on("subscribe.answer", self.subscribe_answer)
        self.sio.on("ice", self.ice)
        self.sio.on("leave", self.leave)

    # -- HTTP ---------------------------------------------------------------------------

    async def create_room(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").partition(" ")[2].strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            return web.json_response({"error": "api_key_invalid", "message": "no"}, status=401)
        room = new_id("r")
        cw, _ = self.tokens.issue(room=room, role="caseworker", name="Caseworker", ttl=3600)
        cl, _ = self.tokens.issue(room=room, role="client", name="Client", ttl=3600)
        base = f"{request.scheme}://{request.host}"
        return web.json_response(
            {
                "room": room,
                "caseworker_url": f"{base}/join#token={cw}",
                "client_url": f"{base}/join#token={cl}",
                "expires_at": "",
            },
            status=201,
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text="", content_type="text/plain")

    # -- Socket.IO ----------------------------------------------------------------------

    async def connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            claims = await self.tokens.authenticate(token)
        except Exception as exc:
            raise socketio.exceptions.ConnectionRefusedError("token_invalid") from exc
        member = Member(claims.sub, sid, claims.room)
        self.members[sid] = member
        self._spawn(self._welcome(member, claims))

    async def _welcome(self, member: Member, claims: Any) -> None:
        for _ in range(200):
            if self.sio.manager.is_connected(member.sid, "/"):
                break
            await asyncio.sleep(0.005)
        you = {
            "id": member.pid,
            "role": claims.role,
            "name": claims.name,
            "org": claims.org,
            "state": "admitted",
            "tracks": [],
            "muted": {"audio": False, "video": False},
        }
        welcome = {"you": you, "room": {"id": member.room}, "ice": {}}
        await self.sio.emit("welcome", welcome, to=member.sid)
        await self._offer(member)

    async def publish(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        member = self.members.get(sid)
        if member is None:
            return {"error": "forbidden", "message": "not joined"}
        pc = member.pub = RTCPeerConnection(CONFIG)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            # Decoded once by aiortc's receiver; MediaRelay shares the frames with every
            # subscriber's sender, each of which encodes them again.
            member.tracks.append(track)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        for other in self._room(member.room):
            if other is not member:
                self._spawn(self._offer(other))
        return {"ok": True, "type": "answer", "sdp": pc.localDescription.sdp}

    async def _offer(self, member: Member) -> None:
        async with member.lock:
            if member.awaiting:
                member.dirty = True
                return
            new = [
                (other, t)
                for other in self._room(member.room)
                if other is not member
                for t in other.tracks
                if id(t) not in member.sent
            ]
            if not new:
                return
            if member.sub is None:
                member.sub = RTCPeerConnection(CONFIG)
            for other, track in new:
                # A separate relay proxy per subscriber: each sender encodes on its own.
                sender = member.sub.addTrack(self.relay.subscribe(track, buffered=False))
                member.sent.add(id(track))
                member.mids[str(id(sender))] = (other.pid, track.kind, str(id(track)))
            await member.sub.setLocalDescription(await member.sub.createOffer())
            tracks = []
            for t in member.sub.getTransceivers():
                owner = member.mids.get(str(id(t.sender)))
                if owner is not None:
                    tracks.append(
                        {"mid": t.mid, "participant": owner[0], "kind": owner[1], "track": owner[2]}
                    )
            member.awaiting = True
            await self.sio.emit(
                "subscribe.offer",
                {"type": "offer", "sdp": member.sub.localDescription.sdp, "tracks": tracks},
                to=member.sid,
            )

    async def subscribe_answer(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        member = self.members.get(sid)
        if member is None or member.sub is None:
            return {"error": "invalid_payload", "message": "no offer"}
        await member.sub.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type="answer"))
        member.awaiting = False
        if member.dirty:
            member.dirty = False
            self._spawn(self._offer(member))
        return {"ok": True}

    async def ice(self, sid: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}  # aiortc puts its candidates in the SDP; nothing trickles

    async def leave(self, sid: str, data: Any = None) -> dict[str, Any]:
        await self._drop(sid)
        return {"ok": True}

    async def disconnect(self, sid: str, reason: Any = None) -> None:
        await self._drop(sid)

    async def _drop(self, sid: str) -> None:
        member = self.members.pop(sid, None)
        if member is None:
            return
        for pc in (member.pub, member.sub):
            if pc is not None:
                with contextlib.suppress(Exception):
                    await pc.close()

    def _room(self, room: str) -> list[Member]:
        return [m for m in self.members.values() if m.room == room]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for sid in list(self.members):
            await self._drop(sid)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def serve(host: str, port: int) -> None:
    relay = TranscodingRelay(os.environ["ROUNDTABLE_SECRET"], os.environ["ROUNDTABLE_API_KEY"])
    app = web.Application()
    app.router.add_post("/api/rooms", relay.create_room)
    app.router.add_get("/metrics", relay.metrics)
    app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
    relay.sio.attach(app, socketio_path="socket.io")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"transcoding relay listening on http://{host}:{bound}", flush=True)
    try:
        await until_stopped()
    finally:
        await relay.close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("aioice", "aiortc", "socketio", "engineio"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from sfu import aiortc_hooks

    aiortc_hooks.use_media_host(os.environ.get("ROUNDTABLE_MEDIA_HOST") or None)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
