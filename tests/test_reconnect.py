"""A dropped connection keeps its seat: reconnecting, resume, own seat behind a lock, and
one device per link (docs/protocol.md, "Reconnecting")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import engineio.packet
import pytest
from aiortc.mediastreams import AudioStreamTrack

from tests.controlplane import (
    Clients,
    MediaParticipant,
    RunningServer,
    link_token,
    me,
    running_server,
)
from tests.media import ColourVideoTrack, close_to, wait_for

ROOM = "r_reconnect"
RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)


@pytest.fixture
async def server(tmp_path: Path):
    async with running_server(
        tmp_path, joins_per_ip_per_minute=1000, reconnect_grace_seconds=1.5
    ) as srv:
        yield srv


def _entry(roster: dict, pid: str) -> dict | None:
    return next((p for p in roster["participants"] if p["id"] == pid), None)


def _shows(pid: str, **fields):
    def check(roster: dict) -> bool:
        entry = _entry(roster, pid)
        return entry is not None and all(entry.get(k) == v for k, v in fields.items())

    return check


async def _drop(client) -> None:
    """The network goes: the client stops answering the server's pings (nothing is
    closed, nothing sent), so the server notices by its ping timeout, as it would a
    train tunnel; then the client's side is torn down without a word."""
    eio = client.sio.eio
    receive = eio._receive_packet

    async def deaf(pkt) -> None:
        if pkt.packet_type != engineio.packet.PING:
            await receive(pkt)

    eio._receive_packet = deaf
    await client.wait("_disconnect", within=15)


async def test_a_dropped_participant_is_reconnecting_then_resumes_its_seat(
    server: RunningServer, clients: Clients
) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker", name="Frau B"))
    cl = await clients.join(server.token(room=ROOM, role="client", name="Herr K"))
    welcome = cl.events["welcome"][0]
    pid, secret = welcome["you"]["id"], welcome["resume"]
    assert welcome["resumed"] is False and len(secret) >= 24
    assert cw.events["welcome"][0]["resume"] != secret  # each participant its own

    await _drop(cl)
    await cw.wait("roster", _shows(pid, connection="reconnecting", quality="lost"))

    back = clients.new()
    assert await back.connect(server.url, cl_token(cl), resume=secret), back.refusal
    again = await back.wait("welcome")
    assert again["resumed"] is True and again["you"]["id"] == pid
    assert again["you"]["state"] == "admitted"
    await cw.wait(
        "roster", lambda r: _shows(pid, connection="live")(r) and len(r["participants"]) == 2
    )
    # No gone notice: the grace passes without anyone leaving.
    await cw.wait("roster", _shows(pid, connection="live"), within=3)
    assert "participant.gone" not in cw.events


async def test_a_resume_before_the_server_noticed_the_cut_closes_the_old_connection(
    server: RunningServer, clients: Clients
) -> None:
    """The page is back (resume, same media) while the server still holds its old
    connection, e.g. half-open after a cut: the server closes the old one at once, not
    only when engine.io's ping timeout finds it dead."""
    cw = await clients.join(server.token(room=ROOM, role="caseworker", name="Frau B"))
    cl = await clients.join(server.token(room=ROOM, role="client", name="Herr K"))
    pid, secret = me(cl), cl.events["welcome"][0]["resume"]
    back = clients.new()
    assert await back.connect(server.url, cl_token(cl), resume=secret), back.refusal
    assert (await back.wait("welcome"))["resumed"] is True
    await cl.wait("_disconnect", within=3)
    await cw.wait("roster", _shows(pid, connection="live"))
    assert "participant.gone" not in cw.events


def cl_token(client) -> str:
    return client.sio.connection_auth["token"]


async def test_after_the_grace_the_participant_is_gone_with_a_reason(
    server: RunningServer, clients: Clients
) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker", name="Frau B"))
    cl = await clients.join(server.token(room=ROOM, role="client", name="Herr K"))
    pid = me(cl)
    await _drop(cl)
    await cw.wait("roster", _shows(pid, connection="reconnecting"))
    gone = await cw.wait("participant.gone", within=5)
    assert gone == {"id": pid, "reason": "connection_lost"}
    await cw.wait("roster", lambda r: _entry(r, pid) is None)


async def test_wrong_resume_secret_resumes_nothing(server: RunningServer, clients: Clients) -> None:
    await clients.join(server.token(room=ROOM, role="caseworker", name="Frau B"))
    token = server.token(room=ROOM, role="client", name="Herr K")
    cl = await clients.join(token)
    # Live seat, forged secret: a second device, not a resume.
    other = clients.new()
    assert not await other.connect(server.url, token, resume="x" * 32)
    assert other.refusal["data"]["error"] == "seat_taken"
    assert cl.sio.connected


async def test_locked_room_admitted_client_reloads_and_a_newcomer_is_refused(
    server: RunningServer, clients: Clients
) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker", name="Frau B"))
    token = server.token(room=ROOM, role="client", name="Herr K")
    cl = await clients.join(token)
    pid = me(cl)
    assert (await cw.call("room.lock", {"locked": True}))["ok"]

    # A reload: the page is gone, a new one comes with the same link (no secret).
    await _drop(cl)
    await cw.wait("roster", _shows(pid, connection="reconnecting"))
    back = await clients.join(token)
    assert me(back) == pid and back.events["welcome"][0]["you"]["state"] == "admitted"

    # Even after the grace ran out (the seat is still theirs in a locked room).
    await _drop(back)
    await cw.wait("participant.gone", within=5)
    again = await clients.join(token)
    assert me(again) == pid

    # Someone new behind the lock: refused, and the caseworker is told who.
    newcomer = server.token(room=ROOM, role="client", name="Frau Neu")
    assert await clients.refused(newcomer) == "room_locked"
    told = await cw.wait("lobby.refused")
    assert told["name"] == "Frau Neu" and told["reason"] == "room_locked"


async def test_a_forwarded_invite_on_a_second_device_is_refused(
    server: RunningServer, clients: Clients
) -> None:
    room = await server.create_room()
    cw_token = link_token(room["caseworker_url"])
    cw = await clients.join(cw_token)
    status, invite = await server.invite(room["room"], cw_token, waiting_room=False)
    assert status == 201, invite
    partner_token = link_token(invite["invite_url"])
    partner = await clients.join(partner_token)
    pid = me(partner)

    # The same link opened elsewhere while the partner is in the call.
    assert await clients.refused(partner_token) == "seat_taken"
    told = await cw.wait("seat.conflict")
    assert told["participant"] == pid and told["reason"] == "seat_taken"
    assert partner.sio.connected
    roster = await cw.wait("roster", lambda r: _entry(r, pid) is not None)
    assert _entry(roster, pid)["connection"] == "live"

    # The partner's own reconnect does not spend the invite again.
    secret = partner.events["welcome"][0]["resume"]
    await _drop(partner)
    await cw.wait("roster", _shows(pid, connection="reconnecting"))
    back = clients.new()
    assert await back.connect(server.url, partner_token, resume=secret), back.refusal
    assert (await back.wait("welcome"))["resumed"] is True
    # Nor a reload after the grace.
    await _drop(back)
    await cw.wait("participant.gone", within=5)
    assert me(await clients.join(partner_token)) == pid


async def test_self_mute_and_connection_quality_reach_everyone(
    server: RunningServer, clients: Clients
) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker", name="Frau B"))
    cl = await clients.join(server.token(room=ROOM, role="client", name="Herr K"))
    pid = me(cl)
    assert (await cl.call("self.mute", {"kind": "audio", "muted": True}))["ok"]
    await cw.wait("roster", _shows(pid, self_muted={"audio": True, "video": False}))
    assert (await cl.call("quality", {"level": "poor"}))["ok"]
    await cw.wait("roster", _shows(pid, quality="poor"))
    bad = await cl.call("quality", {"level": "terrible"})
    assert bad["error"] == "invalid_payload"
    bad = await cl.call("ice.restart", {"pc": "publish"})
    assert bad["error"] == "invalid_payload"


async def _take_over(
    server: RunningServer, clients: Clients, token: str, secret: str, pid: str
) -> tuple[MediaParticipant, asyncio.Future[bool]]:
    """Page 2 of the same person connects with page 1's resume secret; returns once it
    holds the seat (page 1 has left), with its connect still under way."""
    room = server.hub.room(ROOM)
    old_sid = room.get(pid).sid
    page2 = MediaParticipant(clients.new(), BLUE)
    clients._media.append(page2)
    takeover = asyncio.ensure_future(
        page2.client.connect(server.url, token, resume=secret, fresh=True)
    )
    await wait_for(lambda: room.get(pid).sid != old_sid, timeout=10)
    return page2, takeover


@pytest.mark.slow
async def test_a_replaced_page_s_queued_offer_leaves_no_publisher_behind(
    server: RunningServer, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Page 1 sends two publish offers at once (its second waits for its first); while
    the first is still in the SFU, page 2 of the same person takes the seat over. No
    offer of page 1 may leave a publisher under the seat's id: page 2's own offer must
    get a connection of its own (not be a re-offer on page 1's), and its media must
    reach B. Before the fix the second offer, let through before the takeover, reached
    the router after the takeover's removal and stayed there."""
    from sfu.publisher import Publisher

    b = await clients.join_media(server.token(room=ROOM, role="caseworker", name="B"), GREEN)
    token = server.token(room=ROOM, role="client", name="A")
    page1 = await clients.join_media(token, RED)
    pid, secret = me(page1.client), page1.client.events["welcome"][0]["resume"]

    # Page 1's first offer stays in the SFU (a slow gathering) until the takeover is on.
    in_sfu, go_on = asyncio.Event(), asyncio.Event()
    negotiate = Publisher.negotiate

    async def slow_first(self: Publisher, offer_sdp: str) -> str:
        if not in_sfu.is_set():
            in_sfu.set()
            await go_on.wait()
        return await negotiate(self, offer_sdp)

    monkeypatch.setattr(Publisher, "negotiate", slow_first)
    # Counts the offers that reached the hub: the second then waits for the first's turn.
    entered = 0
    publish = server.hub.publish

    async def counted(participant, offer_sdp: str) -> str:
        nonlocal entered
        entered += 1
        return await publish(participant, offer_sdp)

    monkeypatch.setattr(server.hub, "publish", counted)
    page1.pub.addTrack(AudioStreamTrack())
    page1.pub.addTrack(ColourVideoTrack(RED))
    await page1.pub.setLocalDescription(await page1.pub.createOffer())
    offer = {"type": "offer", "sdp": page1.pub.localDescription.sdp}
    offers = [asyncio.ensure_future(page1.client.call("publish", offer)) for _ in range(2)]
    await wait_for(lambda: in_sfu.is_set() and entered == 2, timeout=10)

    page2, takeover = await _take_over(server, clients, token, secret, pid)
    # An offer page 1 sends now (its connection not yet closed) is refused at once.
    late = await page1.client.call("publish", offer)
    assert late == {"error": "forbidden", "message": "You are no longer in this session."}
    go_on.set()
    assert await takeover, page2.client.refusal
    await page2.client.wait("welcome")
    acks = await asyncio.gather(*offers, return_exceptions=True)
    # Page 1 is told its offers were not taken (or was gone before it heard).
    assert all(isinstance(a, BaseException) or a.get("error") == "forbidden" for a in acks), acks
    # Nothing of page 1 is left in the SFU under the seat's id.
    live = server.hub._rooms[ROOM]
    assert pid not in live.router.publishers, "page 1's publisher outlived the takeover"

    ack = await page2.publish()
    assert ack.get("ok"), ack
    await wait_for(
        lambda: b.frames[(pid, "video")] >= 10 and close_to(b.colours.get(pid, ()), BLUE),
        timeout=20,
    )


@pytest.mark.slow
async def test_a_replaced_page_s_queued_renegotiation_does_not_reach_the_sfu(
    server: RunningServer, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Page 1 has two subscribe renegotiations under way (its second waits for its
    first); while the first is in the SFU, page 2 of the same person takes the seat over.
    The second must not reach the router after the takeover's removal: it would register
    a subscriber under the seat's id with page 1's receive rights (none: page 1 has left),
    which page 2's own renegotiation then had to undo. Page 2 receives B's picture."""
    from sfu.router import Router
    from sfu.subscriber import Subscriber
    from signaling.rooms.negotiation import Negotiator

    b = await clients.join_media(server.token(room=ROOM, role="caseworker", name="B"), GREEN)
    assert (await b.publish()).get("ok")
    token = server.token(room=ROOM, role="client", name="A")
    page1 = await clients.join_media(token, RED)
    pid, secret = me(page1.client), page1.client.events["welcome"][0]["resume"]
    bid = me(b.client)
    await wait_for(lambda: page1.frames[(bid, "video")] >= 5, timeout=20)

    # Page 1's next subscribe offer stays in the SFU until the takeover is on.
    in_sfu, go_on = asyncio.Event(), asyncio.Event()
    offer = Subscriber.offer

    async def slow_first(self: Subscriber, *args, **kwargs):
        if self.pid == pid and not in_sfu.is_set():
            in_sfu.set()
            await go_on.wait()
        return await offer(self, *args, **kwargs)

    monkeypatch.setattr(Subscriber, "offer", slow_first)
    # What reached the router for the seat's id, in order: a removal, or a subscribe
    # with whether its rights let it receive B's audio.
    calls: list[tuple[str, bool]] = []
    subscribe, remove = Router.subscribe, Router.remove

    async def logged_subscribe(self: Router, p: str, accept=None):
        if p == pid:
            calls.append(("subscribe", accept is not None and accept(bid, "audio")))
        return await subscribe(self, p, accept)

    async def logged_remove(self: Router, p: str):
        if p == pid:
            calls.append(("remove", True))
        return await remove(self, p)

    monkeypatch.setattr(Router, "subscribe", logged_subscribe)
    monkeypatch.setattr(Router, "remove", logged_remove)
    # The renegotiations started for the seat's id. One that started runs without an
    # await up to the negotiation's lock, so once its task has yielded it waits there.
    started: list[str] = []
    renegotiate = Negotiator._renegotiate

    async def counted(self: Negotiator, live, p: str) -> None:
        if p == pid:
            started.append(p)
        await renegotiate(self, live, p)

    monkeypatch.setattr(Negotiator, "_renegotiate", counted)
    # Each network change asks for a subscribe offer; the second waits for the first.
    assert (await page1.client.call("ice.restart", {"pc": "subscribe"}))["ok"]
    await wait_for(in_sfu.is_set, timeout=10)
    assert (await page1.client.call("ice.restart", {"pc": "subscribe"}))["ok"]
    await wait_for(lambda: len(started) == 2, timeout=10)  # waiting for the first's turn

    page2, takeover = await _take_over(server, clients, token, secret, pid)
    go_on.set()
    assert await takeover, page2.client.refusal
    await page2.client.wait("welcome")
    await wait_for(
        lambda: page2.frames[(bid, "video")] >= 10 and close_to(page2.colours.get(bid, ()), GREEN),
        timeout=20,
    )
    after = calls[calls.index(("remove", True)) + 1 :]
    assert after and all(allowed for _, allowed in after), calls
