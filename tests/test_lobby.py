"""The waiting room on a real server: moderators see it, admit and deny; people waiting
see only themselves and neither send nor receive media; a locked room admits nobody."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiortc import RTCSessionDescription

from tests.controlplane import (
    Clients,
    RunningServer,
    link_token,
    me,
    roster_ids,
    running_server,
)
from tests.media import wait_for

ROOM = "r_lobby"
SDP = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
CANDIDATE = {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}


@pytest.fixture
async def server(tmp_path: Path):
    async with running_server(tmp_path, joins_per_ip_per_minute=1000) as srv:
        yield srv


def _waiting_ids(lobby: dict) -> list[str]:
    return [p["id"] for p in lobby["waiting"]]


async def test_moderator_sees_the_lobby_and_admits(server: RunningServer, clients: Clients) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker", name="Frau B"))
    assert await cw.wait("lobby") == {"waiting": []}
    # Someone admitted without the moderate grant never sees the waiting room.
    other = await clients.join(server.token(room=ROOM, role="client", name="Herr D"))
    waiting = await clients.join(server.token(room=ROOM, role="client", name="Herr K", lobby=True))
    wid = me(waiting)
    assert waiting.events["welcome"][0]["you"]["state"] == "waiting"

    lobby = await cw.wait("lobby", lambda m: _waiting_ids(m) == [wid])
    entry = lobby["waiting"][0]
    assert entry["name"] == "Herr K" and entry["role"] == "client" and entry["state"] == "waiting"
    assert "lobby" not in other.events

    # Waiting: only its own status in the roster; no media event is accepted.
    assert roster_ids(await waiting.wait("roster")) == {wid}
    for event, payload in (
        ("publish", {"type": "offer", "sdp": SDP}),
        ("subscribe.answer", {"type": "answer", "sdp": SDP}),
        ("ice", {"pc": "publish", "candidate": CANDIDATE}),
    ):
        assert (await waiting.call(event, payload))["error"] == "forbidden", event
    # … nor can it admit itself.
    assert (await waiting.call("lobby.admit", {"participant": wid}))["error"] == "forbidden"

    assert await cw.call("lobby.admit", {"participant": wid}) == {"ok": True}
    await waiting.wait("admitted")
    await cw.wait("lobby", lambda m: m["waiting"] == [])
    everyone = {me(cw), me(other), wid}
    for c in (cw, other, waiting):
        await c.wait("roster", lambda r: roster_ids(r) == everyone)
    # Admitting twice, or someone unknown, is refused and changes nothing.
    assert (await cw.call("lobby.admit", {"participant": wid}))["error"] == "invalid_payload"
    assert (await cw.call("lobby.admit", {"participant": "p_nobody"}))["error"] == "not_found"
    assert (await cw.call("lobby.admit", {"participant": 7}))["error"] == "invalid_payload"


async def test_deny_disconnects_and_revokes(server: RunningServer, clients: Clients) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker"))
    token = server.token(room=ROOM, role="client", lobby=True)
    waiting = await clients.join(token)
    wid = me(waiting)
    await cw.wait("lobby", lambda m: _waiting_ids(m) == [wid])

    assert await cw.call("lobby.deny", {"participant": wid}) == {"ok": True}
    error = await waiting.wait("error")
    assert error["error"] == "lobby_denied" and error["message"]
    await waiting.wait("_disconnect")
    await cw.wait("lobby", lambda m: m["waiting"] == [])
    assert await clients.refused(token) == "token_revoked"


async def test_leaving_the_lobby_updates_the_moderators(
    server: RunningServer, clients: Clients
) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker"))
    waiting = await clients.join(server.token(room=ROOM, role="client", lobby=True))
    await cw.wait("lobby", lambda m: _waiting_ids(m) == [me(waiting)])
    cw.events["lobby"].clear()
    await waiting.sio.disconnect()
    await cw.wait("lobby", lambda m: m["waiting"] == [])


async def test_locked_room_admits_nobody_new(server: RunningServer, clients: Clients) -> None:
    cw_token = server.token(room=ROOM, role="caseworker")
    cw = await clients.join(cw_token)
    inside = await clients.join(server.token(room=ROOM, role="client"))
    assert await cw.call("room.lock", {"locked": True}) == {"ok": True}
    for c in (cw, inside):
        assert await c.wait("room.state") == {"locked": True}

    # Direct entry is refused; the waiting room still takes people, but nobody is admitted.
    assert await clients.refused(server.token(room=ROOM, role="client")) == "room_locked"
    waiting = await clients.join(server.token(room=ROOM, role="client", lobby=True))
    assert waiting.events["welcome"][0]["room"]["locked"] is True
    await cw.wait("lobby", lambda m: _waiting_ids(m) == [me(waiting)])
    assert (await cw.call("lobby.admit", {"participant": me(waiting)}))["error"] == "room_locked"
    assert "admitted" not in waiting.events

    # People inside, and the host, may reconnect (a reload) into the locked room.
    again = await clients.reload(cw, cw_token)
    await cw.wait("_disconnect")
    assert (await again.call("room.lock", {"locked": False})) == {"ok": True}
    await inside.wait("room.state", lambda m: m == {"locked": False})
    assert await again.call("lobby.admit", {"participant": me(waiting)}) == {"ok": True}
    await waiting.wait("admitted")


async def test_reload_of_an_admitted_participant_skips_the_lobby(
    server: RunningServer, clients: Clients
) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker"))
    token = server.token(room=ROOM, role="client", lobby=True)
    first = await clients.join(token)
    await cw.call("lobby.admit", {"participant": me(first)})
    await first.wait("admitted")
    second = await clients.reload(first, token)
    assert second.events["welcome"][0]["you"]["state"] == "admitted"
    assert (await first.wait("error"))["error"] == "replaced"


@pytest.mark.slow
async def test_nobody_waiting_gets_media_until_admitted(
    server: RunningServer, clients: Clients
) -> None:
    room = await server.create_room()
    cw = await clients.join_media(link_token(room["caseworker_url"]), (220, 40, 40))
    partner = await clients.join_media(
        server.token(
            room=room["room"],
            role="partner",
            name="P",
            grants=["publish", "subscribe", "audio", "video", "see_client"],
        ),
        (40, 220, 40),
    )
    waiting_token = server.token(room=room["room"], role="client", name="W", lobby=True)
    waiting = await clients.join_media(waiting_token, (40, 40, 220))
    cw_id, pa_id, w_id = me(cw.client), me(partner.client), me(waiting.client)

    for peer in (cw, partner):
        assert (await peer.publish())["ok"] is True
    await wait_for(
        lambda: cw.frames[(pa_id, "video")] > 10 and partner.frames[(cw_id, "video")] > 10, 20
    )

    # While others publish, the waiting participant can neither publish nor subscribe…
    ack = await waiting.publish()
    assert ack["error"] == "forbidden"
    ack = await waiting.client.call("subscribe.answer", {"type": "answer", "sdp": SDP})
    assert ack["error"] == "forbidden"
    seen = cw.frames[(pa_id, "video")]
    await wait_for(lambda: cw.frames[(pa_id, "video")] > seen + 30, 10)  # ~1 s of media
    # … and has received nothing: no offer, no track, no packet on any connection.
    assert "subscribe.offer" not in waiting.client.events
    assert waiting.sub is None and not waiting.frames
    assert waiting.pub.remoteDescription is None
    assert w_id not in {t["participant"] for t in cw.client.events["subscribe.offer"][-1]["tracks"]}

    assert await cw.client.call("lobby.admit", {"participant": w_id}) == {"ok": True}
    await waiting.client.wait("admitted")
    await waiting.client.wait("subscribe.offer")
    await wait_for(
        lambda: waiting.frames[(cw_id, "video")] > 10 and waiting.frames[(pa_id, "audio")] > 10, 20
    )
    # Once admitted, the same offer is accepted and the others receive it.
    ack = await waiting.client.call(
        "publish", {"type": "offer", "sdp": waiting.pub.localDescription.sdp}
    )
    assert ack["ok"] is True
    await waiting.pub.setRemoteDescription(RTCSessionDescription(sdp=ack["sdp"], type="answer"))
    await wait_for(lambda: cw.frames[(w_id, "video")] > 10, 20)
