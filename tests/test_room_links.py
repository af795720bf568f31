"""Waiting room and consent per link (issue 14): ``POST /api/rooms`` decides whether the
client link goes through the waiting room and the consent text; the server enforces it."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.controlplane import Clients, RunningServer, link_token, running_server


@pytest.fixture
async def server(tmp_path: Path):
    async with running_server(tmp_path, joins_per_ip_per_minute=1000) as srv:
        yield srv


async def _create(server: RunningServer, body: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server.url}/api/rooms",
            json=body,
            headers={"Authorization": f"Bearer {server.config.api_key}"},
        ) as resp:
            return resp.status, await resp.json()


async def _you(server: RunningServer, room: dict, key: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{server.url}/api/rooms/{room['room']}",
            headers={"Authorization": f"Bearer {link_token(room[key])}"},
        ) as resp:
            assert resp.status == 200
            return (await resp.json())["you"]


async def test_client_link_goes_through_lobby_and_consent_by_default(
    server: RunningServer, clients: Clients
) -> None:
    status, room = await _create(server, {})
    assert status == 201
    assert room["client_lobby"] is True and room["client_consent"] is True
    you = await _you(server, room, "client_url")
    assert you["lobby"] is True and you["consent"] is True
    # The caseworker's own link goes straight in, without a consent box.
    cw_you = await _you(server, room, "caseworker_url")
    assert cw_you["lobby"] is False and cw_you["consent"] is False

    token = link_token(room["client_url"])
    # A client that skips the consent (the page's box, or a hand-made connect) is refused.
    assert await clients.refused(token) == "consent_required"
    refused = clients.new()
    assert not await refused.connect(server.url, token, consent="yes")
    # With it, the client waits in the lobby until someone lets them in.
    client = clients.new()
    assert await client.connect(server.url, token, consent=True), client.refusal
    welcome = await client.wait("welcome")
    assert welcome["you"]["state"] == "waiting"


@pytest.mark.parametrize(
    ("lobby", "consent", "state"),
    [(False, False, "admitted"), (False, True, "admitted"), (True, False, "waiting")],
)
async def test_room_options_decide_the_client_link(
    server: RunningServer, clients: Clients, lobby: bool, consent: bool, state: str
) -> None:
    status, room = await _create(server, {"client_lobby": lobby, "client_consent": consent})
    assert status == 201, room
    token = link_token(room["client_url"])
    if consent:
        assert await clients.refused(token) == "consent_required"
    client = clients.new()
    extra = {"consent": True} if consent else {}
    assert await client.connect(server.url, token, **extra), client.refusal
    assert (await client.wait("welcome"))["you"]["state"] == state


@pytest.mark.parametrize("body", [{"client_lobby": "no"}, {"client_consent": 1}])
async def test_room_options_must_be_booleans(server: RunningServer, body: dict) -> None:
    status, answer = await _create(server, body)
    assert (status, answer["error"]) == (400, "bad_request")


async def test_client_present_makes_no_client_link(server: RunningServer, clients: Clients) -> None:
    """Hybrid appointment: the client sits at the desk; the others see it on the
    caseworker's entry, and a QR code can still make the client a link for their phone."""
    status, room = await _create(server, {"client_present": True})
    assert status == 201, room
    assert room["client_url"] is None and room["client_present"] is True
    cw = await clients.join(link_token(room["caseworker_url"]))
    assert cw.events["welcome"][0]["you"]["client_present"] is True
    status, plain = await _create(server, {"client_lobby": False, "client_consent": False})
    other = await clients.join(link_token(plain["caseworker_url"]))
    assert other.events["welcome"][0]["you"]["client_present"] is False
    assert (await _create(server, {"client_present": "yes"}))[0] == 400
