"""A cluster of real processes: three ``roundtable serve`` nodes and one redis-server.

Rooms are pinned to one node; joins through other nodes are sent there (``wrong_node``)
and the test clients follow as the page does; actions taken through any node's API reach
the room's node through Redis.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.cluster import BIN, MovingPeer, Node, Nodes, RedisProcess
from tests.controlplane import MediaParticipant, SignalClient, link_token, me
from tests.media import wait_for
from tests.ports import free_udp_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]

RED, BLUE = (220, 40, 40), (40, 40, 220)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    (tmp_path / "redis").mkdir()
    server = RedisProcess(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nodes(tmp_path: Path, redis: RedisProcess) -> Iterator[Nodes]:
    made = Nodes(tmp_path, redis.url)
    yield made
    made.stop()


async def _media_both_ways(a: MediaParticipant, b: MediaParticipant, within: float = 20) -> None:
    a_id, b_id = me(a.client), me(b.client)
    seen_a, seen_b = a.frames[(b_id, "video")], b.frames[(a_id, "video")]
    await wait_for(
        lambda: a.frames[(b_id, "video")] > seen_a + 10 and b.frames[(a_id, "video")] > seen_b + 10,
        within,
    )


async def test_joins_through_any_node_meet_on_the_rooms_node(nodes: Nodes) -> None:
    a, b, c = nodes.start("node-a"), nodes.start("node-b"), nodes.start("node-c")
    nodes.ready(a, b, c)
    room = await a.create_room()
    cw = MediaParticipant(SignalClient(), RED)
    client = MediaParticipant(SignalClient(), BLUE)
    try:
        # The first join pins the room (to the node it came to: all are equally idle).
        assert await cw.client.connect(b.url, link_token(room["caseworker_url"]))
        welcome = await cw.client.wait("welcome")
        assert cw.client.url == b.url
        assert sorted(welcome["cluster"]) == sorted([a.url, b.url, c.url])
        assert welcome["cluster"][0] == b.url  # its own node first
        # Through node C: sent on to node B, one extra round trip.
        assert await client.client.connect(c.url, link_token(room["client_url"]))
        await client.client.wait("welcome")
        assert client.client.url == b.url
        assert client.client.events["_wrong_node"][0]["url"] == b.url
        for peer in (cw, client):
            assert (await peer.publish())["ok"]
        await _media_both_ways(cw, client)

        # Any node says where the room lives (API key or a token of the room).
        status, body = await c.get(f"/api/rooms/{room['room']}/node")
        assert (status, body) == (200, {"room": room["room"], "node": "node-b", "url": b.url})
        status, body = await a.get(
            f"/api/rooms/{room['room']}/node", link_token(room["client_url"])
        )
        assert status == 200 and body["node"] == "node-b"
        status, body = await a.get(f"/api/rooms/{room['room']}/node", "wrong")
        assert status == 401

        # Removal through node A's API reaches the participant on node B.
        start = time.monotonic()
        pid = me(client.client)
        assert await a.delete(f"/api/rooms/{room['room']}/participants/{pid}") == 204
        await client.client.wait("_disconnect", within=5)
        took = time.monotonic() - start
        print(f"[timing] revocation on node A -> disconnected on node B: {took * 1000:.0f} ms")
        assert client.client.events["error"][-1]["error"] == "removed"
        again = SignalClient()
        try:
            assert not await again.connect(c.url, link_token(room["client_url"]))
            assert again.refusal["data"]["error"] == "token_revoked"
        finally:
            await again.close()

        # Ending the session through node C's API (a moderator's token) ends it on B.
        start = time.monotonic()
        cw_token = link_token(room["caseworker_url"])
        assert await c.delete(f"/api/rooms/{room['room']}", link_token(room["client_url"])) == 401
        assert await c.delete(f"/api/rooms/{room['room']}", cw_token) == 204
        await cw.client.wait("_disconnect", within=5)
        took = time.monotonic() - start
        print(f"[timing] room end on node C -> disconnected on node B: {took * 1000:.0f} ms")
        assert cw.client.events["error"][-1]["error"] == "room_ended"
    finally:
        await cw.close()
        await client.close()


async def _media_back(a: MovingPeer, b: MovingPeer, within: float = 60) -> None:
    """Both decode each other on their current connections."""
    await wait_for(
        lambda: a.frames_now(b.id) > 5 and b.frames_now(a.id) > 5,
        within,
    )


async def test_kill_9_of_the_rooms_node_moves_the_call_with_roles_admission_and_lock(
    nodes: Nodes,
) -> None:
    a, b, c = nodes.start("node-a"), nodes.start("node-b"), nodes.start("node-c")
    nodes.ready(a, b, c)
    room = await a.create_room(client_lobby=True)
    cw = MovingPeer(link_token(room["caseworker_url"]), RED, a.url)
    client = MovingPeer(link_token(room["client_url"]), BLUE, c.url)
    try:
        await cw.join()
        assert cw.url == a.url
        await client.join()
        assert client.url == a.url  # sent on from node C
        waiting = await cw.peer.client.wait("lobby", lambda m: m["waiting"])
        assert (await cw.peer.client.call("lobby.admit", {"participant": client.id}))["ok"]
        await _media_back(cw, client)
        assert (await cw.peer.client.call("room.lock", {"locked": True}))["ok"]
        assert waiting["waiting"][0]["id"] == client.id

        before = (cw.welcomes, client.welcomes)
        killed = time.monotonic()
        a.signal(signal.SIGKILL)
        # Welcomed again elsewhere (counted from the kill: a reconnect before it, on a
        # loaded machine, must not make the count miss its mark).
        await wait_for(lambda: cw.welcomes > before[0] and client.welcomes > before[1], 60)
        moved = time.monotonic() - killed
        print(f"[timing] kill -9 of the room's node -> both welcomed elsewhere: {moved:.1f} s")
        await _media_back(cw, client)
        took = time.monotonic() - killed
        print(f"[timing] kill -9 of the room's node -> media flowing again: {took:.1f} s")
        assert cw.url == client.url and cw.url in (b.url, c.url)
        # The caseworker still hosts, the client is still admitted, the lock holds.
        cw_welcome = cw.peer.client.events["welcome"][-1]
        client_welcome = client.peer.client.events["welcome"][-1]
        assert cw_welcome["you"]["role"] == "caseworker"
        assert client_welcome["you"]["state"] != "waiting"
        assert cw_welcome["room"]["locked"] is True
        ack = await cw.peer.client.call("room.lock", {"locked": False})
        assert ack["ok"], ack  # moderation works on the new node
    finally:
        await cw.close()
        await client.close()


async def _ready(node: Node) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(node.url + "/readyz") as resp:
            return resp.status, await resp.json()


async def test_sigterm_drains_the_node_then_moves_the_call(nodes: Nodes) -> None:
    a = nodes.start("node-a", ROUNDTABLE_DRAIN_TIMEOUT="4")
    b = nodes.start("node-b")
    nodes.ready(a, b)
    assert await _ready(a) == (200, {"status": "ready", "node": "node-a", "redis": "ok"})
    room = await a.create_room()
    cw = MovingPeer(link_token(room["caseworker_url"]), RED, a.url)
    client = MovingPeer(link_token(room["client_url"]), BLUE, a.url)
    try:
        await cw.join()
        await client.join()
        assert cw.url == client.url == a.url
        await _media_back(cw, client)

        drained = time.monotonic()
        a.signal(signal.SIGTERM)
        await wait_for(lambda: a.proc.poll() is None and _not_ready(a), 10)
        status, body = await _ready(a)
        assert (status, body["status"]) == (503, "draining")
        # No new room goes to the draining node.
        other = await a.create_room()
        status, body = await a.get(f"/api/rooms/{other['room']}/node")
        assert status == 200 and body["node"] == "node-b"
        # The call goes on meanwhile, on node A.
        seen = cw.frames_now(client.id)
        await asyncio.sleep(2)
        assert cw.welcomes == 1 and cw.frames_now(client.id) > seen + 20

        # After the drain timeout: told why, moved, media again on node B.
        await wait_for(lambda: cw.welcomes >= 2 and client.welcomes >= 2, 30)
        assert cw.told and cw.told[0]["error"] == "node_draining"
        assert b.url in cw.told[0]["cluster"]
        await _media_back(cw, client)
        took = time.monotonic() - drained
        print(f"[timing] SIGTERM (drain timeout 4 s) -> media flowing on node B: {took:.1f} s")
        assert cw.url == client.url == b.url
        assert a.wait(15) == 0
    finally:
        await cw.close()
        await client.close()


def _not_ready(node: Node) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(node.url + "/readyz", timeout=1)
    except urllib.error.HTTPError as err:
        return err.code == 503
    except OSError:
        return False
    return False


async def test_redis_outage_keeps_calls_refuses_joins_quickly_and_recovers(
    nodes: Nodes, redis: RedisProcess
) -> None:
    a, b = nodes.start("node-a"), nodes.start("node-b")
    nodes.ready(a, b)
    room = await a.create_room()
    later = await a.create_room()
    cw = MovingPeer(link_token(room["caseworker_url"]), RED, a.url)
    client = MovingPeer(link_token(room["client_url"]), BLUE, a.url)
    try:
        await cw.join()
        await client.join()
        await _media_back(cw, client)

        redis.stop()
        seen = cw.frames_now(client.id), client.frames_now(cw.id)
        for node in (a, b):
            newcomer = SignalClient()
            try:
                start = time.monotonic()
                assert not await newcomer.connect(node.url, link_token(later["client_url"]))
                took = time.monotonic() - start
                print(f"[timing] join while Redis is down refused after {took * 1000:.0f} ms")
                assert newcomer.refusal["data"]["error"] == "unavailable"
                assert took < 5  # the goal (2 s) is measured above, not asserted
            finally:
                await newcomer.close()
        # The API says so too: a clear 503 to retry, not an internal error.
        async with aiohttp.ClientSession() as http:
            for method, path in (("POST", "/api/rooms"), ("DELETE", f"/api/rooms/{room['room']}")):
                async with http.request(
                    method, a.url + path, headers={"Authorization": f"Bearer {a.api_key}"}, json={}
                ) as resp:
                    body = await resp.json()
                    assert (resp.status, body["error"]) == (503, "unavailable"), (method, body)
                    assert resp.headers["Retry-After"] == "2"
        await wait_for(lambda: _not_ready(a), 10)  # readiness says Redis is gone
        status, body = await _ready(a)
        assert (status, body["redis"]) == (503, "unreachable")
        await asyncio.sleep(2)
        # The running call never noticed.
        assert cw.welcomes == client.welcomes == 1
        assert cw.frames_now(client.id) > seen[0] + 30 and client.frames_now(cw.id) > seen[1] + 30

        redis.start()
        back = time.monotonic()
        joined = False
        while not joined and time.monotonic() - back < 30:
            newcomer = SignalClient()
            try:
                joined = await newcomer.connect(b.url, link_token(later["client_url"]))
                if joined:
                    await newcomer.wait("welcome")
            finally:
                await newcomer.close()
            if not joined:
                await asyncio.sleep(0.2)
        assert joined, "joins did not recover after Redis came back"
        print(f"[timing] Redis back -> joins work again after {time.monotonic() - back:.1f} s")
        await wait_for(lambda: not _not_ready(a), 10)
        assert cw.welcomes == client.welcomes == 1
    finally:
        await cw.close()
        await client.close()


async def test_serve_workers_starts_one_node_per_worker(
    tmp_path: Path, redis: RedisProcess
) -> None:
    from tests.ports import free_tcp_port

    # Two consecutive free ports for the two workers.
    while True:
        port = free_tcp_port()
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            continue
    nodes = Nodes(tmp_path, redis.url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROUNDTABLE_")},
        **nodes.shared,
        "ROUNDTABLE_STATE_DIR": str(tmp_path / "state"),
        "ROUNDTABLE_MEDIA_HOST": "127.0.0.1",
        "ROUNDTABLE_MEDIA_PORT": str(free_udp_port()),
        "ROUNDTABLE_DRAIN_TIMEOUT": "0",
    }
    proc = _popen(
        [str(BIN), "serve", "--workers", "2", "--port", str(port), "--node-id", "box"], env
    )
    try:
        urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
        workers = [Node.attach(f"box-w{i}", url, nodes.shared) for i, url in enumerate(urls)]
        for w in workers:
            await wait_for(lambda w=w: _answers(w.url), 30)
        assert [(await _ready(w))[1]["node"] for w in workers] == ["box-w0", "box-w1"]
        room = await workers[0].create_room()
        first, second = SignalClient(), SignalClient()
        try:
            assert await first.connect(urls[1], link_token(room["caseworker_url"]))
            assert await second.connect(urls[0], link_token(room["client_url"]))
            # Whichever worker took the room, both participants are on it.
            assert first.url == second.url == urls[1]
        finally:
            await first.close()
            await second.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stdout.read() if proc.stdout else ""


def _popen(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1):
            return True
    except OSError:
        return False


async def test_roundtable_drain_node_drains_that_node(nodes: Nodes, redis: RedisProcess) -> None:
    a, b = nodes.start("node-a"), nodes.start("node-b")
    nodes.ready(a, b)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROUNDTABLE_")},
        "ROUNDTABLE_REDIS_URL": redis.url,
    }
    done = await asyncio.to_thread(
        subprocess.run, [str(BIN), "drain", "node-a"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and "node-a drains" in done.stdout, done.stderr
    # No calls on it: the drain is over at once and the process exits 0.
    assert await asyncio.to_thread(a.wait, 30) == 0
    assert (await _ready(b))[0] == 200
    unknown = await asyncio.to_thread(
        subprocess.run, [str(BIN), "drain", "node-x"], env=env, capture_output=True, text=True
    )
    assert unknown.returncode == 1 and "no live node" in unknown.stderr
