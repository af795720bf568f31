"""What an outside attack run found, each as a test against a real server.

Raw clients do what the page never does: emit reserved event names, hold Engine.IO
sockets without authenticating, send absurdly nested JSON, join one link 60 times at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import pytest
import socketio

from server.app import SOCKET
from tests.controlplane import Clients, RunningServer, me, roster_ids, running_server

ROOM = "r_hostile"


@pytest.fixture
async def server(tmp_path: Path):
    async with running_server(tmp_path, joins_per_ip_per_minute=4, host_grace_seconds=30) as srv:
        yield srv


async def _metric(server: RunningServer, name: str) -> float:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/metrics") as resp:
            text = await resp.text()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


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
    assert await _metric(server, 'roundtable_limit_hits_total{limit="joins_per_address"}') == 1
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
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 15 joins a minute: at most 20 sockets under way per address (the floor), and 40 new
    # sessions a minute (the handshake limit is not what this tests).
    async with running_server(tmp_path, joins_per_ip_per_minute=15) as server:
        clients = Clients(server)
        try:
            await _unauthenticated_sockets_are_capped_and_closed(server, clients)
        finally:
            await clients.close()
    assert "Traceback" not in caplog.text


async def test_engineio_handshakes_beyond_the_join_limit_get_429_at_once(
    server: RunningServer,
) -> None:
    from signaling.socket import handshake_limit

    allowed = handshake_limit(server.config.joins_per_ip_per_minute)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=("127.0.0.9", 0))
    ) as http:
        statuses = []
        for _ in range(allowed + 2):
            async with http.get(f"{server.url}/socket.io/?EIO=4&transport=polling") as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert (await resp.json())["error"] == "too_many_requests"
        assert statuses == [200] * allowed + [429] * 2, statuses
    hits = 'roundtable_limit_hits_total{limit="handshakes_per_address"}'
    assert await _metric(server, hits) == 2


async def _unauthenticated_sockets_are_capped_and_closed(
    server: RunningServer, clients: Clients
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
                # Either the queued CLOSE packet ("1", maybe after a PING) or "unknown
                # session" (400); a poll may first return only the server's PING ("2").
                for _ in range(5):
                    async with http.get(
                        f"{server.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
                    ) as resp:
                        body = await resp.text()
                    if resp.status == 400 or body.split("\x1e")[-1] == "1":
                        break
                    assert resp.status == 200 and set(body.split("\x1e")) <= {"2", ""}, body
                else:
                    raise AssertionError(f"polling socket {sid} was not closed: {body!r}")
        assert not server.app[SOCKET].sio.gate.pending
        for limit, count in (("unauthenticated_per_address", 50), ("unauthenticated_timeout", 200)):
            hits = await _metric(server, f'roundtable_limit_hits_total{{limit="{limit}"}}')
            assert hits == count, (limit, hits)
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


# -- low findings -------------------------------------------------------------------------


async def test_deeply_nested_json_event_is_invalid_payload(
    server: RunningServer, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker"))
    deep = "[" * 5000 + "]" * 5000
    for raw in (
        f'2["publish",{deep}]',  # a known event with a deep payload
        f"2{deep}",  # a deep "event name"
        '2["publish",{"type":"offer","sdp":"v=0',  # cut off: does not decode at all
    ):
        before = len(cw.events.get("error", []))
        await cw.sio.eio.send(raw)
        await cw.wait("error", lambda e, n=before: len(cw.events["error"]) > n)
        assert cw.events["error"][-1]["error"] == "invalid_payload", raw[:40]
    # Still connected and served.
    assert (await cw.call("room.lock", {"locked": False})) == {"ok": True}
    hits = await _metric(server, 'roundtable_limit_hits_total{limit="undecodable_event"}')
    assert hits == 3
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


async def test_truncated_jwt_signature_is_token_bad_signature(
    server: RunningServer, clients: Clients
) -> None:
    token = server.token(room=ROOM, role="client")
    for cut in (1, 2, 5, 20):
        assert await clients.refused(token[:-cut]) == "token_bad_signature", cut
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{server.url}/api/rooms/{ROOM}", headers={"Authorization": f"Bearer {token[:-1]}"}
        ) as resp:
            assert (resp.status, (await resp.json())["error"]) == (401, "token_bad_signature")


async def test_server_header_names_no_versions_and_npm_files_are_not_served(
    server: RunningServer,
) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/join", "/static/app.js", "/socket.io/?EIO=4&transport=polling"):
            async with http.get(f"{server.url}{path}") as resp:
                assert resp.headers["Server"] == "roundtable", (path, resp.headers["Server"])
        for path in (
            "/static/package.json",
            "/static/package-lock.json",
            "/static/node_modules/socket.io-client/package.json",
            "/static/vendor/../package.json",
        ):
            async with http.get(f"{server.url}{path}") as resp:
                assert resp.status == 404, path
        for path in ("/static/vendor/socket.io.min.js", "/static/sounds/lobby.wav"):
            async with http.get(f"{server.url}{path}") as resp:
                assert resp.status == 200, path


def test_repeated_identical_log_lines_are_rate_limited() -> None:
    from server.logs import RepeatFilter

    clock = [0.0]
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("roundtable.test.repeat")
    logger.propagate = False
    handler = Keep()
    handler.addFilter(RepeatFilter(window=10, burst_warning=5, now=lambda: clock[0]))
    logger.addHandler(handler)
    try:
        for i in range(1000):
            logger.error("accept failed on fd %d", i)
        logger.error("something else")
        assert len(records) == 6
        clock[0] = 11.0
        logger.error("accept failed on fd %d", 1001)
        assert records[-1] == "accept failed on fd 1001 [995 more like this held back]"
    finally:
        logger.removeHandler(handler)


def test_serve_raises_its_open_file_limit(tmp_path: Path) -> None:
    import resource

    from tests.test_cli import Serve

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.fail(f"the hard open-file limit ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        serve = Serve(tmp_path / "state")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        serve.line_with("curl -X POST")
        limits = Path(f"/proc/{serve.proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        now_soft, now_hard = line.split()[3:5]
        assert now_soft == now_hard, line
    finally:
        assert serve.stop() == 0


# -- one link joined 60 times at once ----------------------------------------------------


@pytest.mark.parametrize("link", ["client", "invite"])
async def test_one_link_joined_60_times_at_once_takes_exactly_one_seat(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, link: str
) -> None:
    from tests.controlplane import SignalClient, link_token, refusal_code

    caplog.set_level(logging.INFO)
    async with running_server(tmp_path, joins_per_ip_per_minute=1000) as server:
        room = await server.create_room()
        cw_token = link_token(room["caseworker_url"])
        if link == "client":
            token = link_token(room["client_url"])
        else:
            status, body = await server.invite(room["room"], cw_token, waiting_room=False)
            assert status == 201, body
            token = link_token(body["invite_url"])
        # From four addresses, 15 each: below the cap of sockets not yet authenticated
        # per address, so every one of the 60 reaches the join itself.
        sessions = [
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=(f"127.0.0.{1 + i % 4}", 0))
            )
            for i in range(60)
        ]
        racers = [
            SignalClient(sio=socketio.AsyncClient(reconnection=False, http_session=http))
            for http in sessions
        ]
        try:
            joined = await asyncio.gather(*(c.connect(server.url, token) for c in racers))
            await asyncio.sleep(1.0)  # replaced connections are told and dropped
            codes = {refusal_code(c) for c, ok in zip(racers, joined, strict=True) if not ok}
            seated = [c for c in racers if c.sio.connected and "welcome" in c.events]
            assert len(seated) == 1, (len(seated), codes)
            # Losers get documented codes: the seat in use, replaced by a newer connection,
            # or the invite spent.
            replaced = {
                e["error"] for c in racers if c not in seated for e in c.events.get("error", [])
            }
            assert (codes | replaced) <= {"seat_taken", "replaced", "invite_used"}, (
                codes,
                replaced,
            )
            live = server.hub.room(room["room"])
            assert live is not None and len(live.active()) == 1
            assert me(seated[0]) == live.active()[0].id
        finally:
            for c in racers:
                await c.close()
            for http in sessions:
                await http.close()
    assert "Traceback" not in caplog.text and "IllegalTransition" not in caplog.text
    assert "internal" not in caplog.text


# -- the session's end on live connections -----------------------------------------------


async def test_session_end_is_enforced_on_live_connections(tmp_path: Path) -> None:
    from tests.controlplane import Clients

    async with running_server(tmp_path, end_warning_seconds=3) as server:
        clients = Clients(server)
        try:
            # The first token opens the room: its session ends when that token does.
            cw = await clients.join(server.token(room="r_short", role="caseworker", ttl=6))
            late_client = server.token(room="r_short", role="client", ttl=600)
            client = await clients.join(late_client)
            assert cw.events["welcome"][0]["room"]["ends_at"].endswith("Z")
            warning = await client.wait("session.ending", within=6)
            assert 1 <= warning["seconds_left"] <= 3, warning
            assert await cw.wait("session.ending")
            # A client's own token being valid longer does not keep the call going.
            for c in (cw, client):
                err = await c.wait("error", lambda e: e["error"] == "session_expired", within=8)
                assert "time" in err["message"]
                await c.wait("_disconnect")
            assert server.hub.room("r_short") is None
            assert await clients.refused(late_client) == "room_closed"

            # The caseworker may extend, within the operator's limit; others may not.
            cw = await clients.join(server.token(room="r_long", role="caseworker", ttl=6))
            client = await clients.join(server.token(room="r_long", role="client", ttl=600))
            assert (await client.call("room.extend", {"minutes": 5}))["error"] == "forbidden"
            too_long = await cw.call("room.extend", {"minutes": 240})
            assert too_long["error"] == "invalid_payload", too_long
            assert (await cw.call("room.extend", {"minutes": 0}))["error"] == "invalid_payload"
            ack = await cw.call("room.extend", {"minutes": 1})
            assert ack["ok"] and 60 <= ack["seconds_left"] <= 66, ack
            extended = await client.wait("session.extended")
            assert extended["ends_at"] == ack["ends_at"]
            await asyncio.sleep(7)  # past the old end
            assert client.sio.connected and cw.sio.connected
            assert "session_expired" not in {e["error"] for e in client.events.get("error", [])}
        finally:
            await clients.close()


async def test_resumes_are_counted(server: RunningServer, clients: Clients) -> None:
    token = server.token(room=ROOM, role="client")
    first = await clients.join(token)
    assert await _metric(server, "roundtable_resumes_total") == 0
    await clients.reload(first, token)  # a reload: the same page again while still inside
    assert await _metric(server, "roundtable_resumes_total") == 1


async def test_candidates_per_connection_are_bounded(tmp_path: Path) -> None:
    from signaling.events import MAX_CANDIDATES_PER_CONNECTION

    async with running_server(tmp_path, events_per_second=100_000) as server:
        clients = Clients(server)
        try:
            client = await clients.join(server.token(room=ROOM, role="client"))
            candidate = {"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host", "sdpMid": "0"}
            for _ in range(MAX_CANDIDATES_PER_CONNECTION):
                ack = await client.call("ice", {"pc": "subscribe", "candidate": candidate})
                assert ack == {"ok": True}, ack
            ack = await client.call("ice", {"pc": "subscribe", "candidate": candidate})
            assert ack["error"] == "invalid_payload", ack
            # The other leg has its own count.
            ack = await client.call("ice", {"pc": "publish", "candidate": candidate})
            assert ack == {"ok": True}, ack
        finally:
            await clients.close()
