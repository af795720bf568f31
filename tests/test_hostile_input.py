"""What an outside attack run found, each as a test against a real server.

Raw clients do what the page never does: emit reserved event names, hold Engine.IO
sockets without authenticating, send absurdly nested JSON, join one link 60 times at once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from server.app import SOCKET
from tests.controlplane import Clients, RunningServer, me, roster_ids, running_server

ROOM = "r_hostile"


@pytest.fixture
async def server(tmp_path: Path):
    async with running_server(tmp_path, joins_per_ip_per_minute=4, host_grace_seconds=30) as srv:
        yield srv


# -- reserved event names -----------------------------------------------------------------


async def test_reserved_event_names_are_unknown_events(
    server: RunningServer, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker"))
    client = await clients.join(server.token(room=ROOM, role="client"))
    await cw.wait("roster", lambda r: len(r["participants"]) == 2)
    forged_environ = {"REMOTE_ADDR": "203.0.113.9", "HTTP_ORIGIN": server.url}
    for i, (event, payload) in enumerate(
        [
            ("connect", forged_environ),
            ("connect", [forged_environ, {"token": server.token(room=ROOM, role="client")}]),
            ("disconnect", "transport close"),
            ("disconnect", {}),
            ("*", {}),
            ("connect_error", {}),
            ("message", "hi"),
            ("__disconnect_final", {}),
        ]
        + [("connect", {"REMOTE_ADDR": f"198.51.100.{n}"}) for n in range(6)]
    ):
        ack = await cw.call(event, payload)
        assert ack["error"] == "unknown_event", (i, event, ack)
    # The caseworker's socket faked neither its own drop nor new participants: no
    # host-grace countdown reached the client, the roster is the same two people.
    await asyncio.sleep(0.3)
    assert "host.status" not in client.events
    assert len(cw.events.get("_disconnect", [])) == 0
    assert roster_ids(server.hub.room(ROOM).roster()) == {me(cw), me(client)}
    # The join limit (4 per address per minute) still counts only real connects, by the
    # transport's address: two used above, two left, then refused.
    await clients.join(server.token(room=ROOM, role="client"))
    await clients.join(server.token(room=ROOM, role="client"))
    assert await clients.refused(server.token(room=ROOM, role="client")) == "too_many_requests"
    assert "Traceback" not in caplog.text


# -- unauthenticated Engine.IO sockets ----------------------------------------------------


async def _hold_engine_sockets(url: str, address: str, count: int):
    """Open ``count`` Engine.IO sockets from ``address`` without ever authenticating."""
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))
    sockets, polls, refused = [], [], 0
    for i in range(count):
        if i % 2:
            resp = await http.get(f"{url}/socket.io/?EIO=4&transport=polling")
            if resp.status == 200:
                text = await resp.text()
                polls.append(text.split('"sid":"', 1)[1].split('"', 1)[0])
            else:
                refused += 1
            resp.release()
        else:
            try:
                sockets.append(await http.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket"))
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 401
                refused += 1
    return http, sockets, polls, refused


async def test_engineio_sockets_that_never_authenticate_are_capped_and_closed(
    server: RunningServer, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    held = [await _hold_engine_sockets(server.url, f"127.0.0.{n}", 25) for n in range(2, 12)]
    try:
        # 20 per address get a socket, the rest are refused at the handshake.
        assert [r for *_, r in held] == [5] * 10
        assert sum(len(s) + len(p) for _, s, p, _ in held) == 200
        # Meanwhile the server answers and a real participant joins (from 127.0.0.1).
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/healthz") as resp:
                assert resp.status == 200
        cw = await clients.join(server.token(room=ROOM, role="caseworker"))
        print(f"join while 200 sockets idle: {time.monotonic() - started:.3f} s")
        # Within a few seconds every unauthenticated socket is closed by the server...
        deadline = time.monotonic() + 15
        for http, sockets, polls, _ in held:
            for ws in sockets:
                msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
                while msg.type == aiohttp.WSMsgType.TEXT:  # the OPEN packet, then CLOSE
                    msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            for sid in polls:
                async with http.get(
                    f"{server.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
                ) as resp:
                    body = await resp.text()
                    # Either the queued CLOSE packet ("1") or "unknown session" (400).
                    assert resp.status == 400 or body.endswith("1"), (resp.status, body)
        assert not server.app[SOCKET].sio.gate.pending
        # ...the authenticated one is not, and the freed address may connect again.
        assert cw.sio.connected and "_disconnect" not in cw.events
        http, sockets, polls, refused = await _hold_engine_sockets(server.url, "127.0.0.2", 2)
        assert refused == 0
        for ws in sockets:
            await ws.close()
        await http.close()
    finally:
        for http, sockets, _, _ in held:
            for ws in sockets:
                await ws.close()
            await http.close()
    assert "Traceback" not in caplog.text
