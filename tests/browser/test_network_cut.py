"""A participant whose network really goes down comes back into the same call, without
reloading (docs/protocol.md, "Reconnecting").

Layout (inside the suite's loopback-only namespace)::

    test namespace: roundtable serve (0.0.0.0; media on 10.203.0.1), the caseworker's
                    Chromium on loopback
        └── veth ──► child namespace 10.203.0.2: the client's Chromium

The cut is real: the veth link is set down for 10 s or 45 s, so nothing the client's
browser sends reaches the server (signalling and media alike) until it is set up again.
Measured and printed for the closing notes (not asserted): drop → "reconnecting" on the
caseworker's page, and network restore → the client's video decoding again on the
caseworker's page and the caseworker's on the client's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.conftest import run_server
from tests.browser.harness import (
    Browser,
    Launch,
    Server,
    join,
    launch_inside,
    my_id,
    remote_videos,
    wait_js,
    wait_remote_playing,
)
from tests.netns import IP, Netns, _run, veth_namespace

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OUTSIDE, INSIDE = "10.203.0.9/30", "10.203.0.10/30"


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Netns]:
    with veth_namespace(tmp_path / "netns", outside=OUTSIDE, inside=INSIDE) as ns:
        yield ns


@pytest.fixture
def cut_server(tmp_path: Path, child: Netns) -> Iterator[Server]:
    # Media on the veth address: reachable from the child and from loopback alike.
    env = {"ROUNDTABLE_MEDIA_HOST": child.outside_ip}
    with run_server(tmp_path, env, host="0.0.0.0") as srv:
        yield srv


def _link(ns: Netns, up: bool) -> None:
    _run(IP, "link", "set", ns.outside_dev, "up" if up else "down")


async def _tile_state(browser: Browser, pid: str) -> str | None:
    return await browser.page.evaluate(
        """(pid) => {
          const tile = document.querySelector(`.tile[data-participant="${pid}"]`);
          const state = tile && tile.querySelector('.tile-state');
          return state ? state.dataset.state : (tile ? 'good' : null);
        }""",
        pid,
    )


async def _until(check, within: float, what: str, every: float = 0.1) -> float:
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(every)


async def _frames(browser: Browser, pid: str) -> int:
    return (await remote_videos(browser)).get(pid, {}).get("frames", 0)


async def _decoding_again(browser: Browser, pid: str, within: float) -> float:
    """Seconds until ``pid``'s video decodes on ``browser`` again (frames rising by 5)."""
    base = await _frames(browser, pid)

    async def rising() -> bool:
        return await _frames(browser, pid) >= base + 5

    return await _until(rising, within, f"video of {pid} decoding again", every=0.05)


@pytest.mark.parametrize("cut_seconds", [10, 45])
async def test_network_cut_then_back_into_the_same_call(
    cut_server: Server, child: Netns, launch: Launch, cut_seconds: int
) -> None:
    room = cut_server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
    caseworker = await launch("caseworker")
    await join(caseworker, room["caseworker_url"])
    client, client_url = await launch_inside(
        launch, child, "client-cut", cut_server, room["client_url"]
    )
    await join(client, client_url)
    ids = {"caseworker": await my_id(caseworker), "client": await my_id(client)}
    await asyncio.gather(
        wait_remote_playing(caseworker, {ids["client"]}, within=60),
        wait_remote_playing(client, {ids["caseworker"]}, within=60),
    )
    # Marks that survive only if the client's page is never reloaded.
    await client.page.evaluate("window.__beforeCut = 'still here'")
    pcs_before = await client.page.evaluate(
        "[window.roundtable.pcs.publish, window.roundtable.pcs.subscribe].map(Boolean)"
    )
    assert pcs_before == [True, True]

    ufrags = """() => Object.entries(window.roundtable.pcs).map(([leg, pc]) => pc && [leg,
       (pc.localDescription && pc.localDescription.sdp.match(/ice-ufrag:(\\S+)/) || [])[1],
       (pc.remoteDescription && pc.remoteDescription.sdp.match(/ice-ufrag:(\\S+)/) || [])[1]])"""
    print("\n--- client ufrags before:", await client.page.evaluate(ufrags))
    _link(child, up=False)
    cut_at = time.monotonic()

    async def shown_reconnecting() -> bool:
        return await _tile_state(caseworker, ids["client"]) == "reconnecting"

    seen = await _until(shown_reconnecting, 15, "client shown as reconnecting")
    print(f"\n[timing] network drop → 'reconnecting' on the caseworker's page: {seen:.2f} s")
    # The client's own page says so too, with a retry button.
    await wait_js(client, "!document.getElementById('reconnect-banner').hidden", within=15)
    assert await client.page.get_by_test_id("reconnect-retry").is_visible()

    await asyncio.sleep(max(0.0, cut_seconds - (time.monotonic() - cut_at)))
    # Still the same tile (not gone) at the end of the cut.
    assert await _tile_state(caseworker, ids["client"]) == "reconnecting"
    _link(child, up=True)

    try:
        on_caseworker, on_client = await asyncio.gather(
            _decoding_again(caseworker, ids["client"], within=30),
            _decoding_again(client, ids["caseworker"], within=30),
        )
    except AssertionError:
        for who, b in (("client", client), ("caseworker", caseworker)):
            legs = await b.page.evaluate(
                """() => Object.entries(window.roundtable.pcs).map(([leg, pc]) => pc && [leg,
                   pc.connectionState, pc.iceConnectionState, pc.signalingState,
                   (pc.localDescription && pc.localDescription.sdp.match(/ice-ufrag:(\\S+)/) || [])[1],
                   (pc.remoteDescription && pc.remoteDescription.sdp.match(/ice-ufrag:(\\S+)/) || [])[1]])"""
            )
            print(f"--- {who} legs: {legs}")
            print(f"--- {who} frames: {await remote_videos(b)}")
        print("--- client console ---\n" + "\n".join(client.console[-40:]))
        print("--- caseworker console ---\n" + "\n".join(caseworker.console[-20:]))
        print("--- server log ---\n" + cut_server.log_tail(60))
        raise
    print(
        f"[timing] network restore → media after a {cut_seconds} s cut: client's video on the "
        f"caseworker's page {on_caseworker:.2f} s, caseworker's on the client's "
        f"{on_client:.2f} s"
    )
    # Same call, same page, same participant: no reload, no new seat.
    assert await client.page.evaluate("window.__beforeCut") == "still here"
    assert await my_id(client) == ids["client"]
    assert await wait_js(client, "document.getElementById('reconnect-banner').hidden", within=10)

    async def live_again() -> bool:
        return await _tile_state(caseworker, ids["client"]) == "good"

    await _until(live_again, 10, "client shown live again")
    assert cut_server.participants() == 2
    resumes = cut_server.metrics().get("roundtable_resumes_total", 0)
    assert resumes >= 1, cut_server.metrics()
