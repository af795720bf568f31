"""A participant behind a weak downlink: the voices get through, the pictures give way
(docs/protocol.md, "Weak links"; issue 15).

Layout (inside the suite's loopback-only namespace)::

    test namespace: roundtable serve (0.0.0.0; media on 10.203.0.13), the others'
                    Chromiums on loopback
        └── veth (tc tbf on our end: the shaped participant's downlink) ──►
            child namespace 10.203.0.14: the shaped participant's Chromium

The shaping is real: ``tc qdisc … tbf`` on the test namespace's end of the veth limits
everything flowing to the child namespace (media and signalling alike). Measured and
printed for the closing notes (not asserted as timings): the shaped participant's audio
loss from its own getStats (``packetsLost`` / ``packetsReceived`` of inbound audio over
the shaped period), the video width it received, and how long the climb back took.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import run_server
from tests.browser.harness import (
    Browser,
    Launch,
    Server,
    inbound_rtp,
    join,
    launch_inside,
    my_id,
    wait_remote_playing,
)
from tests.netns import Netns, _run, veth_namespace

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OUTSIDE, INSIDE = "10.203.0.13/30", "10.203.0.14/30"
TC = "/usr/sbin/tc"
PAUSED_DE = "Video pausiert – schwache Verbindung"


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Netns]:
    with veth_namespace(tmp_path / "netns", outside=OUTSIDE, inside=INSIDE) as ns:
        yield ns


@pytest.fixture
def shaped_server(tmp_path: Path, child: Netns) -> Iterator[Server]:
    env = {"ROUNDTABLE_MEDIA_HOST": child.outside_ip}
    with run_server(tmp_path, env, host="0.0.0.0") as srv:
        yield srv


def shape(ns: Netns, rate: str | None) -> None:
    """Limit what flows into the child namespace to ``rate`` (tbf with a 300 ms queue,
    a home router's buffer); ``None`` lifts it."""
    if rate is None:
        _run(TC, "qdisc", "del", "dev", ns.outside_dev, "root")
        return
    _run(
        TC,
        *("qdisc", "replace", "dev", ns.outside_dev, "root", "tbf"),
        *("rate", rate, "burst", "6kb", "latency", "300ms"),
    )


def audio_loss(before: dict[str, Any], after: dict[str, Any], pids: set[str]) -> float:
    """Lost / (lost + received) of the audio of ``pids`` between two samples, per RTP
    stream present in both (a renegotiation may add a stream in between)."""
    lost = received = 0
    for key, b in after.items():
        pid, kind, _ = key.split(":")
        a = before.get(key)
        if pid in pids and kind == "audio" and a is not None:
            lost += b["lost"] - a["lost"]
            received += b["received"] - a["received"]
    assert received > 0, f"no audio arrived: {before} → {after}"
    return max(0, lost) / (max(0, lost) + received)


def audio_received(before: dict[str, Any], after: dict[str, Any], pid: str) -> int:
    return sum(
        b["received"] - before[key]["received"]
        for key, b in after.items()
        if key.startswith(f"{pid}:audio:") and key in before
    )


async def paused_text(browser: Browser, pid: str) -> str | None:
    return await browser.page.evaluate(
        """(pid) => {
          const note = document.querySelector(`.tile[data-participant="${pid}"] .tile-paused`);
          return note && !note.hidden ? note.textContent : null;
        }""",
        pid,
    )


async def until(check, within: float, what: str, every: float = 0.25) -> float:
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(every)


async def test_a_link_too_narrow_for_video_pauses_it_and_says_so_while_the_voice_gets_through(
    shaped_server: Server, child: Netns, launch: Launch
) -> None:
    server = shaped_server
    room = server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
    caseworker = await launch("caseworker")
    await join(caseworker, room["caseworker_url"])
    client, client_url = await launch_inside(
        launch, child, "client-narrow", server, room["client_url"]
    )
    await join(client, client_url)
    ids = {"caseworker": await my_id(caseworker), "client": await my_id(client)}
    await asyncio.gather(
        wait_remote_playing(caseworker, {ids["client"]}, within=60),
        wait_remote_playing(client, {ids["caseworker"]}, within=60),
    )
    assert await paused_text(client, ids["caseworker"]) is None

    # 90 kbit/s: the caseworker's voice (~50 kbit/s with headers) fits, no video does (the
    # low layer with headers is ~50 kbit/s too since it went to 45k: at 120 both fitted).
    shape(child, "90kbit")
    shaped_at = time.monotonic()

    async def shown_paused() -> bool:
        return await paused_text(client, ids["caseworker"]) == PAUSED_DE

    took = await until(shown_paused, 45, "caseworker's tile says the video is paused")
    print(f"\n[weak link] 90 kbit/s → 'Video pausiert' on the client's page after {took:.1f} s")
    # The tile shows the initials instead of a frozen picture.
    avatar = await client.page.evaluate(
        """(pid) => {
          const tile = document.querySelector(`.tile[data-participant="${pid}"]`);
          const a = tile.querySelector('.tile-avatar');
          return [getComputedStyle(a).display, a.textContent, tile.classList.contains('video-paused')];
        }""",
        ids["caseworker"],
    )
    assert avatar == ["grid", "FB", True], avatar
    # The voice gets through while the video is paused (over a settled window).
    await asyncio.sleep(3)
    before = await inbound_rtp(client)
    await asyncio.sleep(10)
    after = await inbound_rtp(client)
    try:
        loss = audio_loss(before, after, {ids["caseworker"]})
    except AssertionError:
        print(before, after, "\n--- server log ---\n" + server.log_tail(80))
        raise
    received = audio_received(before, after, ids["caseworker"])
    print(
        f"[weak link] 90 kbit/s, video paused: audio loss {100 * loss:.2f} % "
        f"({received} packets in 10 s), {time.monotonic() - shaped_at:.0f} s after shaping"
    )
    assert received > 100  # Opus with DTX still sends while the fake microphone beeps
    if loss >= 0.05:
        print_allocations(server)
    assert loss < 0.05
    # The caseworker's own view of the client is untouched (their link is not shaped).
    assert await paused_text(caseworker, ids["client"]) is None
    # Lift the shaping: the video comes back and the note goes.
    shape(child, None)

    async def shown_again() -> bool:
        return await paused_text(client, ids["caseworker"]) is None

    try:
        back = await until(shown_again, 45, "caseworker's video back on the client's page")
    except AssertionError:
        print("--- server log ---\n" + server.log_tail(60))
        raise
    await wait_remote_playing(client, {ids["caseworker"]}, within=30)
    print(f"[weak link] shaping lifted → video back after {back:.1f} s")
    print_allocations(server)


def print_allocations(server: Server) -> None:
    """The allocator's pauses and resumes (INFO lines of sfu.allocator), for the notes."""
    for line in server.log_tail(400).splitlines():
        if "sfu.allocator" in line:
            print("[weak link] server:", line[11:])
