"""Chat on a real server (issue 14): validated, rate-limited, switchable by the caseworker,
only for holders of the ``chat`` grant, and never kept: the text of a message appears
neither in the server's log nor in Redis."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.controlplane import Clients, RunningServer, link_token, me, running_server

ROOM = "r_chat"
SECRET_TEXT = "Aktenzeichen 4711-XY geheim"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def server(request: pytest.FixtureRequest, tmp_path: Path):
    extra = {}
    if request.param == "redis":
        extra["redis_url"] = request.getfixturevalue("redis_url")
    async with running_server(tmp_path, joins_per_ip_per_minute=1000, **extra) as srv:
        yield srv


async def test_chat_reaches_the_room_and_is_never_kept(
    server: RunningServer, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cw = await clients.join(server.token(room=ROOM, role="caseworker", name="Frau B"))
    cl = await clients.join(server.token(room=ROOM, role="client", name="Herr K"))
    # A partner whose only right is the chat (an interpreter typing along), and one
    # without it: the latter neither writes nor reads.
    typist = await clients.join(
        server.token(room=ROOM, role="partner", name="Dolmetscherin", grants=["chat"])
    )
    mute = await clients.join(
        server.token(room=ROOM, role="partner", name="Ohne Chat", grants=["subscribe"])
    )

    answer = await cl.call("chat.send", {"text": f"  {SECRET_TEXT}\x07  "})
    assert answer["ok"] is True
    for c in (cw, cl, typist):
        msg = await c.wait("chat.message")
        assert msg["text"] == SECRET_TEXT  # trimmed, control characters dropped
        assert msg["from"] == me(cl) and msg["name"] == "Herr K" and msg["role"] == "client"
    assert (await typist.call("chat.send", {"text": "Ich übersetze."}))["ok"] is True
    await cw.wait("chat.message", lambda m: m["from"] == me(typist))
    assert (await mute.call("chat.send", {"text": "x"}))["error"] == "forbidden"
    assert "chat.message" not in mute.events

    # Never kept: not in any log line (any level), not in the state store.
    assert SECRET_TEXT not in caplog.text
    assert "4711" not in caplog.text
    if server.config.redis_url:
        r = aioredis.from_url(server.config.redis_url)
        try:
            async for key in r.scan_iter(count=1000):
                assert b"4711" not in key
                kind = (await r.type(key)).decode()
                if kind == "string":
                    assert b"4711" not in (await r.get(key) or b"")
                elif kind == "hash":
                    assert all(b"4711" not in v for v in (await r.hgetall(key)).values())
                elif kind == "set":
                    assert all(b"4711" not in v for v in await r.smembers(key))
                elif kind == "list":
                    assert all(b"4711" not in v for v in await r.lrange(key, 0, -1))
        finally:
            await r.aclose()


async def test_chat_limits_and_the_caseworker_switch(
    server: RunningServer, clients: Clients
) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker", name="Frau B"))
    cl = await clients.join(server.token(room=ROOM, role="client", name="Herr K"))
    for payload, code in (
        ({"text": ""}, "invalid_payload"),
        ({"text": " \x00\x1b "}, "invalid_payload"),
        ({"text": 5}, "invalid_payload"),
        ({"text": "a", "html": "<b>"}, "invalid_payload"),
        ({"text": "x" * 1001}, "payload_too_large"),
    ):
        assert (await cl.call("chat.send", payload))["error"] == code, payload
    assert (await cl.call("chat.send", {"text": "x" * 1000}))["ok"] is True

    # A burst of five, then the limit: a script cannot flood the others' screens.
    answers = [await cl.call("chat.send", {"text": f"n{i}"}) for i in range(8)]
    assert any(a.get("error") == "too_many_requests" for a in answers), answers

    # Only a moderator switches the chat; everyone admitted is told.
    assert (await cl.call("chat.enable", {"enabled": False}))["error"] == "forbidden"
    assert (await cw.call("chat.enable", {"enabled": "no"}))["error"] == "invalid_payload"
    assert await cw.call("chat.enable", {"enabled": False}) == {"ok": True}
    assert await cl.wait("chat.state") == {"enabled": False}
    assert (await cw.call("chat.send", {"text": "hallo"}))["error"] == "chat_disabled"
    late = await clients.join(server.token(room=ROOM, role="client", name="Spät"))
    assert late.events["welcome"][0]["room"]["chat"] is False
    assert await cw.call("chat.enable", {"enabled": True}) == {"ok": True}
    assert (await cw.call("chat.send", {"text": "wieder da"}))["ok"] is True


async def test_waiting_people_cannot_chat(server: RunningServer, clients: Clients) -> None:
    room = await server.create_room(client_lobby=True)
    cw = await clients.join(link_token(room["caseworker_url"]))
    waiting = await clients.join(link_token(room["client_url"]))
    assert waiting.events["welcome"][0]["you"]["state"] == "waiting"
    assert (await waiting.call("chat.send", {"text": "hallo?"}))["error"] == "forbidden"
    assert (await cw.call("chat.send", {"text": "gleich"}))["ok"] is True
    await cw.wait("chat.message")
    assert "chat.message" not in waiting.events
