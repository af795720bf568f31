"""Random and mutated events at a running server while a real call runs in another room.

Hypothesis throws event names (the real ones, reserved ones, junk), random JSON and
mutations of a real SDP offer at a caseworker's connection. Every event must be answered
with ``{"ok": true, ...}`` or a documented error code (never ``internal``, never no
answer), nothing may be logged at ERROR, and the other room's media must keep flowing:
the forwarded-packet counter and the frames its participants decode keep rising.

The server and the call live on an event loop in a thread of their own, since Hypothesis
drives a plain (synchronous) test function.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signaling.errors import STATUS_BY_CODE
from signaling.events import PARSERS
from tests.controlplane import (
    MediaParticipant,
    RunningServer,
    SignalClient,
    link_token,
    me,
    running_server,
)
from tests.media import wait_for

pytestmark = pytest.mark.slow

RESERVED = ["connect", "disconnect", "connect_error", "message", "*", "__disconnect_final"]
SDP_LINES = [
    "v=0",
    "o=- 1 1 IN IP4 0.0.0.0",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    "c=IN IP4 0.0.0.0",
    "a=mid:0",
    "a=sendonly",
    "a=rtpmap:111 opus/48000/2",
    "a=rtpmap:96 VP8/90000",
    "a=ice-ufrag:abcd",
    "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 00:11",
    "a=setup:actpass",
    "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",
    "a=ssrc:1 cname:x",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=msid:{5a7f} {b2c3}",
    "a=rtcp-fb:96 nack pli",
    "a=simulcast:send 0;1",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
sdps = st.one_of(
    st.lists(st.sampled_from(SDP_LINES), max_size=30).map("\r\n".join),
    st.lists(st.sampled_from(SDP_LINES) | st.text(max_size=60), max_size=30).map(
        lambda lines: "v=0\r\n" + "\r\n".join(lines)
    ),
    st.text(max_size=200).map(lambda s: "v=0\r\n" + s),
)
ids = st.one_of(st.text(max_size=70), st.sampled_from(["p_x", "", "p" * 65]), json_values)
structured = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["offer", "answer", "pranswer"]), "sdp": sdps}),
    st.fixed_dictionaries(
        {
            "pc": st.sampled_from(["publish", "subscribe", "x"]),
            "candidate": st.none()
            | st.fixed_dictionaries(
                {"candidate": st.text(max_size=80), "sdpMid": st.text(max_size=4) | st.none()},
                optional={"sdpMLineIndex": st.integers(), "usernameFragment": json_values},
            ),
        }
    ),
    st.fixed_dictionaries({"participant": ids}, optional={"kind": json_values}),
    st.fixed_dictionaries({"locked": json_values}),
    st.fixed_dictionaries({"minutes": json_values}),
    st.dictionaries(st.text(max_size=10), json_values, max_size=4),
)
events = st.one_of(
    st.sampled_from(sorted(PARSERS)), st.sampled_from(RESERVED), st.text(max_size=30)
)


class Arena:
    """A server, a running call in one room and an attacker in another, on their own loop."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stack = AsyncExitStack()
        self.tmp_path = tmp_path
        self.rooms = 0
        self.server: RunningServer
        self.call: list[MediaParticipant] = []
        self.attacker: SignalClient

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def start(self) -> None:
        self.server = await self.stack.enter_async_context(
            running_server(self.tmp_path, joins_per_ip_per_minute=100_000, events_per_second=10_000)
        )
        room = await self.server.create_room()
        for url, colour in (
            (room["caseworker_url"], (200, 30, 30)),
            (room["client_url"], (30, 30, 200)),
        ):
            client = SignalClient()
            peer = MediaParticipant(client, colour)
            self.stack.push_async_callback(peer.close)
            assert await client.connect(self.server.url, link_token(url))
            await client.wait("welcome")
            self.call.append(peer)
        for peer in self.call:
            assert (await peer.publish())["ok"]
        a, b = self.call
        await wait_for(lambda: self.frames() > 20, 30)
        await self.new_attacker()

    def frames(self) -> int:
        return sum(sum(p.frames.values()) for p in self.call)

    async def new_attacker(self) -> None:
        self.rooms += 1
        client = SignalClient()
        self.stack.push_async_callback(client.close)
        room = f"r_fuzz{self.rooms}"
        assert await client.connect(
            self.server.url, self.server.token(room=room, role="caseworker")
        )
        await client.wait("welcome")
        victim = SignalClient()
        self.stack.push_async_callback(victim.close)
        assert await victim.connect(self.server.url, self.server.token(room=room, role="client"))
        await victim.wait("welcome")
        self.attacker, self.victim_id = client, me(victim)

    async def forwarded(self) -> float:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.server.url}/metrics") as resp:
                text = await resp.text()
        return next(
            float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("roundtable_forwarded_packets_total")
        )

    async def throw(self, event: str, payload: Any) -> Any:
        if not self.attacker.sio.connected:
            await self.new_attacker()
        if isinstance(payload, dict) and payload.get("participant") == "$victim":
            payload = {**payload, "participant": self.victim_id}
        ack = await self.attacker.sio.call(event, payload, timeout=30)
        if event in ("leave", "room.end", "moderate.remove") and isinstance(ack, dict):
            if ack.get("ok"):
                await self.attacker.close()
        return ack


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory):
    made = Arena(tmp_path_factory.mktemp("fuzz"))
    made.run(made.start(), timeout=120)
    yield made
    made.run(made.stack.aclose(), timeout=60)
    made.loop.call_soon_threadsafe(made.loop.stop)
    made.thread.join(timeout=10)


# aiortc and aioice draw from `random` on the server's thread while Hypothesis generates.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_random_and_mutated_events_get_errors_while_another_call_runs(arena: Arena) -> None:
    errors = Errors()
    logging.getLogger().addHandler(errors)
    frames_before, forwarded_before = arena.frames(), arena.run(arena.forwarded())
    documented = set(STATUS_BY_CODE) - {"internal"}
    answered = 0

    @settings(
        max_examples=400,
        deadline=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        event=events,
        payload=st.one_of(json_values, structured, st.just({"participant": "$victim"})),
    )
    def throw(event: str, payload: Any) -> None:
        nonlocal answered
        ack = arena.run(arena.throw(event, payload))
        answered += 1
        assert isinstance(ack, dict), (event, payload, ack)
        if ack.get("ok") is not True:
            assert ack.get("error") in documented, (event, payload, ack)
            assert isinstance(ack.get("message"), str)

    try:
        throw()
    finally:
        logging.getLogger().removeHandler(errors)
    time.sleep(1.0)
    frames_after, forwarded_after = arena.frames(), arena.run(arena.forwarded())
    print(
        f"\n{answered} events answered; call frames {frames_before} -> {frames_after}, "
        f"forwarded packets {forwarded_before:.0f} -> {forwarded_after:.0f}"
    )
    assert forwarded_after > forwarded_before and frames_after > frames_before
    # Still rising now that the fuzzing is over: the call was never broken.
    mid = arena.frames()
    time.sleep(1.0)
    assert arena.frames() > mid
    assert not errors.records, errors.records[:3]
