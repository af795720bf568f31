"""Moderation on a real server: only the moderate grant may act; mute stops forwarding
until the person unmutes, remove stops media at once and kills the link, end for all
kills every link; the host's dropped connection holds the room for a grace period."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.controlplane import (
    Clients,
    RunningServer,
    link_token,
    me,
    roster_ids,
    running_server,
)
from tests.media import wait_for

ROOM = "r_mod"


@pytest.fixture
async def server(tmp_path: Path):
    async with running_server(
        tmp_path, joins_per_ip_per_minute=1000, host_grace_seconds=1.5
    ) as srv:
        yield srv


def _muted(roster: dict, pid: str) -> dict:
    return next((p["muted"] for p in roster["participants"] if p["id"] == pid), {})


async def test_moderation_needs_the_moderate_grant(server: RunningServer, clients: Clients) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker"))
    client = await clients.join(server.token(room=ROOM, role="client"))
    waiting = await clients.join(server.token(room=ROOM, role="client", lobby=True))
    # A hand-made partner token without `moderate` (grants are signed: nothing to forge).
    partner = await clients.join(
        server.token(room=ROOM, role="partner", grants=["publish", "subscribe", "audio"])
    )
    cw_id, w_id = me(cw), me(waiting)
    before = await cw.wait("roster", lambda r: len(r["participants"]) == 3)
    for actor in (client, partner):
        for event, payload in (
            ("lobby.admit", {"participant": w_id}),
            ("lobby.deny", {"participant": w_id}),
            ("moderate.mute", {"participant": cw_id, "kind": "audio"}),
            ("moderate.remove", {"participant": cw_id}),
            ("room.lock", {"locked": True}),
            ("room.end", {}),
        ):
            ack = await actor.call(event, payload)
            assert ack["error"] == "forbidden", (event, ack)
    await asyncio.sleep(0.2)
    # Nothing changed: nobody admitted, denied, muted, removed; not locked, not ended.
    assert "admitted" not in waiting.events and "error" not in cw.events
    assert "moderation.muted" not in cw.events and "room.state" not in client.events
    assert cw.events["roster"][-1] == before
    assert _muted(before, cw_id) == {"audio": False, "video": False}
    assert cw.sio.connected and waiting.sio.connected
    assert (await cw.call("lobby.admit", {"participant": w_id})) == {"ok": True}


@pytest.mark.slow
async def test_mute_stops_forwarding_until_the_person_unmutes(
    server: RunningServer, clients: Clients
) -> None:
    room = await server.create_room()
    cw = await clients.join_media(link_token(room["caseworker_url"]), (220, 40, 40))
    client = await clients.join_media(link_token(room["client_url"]), (40, 40, 220))
    for peer in (cw, client):
        assert (await peer.publish())["ok"] is True
    cl_id = me(client.client)
    await wait_for(lambda: cw.frames[(cl_id, "audio")] > 20, 20)

    # Someone else cannot lift it; unmuting what is not muted changes nothing.
    assert await cw.client.call("moderate.mute", {"participant": cl_id, "kind": "audio"}) == {
        "ok": True
    }
    assert await client.client.wait("moderation.muted") == {"kind": "audio"}
    roster = await cw.client.wait("roster", lambda r: _muted(r, cl_id).get("audio"))
    assert _muted(roster, cl_id) == {"audio": True, "video": False}
    await asyncio.sleep(0.3)  # packets already on the way
    stopped = cw.frames[(cl_id, "audio")]
    video = cw.frames[(cl_id, "video")]
    await asyncio.sleep(1.0)
    assert cw.frames[(cl_id, "audio")] == stopped
    assert cw.frames[(cl_id, "video")] > video + 10  # only the muted kind stops

    assert await client.client.call("unmute", {"kind": "audio"}) == {"ok": True}
    await cw.client.wait("roster", lambda r: _muted(r, cl_id).get("audio") is False)
    await wait_for(lambda: cw.frames[(cl_id, "audio")] > stopped + 20, 10)


@pytest.mark.slow
async def test_remove_stops_media_and_kills_the_invite(
    server: RunningServer, clients: Clients
) -> None:
    room = await server.create_room()
    cw_token = link_token(room["caseworker_url"])
    cw = await clients.join_media(cw_token, (220, 40, 40))
    client = await clients.join_media(link_token(room["client_url"]), (40, 40, 220))
    status, body = await server.invite(room["room"], cw_token, waiting_room=False)
    assert status == 201
    invite = link_token(body["invite_url"])
    partner = await clients.join_media(invite, (40, 220, 40))
    for peer in (cw, client, partner):
        assert (await peer.publish())["ok"] is True
    pa_id = me(partner.client)
    await wait_for(
        lambda: cw.frames[(pa_id, "video")] > 10 and client.frames[(pa_id, "video")] > 10, 20
    )

    assert await cw.client.call("moderate.remove", {"participant": pa_id}) == {"ok": True}
    error = await partner.client.wait("error")
    assert error["error"] == "removed" and error["message"]
    await partner.client.wait("_disconnect")
    await asyncio.sleep(0.3)
    gone = {peer: peer.frames[(pa_id, "video")] for peer in (cw, client)}
    await asyncio.sleep(1.0)
    for peer in (cw, client):
        assert peer.frames[(pa_id, "video")] == gone[peer]
        await peer.client.wait("roster", lambda r: pa_id not in roster_ids(r))
    # The others still see each other.
    cl_id = me(client.client)
    seen = cw.frames[(cl_id, "video")]
    await wait_for(lambda: cw.frames[(cl_id, "video")] > seen + 10, 10)
    # The link is dead: revoked (and spent).
    assert await clients.refused(invite) == "token_revoked"
    assert (await cw.client.call("moderate.remove", {"participant": pa_id}))["error"] == (
        "not_found"
    )
    assert (await cw.client.call("moderate.remove", {"participant": me(cw.client)}))[
        "error"
    ] == "invalid_payload"


async def test_end_for_all(server: RunningServer, clients: Clients) -> None:
    room = await server.create_room()
    cw_token = link_token(room["caseworker_url"])
    client_token = link_token(room["client_url"])
    _, body = await server.invite(room["room"], cw_token)
    cw = await clients.join(cw_token)
    client = await clients.join(client_token)
    waiting = await clients.join(link_token(body["invite_url"]))

    assert await cw.call("room.end", {}) == {"ok": True}
    for c in (cw, client, waiting):
        error = await c.wait("error")
        assert error["error"] == "room_ended" and error["message"]
        await c.wait("_disconnect")
    for token in (cw_token, client_token, link_token(body["invite_url"])):
        assert await clients.refused(token) == "room_closed"
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{server.url}/api/rooms/{room['room']}",
            headers={"Authorization": f"Bearer {client_token}"},
        ) as resp:
            assert resp.status == 410 and (await resp.json())["error"] == "room_closed"
    await wait_for(lambda: server.hub.room(room["room"]) is None, 5)


async def test_host_drop_grace_and_return(server: RunningServer, clients: Clients) -> None:
    cw_token = server.token(room=ROOM, role="caseworker")
    cw = await clients.join(cw_token)
    client = await clients.join(server.token(room=ROOM, role="client"))
    cw_id = me(cw)
    await cw.sio.disconnect()  # gone without `leave`: a dropped connection
    status = await client.wait("host.status")
    assert status == {"present": False, "grace_seconds": 2}
    await client.wait("roster", lambda r: roster_ids(r) == {me(client)})
    # Someone joining meanwhile is told too.
    late = await clients.join(server.token(room=ROOM, role="client", name="L"))
    assert (await late.wait("host.status"))["present"] is False

    back = await clients.join(cw_token)
    assert me(back) == cw_id and back.events["welcome"][0]["you"]["state"] == "admitted"
    for c in (client, late):
        await c.wait("host.status", lambda m: m["present"] is True)
    # Host rights resumed, and the grace ran out harmlessly.
    assert await back.call("room.lock", {"locked": True}) == {"ok": True}
    await asyncio.sleep(2.0)
    assert client.sio.connected and "error" not in client.events


async def test_host_grace_expiry_ends_the_session(server: RunningServer, clients: Clients) -> None:
    cw_token = server.token(room=ROOM, role="caseworker")
    client_token = server.token(room=ROOM, role="client")
    cw = await clients.join(cw_token)
    client = await clients.join(client_token)
    await cw.sio.disconnect()
    await client.wait("host.status", lambda m: m["present"] is False)
    error = await client.wait("error", within=10)
    assert error["error"] == "room_ended"
    await client.wait("_disconnect")
    assert await clients.refused(cw_token) == "room_closed"
    assert await clients.refused(client_token) == "room_closed"


async def test_explicit_leave_of_the_host_is_no_drop(
    server: RunningServer, clients: Clients
) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker"))
    client = await clients.join(server.token(room=ROOM, role="client"))
    assert await cw.call("leave", {}) == {"ok": True}
    await client.wait("roster", lambda r: roster_ids(r) == {me(client)})
    await asyncio.sleep(2.0)
    assert "host.status" not in client.events and client.sio.connected


async def test_no_grace_while_another_caseworker_is_inside(
    server: RunningServer, clients: Clients
) -> None:
    first = await clients.join(server.token(room=ROOM, role="caseworker", name="A"))
    second = await clients.join(server.token(room=ROOM, role="caseworker", name="B"))
    client = await clients.join(server.token(room=ROOM, role="client"))
    await first.sio.disconnect()
    await client.wait("roster", lambda r: roster_ids(r) == {me(second), me(client)})
    await asyncio.sleep(2.0)
    assert "host.status" not in client.events and client.sio.connected
