"""Socket.IO signalling on a real server: welcome and roster, validation of every event,
limits, the waiting room, and a media call between two aiortc peers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from tests.controlplane import (
    MediaParticipant,
    RunningServer,
    SignalClient,
    refusal_code,
    running_server,
)
from tests.media import wait_for

ROOM = "r_sig"
SDP = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@pytest.fixture
async def server(tmp_path: Path):
    async with running_server(tmp_path, joins_per_ip_per_minute=1000) as srv:
        yield srv


@pytest.fixture
async def clients():
    made: list[SignalClient] = []

    def make() -> SignalClient:
        c = SignalClient()
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


async def _join(
    server: RunningServer, make, role: str = "client", name: str = "N", **kw
) -> SignalClient:
    client = make()
    assert await client.connect(server.url, server.token(room=ROOM, role=role, name=name, **kw))
    await client.wait("welcome")
    return client


async def _metrics(server: RunningServer) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/metrics") as resp:
            return await resp.text()


def _ids(roster: dict) -> set[str]:
    return {p["id"] for p in roster["participants"]}


async def test_welcome_then_roster_to_everyone_on_every_change(
    server: RunningServer, clients
) -> None:
    cw = await _join(server, clients, "caseworker", "Frau B")
    welcome = cw.events["welcome"][0]
    me = welcome["you"]
    assert set(me) == {
        "id",
        "role",
        "name",
        "org",
        "state",
        "tracks",
        "muted",
        "self_muted",
        "connection",
        "quality",
        "sharing",
        "hand",
        "client_present",
    }
    assert me["state"] == "admitted" and me["role"] == "caseworker" and me["name"] == "Frau B"
    assert welcome["ice"] == {"iceServers": [], "iceTransportPolicy": "all"}
    await cw.wait("roster", lambda r: _ids(r) == {me["id"]})

    cl = await _join(server, clients, "client", "Herr K")
    cl_id = cl.events["welcome"][0]["you"]["id"]
    for c in (cw, cl):
        roster = await c.wait("roster", lambda r: _ids(r) == {me["id"], cl_id})
        roles = {p["id"]: p["role"] for p in roster["participants"]}
        assert roles == {me["id"]: "caseworker", cl_id: "client"}

    assert await cl.call("leave", {}) == {"ok": True}
    await cw.wait("roster", lambda r: _ids(r) == {me["id"]})
    await cl.close()
    assert server.hub.room(ROOM) is not None
    await cw.close()
    await wait_for(lambda: server.hub.room(ROOM) is None, timeout=5)


async def test_unknown_event_gets_error_and_connection_survives(
    server: RunningServer, clients
) -> None:
    c = await _join(server, clients)
    ack = await c.call("make.coffee", {"sugar": 2})
    assert ack["error"] == "unknown_event"
    err = await c.wait("error")
    assert err == ack and set(err) == {"error", "message"}
    assert await c.call("ice", {"pc": "subscribe", "candidate": None}) == {"ok": True}


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("publish", None),
        ("publish", "v=0"),
        ("publish", [1]),
        ("publish", {"type": "offer"}),
        ("publish", {"type": "answer", "sdp": SDP}),
        ("publish", {"type": "offer", "sdp": 42}),
        ("publish", {"type": "offer", "sdp": SDP, "extra": 1}),
        ("publish", {"type": "offer", "sdp": "hello"}),
        ("subscribe.answer", {"type": "answer"}),
        ("ice", {"pc": "both", "candidate": None}),
        ("ice", {"pc": "publish"}),
        ("ice", {"pc": "publish", "candidate": "candidate:1"}),
        ("ice", {"pc": "publish", "candidate": {"candidate": "x", "sdpMLineIndex": -1}}),
        ("ice", {"pc": "publish", "candidate": {"candidate": "x", "sdpMid": "0", "foo": 1}}),
        ("ice", {"pc": "publish", "candidate": {"candidate": "x" * 5000, "sdpMid": "0"}}),
        ("leave", {"now": True}),
    ],
)
async def test_malformed_payloads_are_invalid(
    server: RunningServer, clients, event, payload
) -> None:
    c = await _join(server, clients)
    ack = await c.call(event, payload)
    assert ack["error"] == "invalid_payload", ack
    assert (await c.wait("error"))["error"] == "invalid_payload"


async def test_oversized_sdp_is_refused(server: RunningServer, clients) -> None:
    c = await _join(server, clients)
    big = SDP + "a=x-padding:" + "x" * (70 * 1024) + "\r\n"
    ack = await c.call("publish", {"type": "offer", "sdp": big})
    assert ack["error"] == "payload_too_large"
    assert await c.call("leave") == {"ok": True}


async def test_unusable_sdp_is_sdp_invalid(server: RunningServer, clients) -> None:
    c = await _join(server, clients)
    ack = await c.call(
        "publish", {"type": "offer", "sdp": SDP + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}
    )
    assert ack["error"] == "sdp_invalid", ack
    ack = await c.call("subscribe.answer", {"type": "answer", "sdp": SDP})
    assert ack["error"] == "invalid_payload"  # nothing was offered


async def test_events_are_rate_limited(tmp_path: Path, clients) -> None:
    async with running_server(tmp_path, events_per_second=5.0) as server:
        c = await _join(server, clients)
        acks = await asyncio.gather(
            *(c.call("ice", {"pc": "subscribe", "candidate": None}) for _ in range(20))
        )
        codes = [a.get("error") for a in acks]
        assert "too_many_requests" in codes
        assert codes.count(None) >= 1  # the first ones passed
        await c.wait("error", lambda e: e["error"] == "too_many_requests")


async def test_room_full(tmp_path: Path, clients) -> None:
    async with running_server(tmp_path, max_participants=2) as server:
        first = await _join(server, clients)
        await _join(server, clients)
        third = clients()
        assert not await third.connect(server.url, server.token(room=ROOM))
        assert refusal_code(third) == "room_full"
        # A full room does not spend an invite: it works once there is space.
        invite = server.token(room=ROOM, role="partner", grants=["audio"], invite=True)
        partner = clients()
        assert not await partner.connect(server.url, invite)
        assert refusal_code(partner) == "room_full"
        await first.close()
        await wait_for(lambda: len(server.hub.room(ROOM).active()) == 1, timeout=5)
        partner = clients()
        assert await partner.connect(server.url, invite)
        await partner.wait("welcome")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/metrics") as resp:
                assert 'roundtable_refused_joins_total{reason="room_full"} 2.0' in await resp.text()


async def test_joins_per_address_are_limited(tmp_path: Path, clients) -> None:
    async with running_server(tmp_path, joins_per_ip_per_minute=2) as server:
        await _join(server, clients)
        await _join(server, clients)
        third = clients()
        assert not await third.connect(server.url, server.token(room=ROOM))
        assert refusal_code(third) == "too_many_requests"


async def test_waiting_room_sees_only_itself_and_cannot_publish(
    server: RunningServer, clients
) -> None:
    cw = await _join(server, clients, "caseworker")
    cw_id = cw.events["welcome"][0]["you"]["id"]
    waiting = await _join(server, clients, "client", lobby=True)
    me = waiting.events["welcome"][0]["you"]
    assert me["state"] == "waiting"
    roster = await waiting.wait("roster")
    assert _ids(roster) == {me["id"]}
    ack = await waiting.call("publish", {"type": "offer", "sdp": SDP})
    assert ack["error"] == "forbidden"
    # The room does not list people in the waiting room.
    await asyncio.sleep(0.2)
    assert all(_ids(r) == {cw_id} for r in cw.events["roster"])


async def test_same_page_reloading_replaces_the_old_connection(
    server: RunningServer, clients
) -> None:
    token = server.token(room=ROOM, role="caseworker")
    old = clients()
    assert await old.connect(server.url, token)
    secret = (await old.wait("welcome"))["resume"]
    # Without the tab's secret: a second device, refused while the seat is in use.
    other = clients()
    assert not await other.connect(server.url, token)
    assert other.refusal["data"]["error"] == "seat_taken"
    new = clients()
    assert await new.connect(server.url, token, resume=secret, fresh=True)
    await new.wait("welcome")
    assert (await old.wait("error"))["error"] == "replaced"
    await old.wait("_disconnect")
    roster = await new.wait("roster")
    assert len(roster["participants"]) == 1


@pytest.mark.slow
async def test_two_aiortc_peers_call_each_other_through_signalling(
    server: RunningServer, clients
) -> None:
    status, room = 0, {}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server.url}/api/rooms",
            json={"client_lobby": False, "client_consent": False},
            headers={"Authorization": f"Bearer {server.config.api_key}"},
        ) as resp:
            status, room = resp.status, await resp.json()
    assert status == 201
    peers: list[MediaParticipant] = []
    try:
        ids = []
        for url, colour in (
            (room["caseworker_url"], (220, 40, 40)),
            (room["client_url"], (40, 40, 220)),
        ):
            client = clients()
            peer = MediaParticipant(client, colour)
            peers.append(peer)
            assert await client.connect(server.url, url.split("#token=", 1)[1])
            ids.append((await client.wait("welcome"))["you"]["id"])
        start = time.monotonic()
        for peer in peers:
            ack = await peer.publish()
            assert ack["ok"] is True and ack["type"] == "answer", ack
        a, b = peers
        await wait_for(
            lambda: a.frames[(ids[1], "video")] > 10 and b.frames[(ids[0], "video")] > 10, 20
        )
        await wait_for(
            lambda: a.frames[(ids[1], "audio")] > 10 and b.frames[(ids[0], "audio")] > 10, 10
        )
        print(f"both directions decoding after {time.monotonic() - start:.2f} s")
        offer = a.client.events["subscribe.offer"][-1]
        assert {(t["participant"], t["kind"]) for t in offer["tracks"]} == {
            (ids[1], "audio"),
            (ids[1], "video"),
        }
        assert all(ans == {"ok": True} for p in peers for ans in p.answers)

        # Colours survive forwarding: each sees the other's frames, not its own.
        def close(c1, c2):
            return all(abs(x - y) < 40 for x, y in zip(c1, c2, strict=True))

        assert close(a.colours[ids[1]], (40, 40, 220)) and close(b.colours[ids[0]], (220, 40, 40))

        # The roster shows the published tracks and connected state.
        def published(r):
            return all(
                len(p["tracks"]) == 2 and p["state"] == "connected" for p in r["participants"]
            )

        await a.client.wait("roster", lambda r: len(r["participants"]) == 2 and published(r))

        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/metrics") as resp:
                text = await resp.text()
        forwarded = next(
            float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("roundtable_forwarded_packets_total")
        )
        assert forwarded > 0
        assert f'roundtable_forwarding_latency_seconds_count{{room="{room["room"]}"}}' in text
        assert 'roundtable_participants{state="connected"} 2.0' in text

        # One leaves: the other's roster drops it and the server holds no media for it.
        await b.close()
        await a.client.wait("roster", lambda r: _ids(r) == {ids[0]})
        text = await _metrics(server)
        assert 'roundtable_participants{state="connected"} 1.0' in text
        # Nothing of b is forwarded any more: a's decoded count from b stops growing.
        seen = a.frames[(ids[1], "video")]
        await asyncio.sleep(0.5)
        assert a.frames[(ids[1], "video")] - seen <= 2
    finally:
        for p in peers:
            await p.close()
    await wait_for(lambda: server.hub.room(room["room"]) is None, timeout=5)


async def test_foreign_origin_is_refused(server: RunningServer, clients) -> None:
    token = server.token(room=ROOM)
    foreign = clients()
    assert not await foreign.connect(server.url, token, headers={"Origin": "http://evil.example"})
    assert "welcome" not in foreign.events
    same = clients()
    assert await same.connect(server.url, token, headers={"Origin": server.url})
    await same.wait("welcome")


def test_participant_state_machine() -> None:
    from signaling.participant import IllegalTransition, Participant, ParticipantState
    from signaling.store import MemoryStore
    from signaling.tokens import TokenService

    _, claims = TokenService("k" * 64, MemoryStore()).issue(
        room=ROOM, role="client", name="C", ttl=60
    )
    p = Participant(claims=claims, sid="s1")
    assert p.state is ParticipantState.WAITING and not p.admitted
    assert not p.media_connected()  # media cannot come up before admission
    p.admit()
    assert p.media_connected() and p.state is ParticipantState.CONNECTED
    assert p.media_lost() and p.state is ParticipantState.ADMITTED
    p.remove()
    assert p.state is ParticipantState.REMOVED
    p.leave()  # terminal: stays removed
    assert p.state is ParticipantState.REMOVED
    with pytest.raises(IllegalTransition):
        p.admit()
