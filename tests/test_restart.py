"""A restart forgets nothing that keeps people out: a real `roundtable serve` is killed
with SIGKILL and started again on the same state directory (the embedded SQLite store)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp

from tests.controlplane import SignalClient, link_token, me, refusal_code
from tests.test_cli import Serve


async def _post(url: str, token: str, body: dict) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 201, await r.text()
            return await r.json()


async def _refused(url: str, token: str) -> str | None:
    client = SignalClient()
    try:
        assert not await client.connect(url, token), "expected a refusal"
        return refusal_code(client)
    finally:
        await client.close()


def _start(state: Path) -> tuple[Serve, str]:
    serve = Serve(state)
    url = serve.line_with("listening on").rsplit(" ", 1)[1]
    serve.line_with("curl -X POST")
    return serve, url


async def test_a_restart_forgets_nothing_after_kill_9(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first, url = _start(state)
    try:
        api_key = json.loads((state / "secrets.json").read_text())["api_key"]
        room = await _post(f"{url}/api/rooms", api_key, {})
        ended = await _post(f"{url}/api/rooms", api_key, {})
        cw_token = link_token(room["caseworker_url"])
        removed_invite = await _post(
            f"{url}/api/rooms/{room['room']}/invites",
            cw_token,
            {"organisation": "DRV", "name": "Frau P", "waiting_room": False},
        )
        spent_invite = await _post(
            f"{url}/api/rooms/{room['room']}/invites",
            cw_token,
            {"organisation": "IHK", "name": "Herr K", "waiting_room": False},
        )
        cw, partner, spent, ender = SignalClient(), SignalClient(), SignalClient(), SignalClient()
        try:
            assert await cw.connect(url, cw_token), cw.refusal
            assert await partner.connect(url, link_token(removed_invite["invite_url"]))
            assert await spent.connect(url, link_token(spent_invite["invite_url"]))
            await partner.wait("welcome")
            await spent.wait("welcome")
            ack = await cw.call("moderate.remove", {"participant": me(partner)})
            assert ack == {"ok": True}, ack
            assert (await spent.call("leave", {})) == {"ok": True}
            assert await ender.connect(url, link_token(ended["caseworker_url"]))
            await ender.wait("welcome")
            assert (await ender.call("room.end", {})) == {"ok": True}
        finally:
            for c in (cw, partner, spent, ender):
                await c.close()
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)

    second, url = _start(state)
    try:
        assert await _refused(url, link_token(removed_invite["invite_url"])) == "token_revoked"
        assert await _refused(url, link_token(spent_invite["invite_url"])) == "invite_used"
        assert await _refused(url, link_token(ended["client_url"])) == "room_closed"
        assert await _refused(url, link_token(ended["caseworker_url"])) == "room_closed"
        # The session that was not ended goes on.
        cw = SignalClient()
        try:
            assert await cw.connect(url, cw_token), cw.refusal
            await cw.wait("welcome")
        finally:
            await cw.close()
    finally:
        assert second.stop() == 0
    await asyncio.sleep(0)
