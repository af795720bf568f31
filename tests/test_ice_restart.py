"""ICE restarts keep a participant's connections, legs and media (sfu/ice.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os

import aioice.ice
import pytest
from aioice import stun

from sfu import ice
from sfu.ports import MediaPorts
from sfu.router import MediaConfig
from sfu.udpmux import UdpMux
from tests.media import Room, wait_for
from tests.ports import free_udp_port

pytestmark = pytest.mark.slow

MEDIA_HOST = os.environ.get("ROUNDTABLE_MEDIA_HOST", "127.0.0.1")


def remote_ufrag(pc) -> str:
    return ice.connections(pc)[0].remote_username


def local_ufrag(pc) -> str:
    return ice.connections(pc)[0].local_username


def counts(room: Room, mux: UdpMux) -> dict[str, int]:
    """What a restart must not leak: tasks, peer connections, legs, sockets, routes."""
    gc.collect()
    routes = {id(r) for s in mux.sockets for r in s.routes.values()}
    return {
        "tasks": len(asyncio.all_tasks()),
        "publishers": len(room.router.publishers),
        "subscribers": len(room.router.subscribers),
        "legs": sum(len(s.legs) for s in room.router.subscribers.values()),
        "sockets": len(mux.sockets),
        "route_readers": len(routes),
    }


@pytest.mark.parametrize("shared_port", [True, False], ids=["shared-port", "ephemeral-ports"])
async def test_restarts_keep_media_and_leak_nothing(shared_port: bool) -> None:
    mux = UdpMux(free_udp_port())
    ports = MediaPorts(mux=mux) if shared_port else None
    room = Room("room-restart", MediaConfig(media_host=MEDIA_HOST, ports=ports))
    try:
        a = await room.join("a", (220, 30, 30))
        b = await room.join("b", (30, 200, 30))
        await wait_for(lambda: b.decoded("a", "video") >= 5 and a.decoded("b", "video") >= 5, 20)
        await asyncio.sleep(0.5)
        before = counts(room, mux)

        # a's browser restarts its publish leg: the SFU takes the new credentials on the
        # same connection, answers with new ones of its own, and b keeps seeing a.
        server_pub = room.router.publishers["a"].pc
        old_remote, old_local = remote_ufrag(server_pub), local_ufrag(server_pub)
        frames = b.decoded("a", "video")
        await a.restart_publish()
        assert room.router.publishers["a"].pc is server_pub  # same connection
        assert remote_ufrag(server_pub) != old_remote and local_ufrag(server_pub) != old_local
        await wait_for(lambda: b.decoded("a", "video") > frames + 30, 15)

        # The SFU restarts b's subscribe leg (what the page asks for after a network
        # change): a new offer with new credentials on the same connection and legs.
        server_sub = room.router.subscribers["b"].pc
        old_local = local_ufrag(server_sub)
        legs = dict(room.router.subscribers["b"].legs)
        frames = b.decoded("a", "video")
        room.router.restart_ice("b")
        await wait_for(lambda: local_ufrag(server_sub) != old_local, 10)
        await wait_for(lambda: b.decoded("a", "video") > frames + 30, 15)
        assert room.router.subscribers["b"].pc is server_sub
        assert room.router.subscribers["b"].legs == legs

        # The client side's finished restart tasks go too, and the SFU's are done: wait
        # for the counts to settle (a loaded machine finishes tasks late).
        for _ in range(50):
            await asyncio.sleep(0.1)
            after = counts(room, mux)
            if after == before:
                break
        assert after == before, (before, after)
    finally:
        await room.close()
        mux.close()


def _is_stun(datagram: bytes) -> bool:
    return bool(datagram) and datagram[0] < 4  # RFC 7983: 0-3 STUN, 20-63 DTLS, 128-191 RTP


async def test_expired_consent_stops_all_sending_until_a_restart(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 7675 section 5.1: when consent expires the SFU stops sending on that
    connection (media, RTCP, everything but ICE), yet keeps the participant, its
    connection and legs for the reconnect grace; a restart's checks win consent back
    and media resumes. Consent is shortened (aioice's module constants) to seconds."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(stun, "RETRY_RTO", 0.2)
    room = Room("room-consent", MediaConfig(media_host=MEDIA_HOST))
    try:
        await room.join("a", (220, 30, 30))
        b = await room.join("b", (30, 200, 30))
        await wait_for(lambda: b.decoded("a", "video") >= 5 and b.decoded("a", "audio") >= 5, 20)

        # What reaches b's subscribe connection, by kind of datagram.
        client = ice.connections(b.sub)[0]
        seen = {"stun": 0, "other": 0}
        for protocol in client._protocols:
            original = protocol.datagram_received

            def counted(data: bytes, addr: tuple, original=original) -> None:
                seen["stun" if _is_stun(data) else "other"] += 1
                original(data, addr)

            protocol.datagram_received = counted
        await asyncio.sleep(0.5)
        assert seen["other"] > 20  # media and RTCP flow

        # b's browser stops answering the SFU's consent checks (its network went).
        answer = client.request_received
        client.request_received = lambda *args: None
        server_sub = room.router.subscribers["b"].pc
        with caplog.at_level(logging.INFO):
            await wait_for(lambda: "consent expired" in caplog.text, 15)
        await asyncio.sleep(0.3)  # what was in flight at expiry
        seen["other"] = 0
        await asyncio.sleep(1.5)
        assert seen["other"] == 0, "the SFU kept sending after consent expired"
        # The participant stays for its reconnect grace: same connection, same legs.
        assert room.router.subscribers["b"].pc is server_sub
        assert not ice.connections(server_sub)[0]._closed

        # The page restarts ICE; checks succeed with new credentials, media resumes.
        client.request_received = answer
        frames = b.decoded("a", "video")
        room.router.restart_ice("b")
        await wait_for(lambda: b.decoded("a", "video") > frames + 10, 15)
        await wait_for(lambda: seen["other"] > 20, 5)
    finally:
        await room.close()


async def test_a_restart_replaces_the_consent_checks_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """After an ICE restart the old connection's consent checks stop and one new series
    starts with the new credentials: no duplicate job left on the wheel (REVIEW #11).
    Counted where they arrive, at the browser's side of the connection."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(stun, "RETRY_RTO", 0.2)
    loop = asyncio.get_running_loop()
    room = Room("room-consent-restart", MediaConfig(media_host=MEDIA_HOST))
    try:
        await room.join("a", (220, 30, 30))
        b = await room.join("b", (30, 200, 30))
        await wait_for(lambda: b.decoded("a", "video") >= 5, 20)
        client = ice.connections(b.sub)[0]
        seen: list[tuple[float, str]] = []
        answer = client.request_received

        def counted(message: stun.Message, addr: tuple, protocol: object) -> None:
            seen.append((loop.time(), message.attributes.get("USERNAME")))
            answer(message, addr, protocol)

        client.request_received = counted
        await asyncio.sleep(2.0)
        before = list(seen)
        assert len({user for _, user in before}) == 1 and len(before) >= 5

        server_sub = room.router.subscribers["b"].pc
        old_local = local_ufrag(server_sub)
        frames = b.decoded("a", "video")
        room.router.restart_ice("b")
        await wait_for(lambda: local_ufrag(server_sub) != old_local, 10)
        await wait_for(lambda: b.decoded("a", "video") > frames + 10, 15)
        await asyncio.sleep(0.5)  # the restart's own connectivity checks are over
        mark = len(seen)
        await asyncio.sleep(2.0)
        after = seen[mark:]
        users = {user for _, user in after}
        assert users and before[0][1] not in users  # the old series stopped
        assert len(users) == 1  # and one new series runs ...
        assert len(after) <= 1.5 * len(before) + 2, (len(before), len(after))  # ... once
    finally:
        await room.close()
