"""A cluster of real processes: three ``roundtable serve`` nodes and one redis-server.

Rooms are pinned to one node; joins through other nodes are sent there (``wrong_node``)
and the test clients follow as the page does; actions taken through any node's API reach
the room's node through Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Nodes, RedisProcess
from tests.controlplane import MediaParticipant, SignalClient, link_token, me
from tests.media import wait_for

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
