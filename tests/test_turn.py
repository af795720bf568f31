"""TURN credentials (coturn's ``use-auth-secret`` scheme) in ``welcome``, checked against a
real coturn: the credential a participant is handed allocates a relay; an expired or a
forged one is refused with 401; a removed participant gets no new one."""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from server.config import Config, ConfigError
from signaling.errors import RoundtableError
from signaling.turn import MAX_TTL_SECONDS, IceServers, TurnSettings, credential
from tests.controlplane import RunningServer, SignalClient, me, refusal_code, running_server
from tests.coturn import Coturn, run_coturn

ROOM = "r_turn"
URLS = ("stun:turn.example.org:3478", "turn:turn.example.org:3478?transport=udp")


# --- the credential itself ---------------------------------------------------------------


def test_credential_lifetime_is_the_tokens_capped_by_ttl_and_a_day() -> None:
    now = 1_900_000_000
    ice = IceServers(TurnSettings(URLS, "s" * 32), clock=lambda: now)
    assert ice.expiry(now + 600) == now + 600
    assert ice.expiry(now + 3 * 86400) == now + MAX_TTL_SECONDS
    short = IceServers(TurnSettings(URLS, "s" * 32, ttl=300), clock=lambda: now)
    assert short.expiry(now + 600) == now + 300
    assert short.expiry(now + 100) == now + 100


def test_ice_object_splits_stun_from_turn_and_names_the_participant() -> None:
    now = 1_900_000_000
    ice = IceServers(TurnSettings(URLS, "s" * 32, policy="relay"), clock=lambda: now)
    out = ice.for_participant("p_one", now + 600)
    assert out["iceTransportPolicy"] == "relay"
    stun_entry, turn_entry = out["iceServers"]
    assert stun_entry == {"urls": ["stun:turn.example.org:3478"]}
    assert turn_entry["urls"] == ["turn:turn.example.org:3478?transport=udp"]
    assert turn_entry["username"] == f"{now + 600}:p_one"
    assert turn_entry["credential"] == credential("s" * 32, turn_entry["username"])
    other = ice.for_participant("p_two", now + 600)["iceServers"][1]
    assert other["credential"] != turn_entry["credential"]


def test_no_turn_configured_gives_no_servers() -> None:
    assert IceServers(TurnSettings()).for_participant("p", 0) == {
        "iceServers": [],
        "iceTransportPolicy": "all",
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ROUNDTABLE_ICE_POLICY": "sometimes"}, "all or relay"),
        ({"ROUNDTABLE_ICE_POLICY": "relay"}, "needs a turn"),
        ({"ROUNDTABLE_TURN_URLS": "turn:t.example:3478"}, "ROUNDTABLE_TURN_SECRET"),
        ({"ROUNDTABLE_TURN_URLS": "http://t.example"}, "must start with"),
        (
            {
                "ROUNDTABLE_TURN_URLS": "turn:t:3478",
                "ROUNDTABLE_TURN_SECRET": "x",
                "ROUNDTABLE_TURN_TTL": "5",
            },
            "60-86400",
        ),
    ],
)
def test_bad_turn_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env(env)


def test_turn_settings_from_env() -> None:
    config = Config.from_env(
        {
            "ROUNDTABLE_TURN_URLS": " turn:a:3478?transport=udp , turns:a:443?transport=tcp ",
            "ROUNDTABLE_TURN_SECRET": "shh",
            "ROUNDTABLE_TURN_TTL": "3600",
            "ROUNDTABLE_ICE_POLICY": "RELAY",
        }
    )
    assert config.turn_urls == ("turn:a:3478?transport=udp", "turns:a:443?transport=tcp")
    assert (config.turn_secret, config.turn_ttl, config.ice_policy) == ("shh", 3600, "relay")
    assert "shh" not in repr(config)
    assert Config.from_env({}).turn_ttl is None


# --- against a real coturn ---------------------------------------------------------------


@pytest.fixture
def coturn(tmp_path: Path) -> Any:
    with run_coturn(tmp_path / "coturn") as turn:
        yield turn
        print(f"\n--- coturn log tail ---\n{turn.log_tail(15)}")


@pytest.fixture
async def server(tmp_path: Path, coturn: Coturn):
    async with running_server(
        tmp_path,
        turn_urls=(coturn.url_udp, coturn.url_tcp),
        turn_secret=coturn.secret,
        ice_policy="relay",
        joins_per_ip_per_minute=1000,
    ) as srv:
        yield srv


@pytest.fixture
async def clients():
    made: list[SignalClient] = []

    async def join(server: RunningServer, token: str) -> SignalClient:
        client = SignalClient()
        made.append(client)
        assert await client.connect(server.url, token), client.refusal
        await client.wait("welcome")
        return client

    yield join
    for c in made:
        await c.close()


def _turn_entry(welcome: dict[str, Any]) -> dict[str, Any]:
    (entry,) = [s for s in welcome["ice"]["iceServers"] if "credential" in s]
    return entry


class _Echo(asyncio.DatagramProtocol):
    """A UDP peer on loopback that answers every datagram with the same bytes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait(data)


async def _relay_roundtrip(turn: Coturn, username: str, password: str, transport: str) -> bytes:
    """Allocate on coturn, send a datagram through the relay to an echo peer, return the echo."""
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    relay, inbox = await create_turn_endpoint(
        _Inbox, (turn.host, turn.port), username, password, transport=transport
    )
    try:
        relay.sendto(b"hello through the relay", echo.get_extra_info("sockname"))
        return await asyncio.wait_for(inbox.got.get(), 10)
    finally:
        relay.close()
        echo.close()


async def _refusal(turn: Coturn, username: str, password: str) -> int:
    """The STUN error code coturn answers an Allocate with these credentials."""
    with pytest.raises(stun.TransactionFailed) as failed:
        relay, _ = await create_turn_endpoint(
            _Inbox, (turn.host, turn.port), username, password, transport="tcp"
        )
        relay.close()
    return failed.value.response.attributes["ERROR-CODE"][0]


async def test_welcome_credential_allocates_a_relay_on_coturn(
    server: RunningServer, coturn: Coturn, clients
) -> None:
    a = await clients(server, server.token(room=ROOM, role="caseworker", name="A", ttl=900))
    b = await clients(server, server.token(room=ROOM, role="client", name="B", ttl=900))
    welcome = a.events["welcome"][0]
    assert welcome["ice"]["iceTransportPolicy"] == "relay"
    entry = _turn_entry(welcome)
    assert entry["urls"] == [coturn.url_udp, coturn.url_tcp]
    expiry, pid = entry["username"].split(":", 1)
    assert pid == me(a)
    # Lifetime = the token's remaining lifetime.
    assert abs(int(expiry) - (time.time() + 900)) < 5
    # Each participant its own credential.
    other = _turn_entry(b.events["welcome"][0])
    assert other["username"].endswith(":" + me(b)) and other["credential"] != entry["credential"]

    for transport in ("udp", "tcp"):
        echoed = await _relay_roundtrip(coturn, entry["username"], entry["credential"], transport)
        assert echoed == b"hello through the relay"

    # coturn's own client, over TCP like a browser behind a TCP-only firewall.
    def uclient(username: str, password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/usr/bin/turnutils_uclient", "-t", "-n", "2", "-m", "1", "-u", username,
             "-w", password, "-p", str(coturn.port), "-e", "127.0.0.1", coturn.host],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    before = coturn.allocations(entry["username"])
    ok = uclient(entry["username"], entry["credential"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert coturn.allocations(entry["username"]) > before
    forged = uclient(entry["username"], "Zm9yZ2VkIGNyZWRlbnRpYWw=")
    assert forged.returncode != 0 and "Cannot complete Allocation" in forged.stdout + forged.stderr


async def test_expired_and_forged_credentials_are_refused_401(
    server: RunningServer, coturn: Coturn, clients
) -> None:
    a = await clients(server, server.token(room=ROOM, role="caseworker", name="A"))
    entry = _turn_entry(a.events["welcome"][0])
    _, pid = entry["username"].split(":", 1)
    # Forged: the right username with a password not made from coturn's secret.
    assert (
        await _refusal(coturn, entry["username"], credential("not the secret", entry["username"]))
        == 401
    )
    # Forged: a later expiry with the password of the real one.
    later = f"{int(time.time()) + 86400}:{pid}"
    assert await _refusal(coturn, later, entry["credential"]) == 401
    # Expired: correctly signed with the real secret, but its time has passed.
    past = f"{int(time.time()) - 5}:{pid}"
    assert await _refusal(coturn, past, credential(coturn.secret, past)) == 401
    # And the real one still works after all that.
    assert await _relay_roundtrip(coturn, entry["username"], entry["credential"], "udp")


async def test_removed_participant_gets_no_new_credential(server: RunningServer, clients) -> None:
    cw = await clients(server, server.token(room=ROOM, role="caseworker", name="CW"))
    token = server.token(room=ROOM, role="client", name="C")
    client = await clients(server, token)
    assert _turn_entry(client.events["welcome"][0])["username"].endswith(":" + me(client))
    assert await cw.call("moderate.remove", {"participant": me(client)}) == {"ok": True}
    await client.wait("error", lambda e: e["error"] == "removed")
    # Connecting again is the only way to a new credential; the revoked token cannot.
    again = SignalClient()
    try:
        assert not await again.connect(server.url, token)
        assert refusal_code(again) == "token_revoked"
        assert "welcome" not in again.events
    finally:
        await again.close()


async def test_bench_participants_send_media_only_through_coturn(
    server: RunningServer, coturn: Coturn
) -> None:
    """The bench's synthetic peers take ``welcome.ice`` as the page does: with the relay
    policy they offer only relay candidates, and media still flows both ways."""
    from bench.generator import partner_token
    from bench.media import encode_media
    from bench.participant import SyntheticParticipant, Window
    from tests.media import wait_for

    media = encode_media(video_bitrate=200_000, seconds=1.0, size=(320, 180))
    people: list[SyntheticParticipant] = []
    try:
        for i in range(2):
            token = partner_token(server.config.secret, ROOM, i)
            p = SyntheticParticipant(server.url, token, "partner", i, media, Window(active=True))
            people.append(p)
            await p.join()
        await wait_for(lambda: all(len(p.rx.e2e_ns) >= 20 for p in people), timeout=30)
        assert all(len(p.rx.e2e_ns) >= 20 for p in people), [p.errors for p in people]
        assert all(p.received_from() == {q.pid for q in people} - {p.pid} for p in people)
        for p in people:
            for pc in (p.pub, p.sub):
                assert pc is not None
                candidates = [
                    line for line in pc.localDescription.sdp.splitlines() if "a=candidate:" in line
                ]
                assert candidates and all(" typ relay" in c for c in candidates), candidates
    finally:
        await asyncio.gather(*(p.close() for p in people), return_exceptions=True)


# --- the shipped coturn configuration ----------------------------------------------------

DEPLOY_CONF = Path(__file__).resolve().parent.parent / "deploy" / "turnserver.conf"


async def _relay_reaches(turn: Coturn, peer_ip: str) -> bool:
    """Through a fresh allocation, does a datagram reach an echo peer on ``peer_ip``?"""
    username = f"{int(time.time()) + 300}:p_probe"
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=(peer_ip, 0))
    relay, inbox = await create_turn_endpoint(
        _Inbox, (turn.host, turn.port), username, credential(turn.secret, username)
    )
    try:
        relay.sendto(b"probe", echo.get_extra_info("sockname"))
        try:
            await asyncio.wait_for(inbox.got.get(), 3)
        except TimeoutError:
            return False
        return True
    finally:
        relay.close()
        echo.close()


async def test_shipped_coturn_config_keeps_the_relay_out_of_private_networks(
    tmp_path: Path,
) -> None:
    """coturn with deploy/turnserver.conf (what differs per site on the command line, as
    compose.yaml does; no TLS here: run_coturn passes --no-tls) refuses to relay to loopback or a private address;
    ``allowed-peer-ip`` opens exactly the media node's address."""
    from tests.netns import veth_namespace

    # A private (RFC 1918) address in this test's namespace: the veth's outside end.
    with veth_namespace(tmp_path / "netns", outside="10.203.0.5/30", inside="10.203.0.6/30"):
        private = "10.203.0.5"
        shipped = {"allow_loopback": False, "config": DEPLOY_CONF}
        with run_coturn(tmp_path / "closed", **shipped) as turn:
            assert not await _relay_reaches(turn, private)
            assert not await _relay_reaches(turn, "127.0.0.1")
            log = turn.log_path.read_text()
            assert "ALLOCATE processed, success" in log and "error 403" in log, turn.log_tail()
        opened = (f"--allowed-peer-ip={private}",)
        with run_coturn(tmp_path / "media", **shipped, extra=opened) as turn:
            assert await _relay_reaches(turn, private), turn.log_tail()
            assert not await _relay_reaches(turn, "127.0.0.1")


async def test_relay_allocated_in_time_outlives_the_credential(coturn: Coturn) -> None:
    """A link's ``exp`` bounds joining, not the call (docs/protocol.md, "Session end"):
    coturn checks the credential's expiry when a relay is allocated, and an allocation
    made in time keeps relaying and can be refreshed after it, so a call does not break
    when the link of someone in it runs out. A new allocation is refused."""
    username = f"{int(time.time()) + 2}:p_late"
    password = credential(coturn.secret, username)
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    relay, inbox = await create_turn_endpoint(
        _Inbox, (coturn.host, coturn.port), username, password, transport="tcp"
    )
    try:
        relay.sendto(b"before", echo.get_extra_info("sockname"))
        assert await asyncio.wait_for(inbox.got.get(), 5) == b"before"
        await asyncio.sleep(3.5)
        assert int(username.split(":")[0]) < time.time()
        relay.sendto(b"after", echo.get_extra_info("sockname"))
        assert await asyncio.wait_for(inbox.got.get(), 5) == b"after"
        # The allocation's own refresh (what browsers send every few minutes) still passes.
        refresh = stun.Message(message_method=stun.Method.REFRESH, message_class=stun.Class.REQUEST)
        refresh.attributes["LIFETIME"] = 600
        inner = relay._TurnTransport__inner_protocol  # type: ignore[attr-defined]
        response, _ = await inner.request_with_retry(refresh)
        assert response.message_class == stun.Class.RESPONSE
        assert await _refusal(coturn, username, password) == 401
    finally:
        relay.close()
        echo.close()


async def test_ice_refresh_runs_to_the_sessions_end_and_only_for_those_in_the_call(
    server: RunningServer, coturn: Coturn, clients
) -> None:
    """``ice.refresh``: a fresh credential for an admitted participant, valid until the
    session's end even where the link (a 1-minute invite) runs out sooner; refused to
    someone waiting and to a removed participant."""
    from tests.controlplane import link_token

    room = await server.create_room(valid_minutes=60)
    cw_token = link_token(room["caseworker_url"])
    cw = await clients(server, cw_token)
    status, body = await server.invite(room["room"], cw_token, valid_minutes=1, waiting_room=False)
    assert status == 201
    partner = await clients(server, link_token(body["invite_url"]))
    welcome_expiry = int(_turn_entry(partner.events["welcome"][0])["username"].split(":")[0])
    assert welcome_expiry <= time.time() + 61  # the welcome's follows the link

    ack = await partner.call("ice.refresh", {})
    assert ack["ok"] is True and ack["ice"]["iceTransportPolicy"] == "relay"
    entry = _turn_entry(ack)
    expiry, pid = entry["username"].split(":", 1)
    assert pid == me(partner)
    ends_at = cw.events["welcome"][0]["room"]["ends_at"]
    assert int(expiry) == int(datetime.fromisoformat(ends_at.replace("Z", "+00:00")).timestamp())
    assert await _relay_roundtrip(coturn, entry["username"], entry["credential"], "tcp")
    assert (await partner.call("ice.refresh", {"extra": 1}))["error"] == "invalid_payload"

    # Someone in the waiting room has no media: no credential.
    waiting = await clients(
        server, server.token(room=room["room"], role="client", name="W", lobby=True)
    )
    assert (await waiting.call("ice.refresh", {}))["error"] == "forbidden"

    # Removed: the hub refuses even if an event of the old connection were still queued.
    participant = server.hub.room(room["room"]).get(me(partner))
    assert await cw.call("moderate.remove", {"participant": me(partner)}) == {"ok": True}
    await partner.wait("error", lambda e: e["error"] == "removed")
    with pytest.raises(RoundtableError) as refused:
        server.hub.refresh_ice(participant)
    assert refused.value.code == "forbidden"
