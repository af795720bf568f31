"""Two roundtable nodes sharing one real redis-server (REDIS_URL)."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from tests.controlplane import SignalClient, refusal_code, running_server

pytestmark = pytest.mark.redis


async def test_nodes_share_rooms_revocations_and_single_use_invites(tmp_path, redis_url) -> None:
    shared = {"secret": secrets.token_urlsafe(48), "redis_url": redis_url}
    async with (
        running_server(tmp_path / "a", **shared) as node_a,
        running_server(tmp_path / "b", **shared) as node_b,
    ):
        created = await node_a.create_room()
        room = created["room"]
        client_token = created["client_url"].split("#token=", 1)[1]

        # A room created on node A is known to node B.
        client = SignalClient()
        assert await client.connect(node_b.url, client_token)
        await client.wait("welcome")
        await client.sio.disconnect()

        # An invite used on node A cannot be used again on node B.
        invite, _ = node_a.tokens.issue(
            room=room, role="partner", name="P", ttl=600, org="DRV", invite=True
        )
        first = SignalClient()
        assert await first.connect(node_a.url, invite)
        await first.wait("welcome")
        # The room lives on node B (its first join came there): A sent the partner on.
        assert first.url == node_b.url and first.events["_wrong_node"]
        await first.sio.disconnect()
        await asyncio.sleep(0.3)  # its leave is processed: the invite is spent
        second = SignalClient()
        assert not await second.connect(node_a.url, invite)
        assert refusal_code(second) == "invite_used"

        # Ending the session on node A makes its tokens useless on node B.
        await node_a.hub.end_room(room, int(time.time()) + 3600)
        late = SignalClient()
        assert not await late.connect(node_b.url, client_token)
        assert refusal_code(late) in ("room_ended", "room_closed")


async def test_unreachable_redis_fails_the_start(tmp_path) -> None:
    with pytest.raises(Exception):  # noqa: B017 - redis' ConnectionError or OSError
        async with running_server(tmp_path, redis_url="redis://127.0.0.1:1/0"):
            pass


async def test_the_bench_participant_follows_wrong_node(tmp_path, redis_url) -> None:
    from bench.media import encode_media
    from bench.participant import SyntheticParticipant, Window

    shared = {"secret": secrets.token_urlsafe(48), "redis_url": redis_url}
    async with (
        running_server(tmp_path / "a", **shared) as node_a,
        running_server(tmp_path / "b", **shared) as node_b,
    ):
        room = await node_a.create_room()
        host = SignalClient()
        assert await host.connect(node_b.url, room["caseworker_url"].split("#token=", 1)[1])
        token = room["client_url"].split("#token=", 1)[1]
        media = encode_media(300_000, video=False)
        peer = SyntheticParticipant(node_a.url, token, "client", 1, media, Window(), True)
        try:
            await peer.join()
            assert peer.sio.connection_url == node_b.url and peer.pid
        finally:
            await peer.close()
            await host.close()
