"""A busy page on a loaded machine keeps its signalling; a cut is still told quickly.

Under load (browser tests at load 25+) pages lost their signalling: the server pinged
every 1.5 s and gave up 2.5 s later, and a starved page answers late. Here the client's
page is made exactly that busy: its main thread, which answers engine.io's pings, is
blocked for 4 s at a time, again and again for 30 s, while a busy-loop process shares
the server's core. Its media keeps flowing (WebRTC runs off the main thread), so it is
no cut: nobody may see it "reconnecting" and it may not lose its connection.
The cut itself (a real veth link down) is tests/browser/test_network_cut.py, which
prints how soon the others see "reconnecting".
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from tests.browser.harness import (
    Browser,
    Launch,
    Server,
    join,
    my_id,
    remote_videos,
    wait_remote_playing,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BLOCK_MS = 4000  # longer than the old 2.5 s pong timeout, well under the new 10 s
RUN_SECONDS = 30

_STATE_JS = """(pid) => {
  const tile = document.querySelector(`.tile[data-participant="${pid}"]`);
  const state = tile && tile.querySelector('.tile-state');
  return state ? state.dataset.state : (tile ? 'good' : null);
}"""


def _busy_loop_on(pid: int) -> subprocess.Popen[bytes]:
    """A process spinning on the CPUs ``pid`` may run on."""
    cpus = os.sched_getaffinity(pid)
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.sched_setaffinity(proc.pid, cpus)
    return proc


async def _block_main_thread(browser: Browser, ms: int) -> None:
    # The page's main thread does nothing else meanwhile: no pong, no timers.
    await browser.page.evaluate(
        "(ms) => { const end = performance.now() + ms; while (performance.now() < end) {} }", ms
    )


@pytest.mark.parametrize("size", [(360, 640), (1280, 720)], ids=["phone", "desktop"])
async def test_a_busy_page_under_load_keeps_its_signalling(
    server: Server, launch: Launch, size: tuple[int, int]
) -> None:
    room = server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
    cw = await launch("caseworker")
    cl = await launch("client", width=size[0], height=size[1])
    await asyncio.gather(join(cw, room["caseworker_url"]), join(cl, room["client_url"]))
    ids = {b.name: await my_id(b) for b in (cw, cl)}
    await wait_remote_playing(cw, {ids["client"]}, within=60)
    await wait_remote_playing(cl, {ids["caseworker"]}, within=60)

    states: set[str | None] = set()
    blocks = 0
    busy = _busy_loop_on(server.proc.pid)
    try:
        start = time.monotonic()
        while time.monotonic() - start < RUN_SECONDS:
            block = asyncio.ensure_future(_block_main_thread(cl, BLOCK_MS))
            while not block.done():
                states.add(await cw.page.evaluate(_STATE_JS, ids["client"]))
                await asyncio.sleep(0.2)
            await block
            blocks += 1
            for _ in range(5):  # a second to answer the pings it owes, then again
                states.add(await cw.page.evaluate(_STATE_JS, ids["client"]))
                await asyncio.sleep(0.2)
    finally:
        busy.kill()
        busy.wait()
    lost = [line for line in cl.console if "signalling disconnected" in line]
    print(
        f"\n[load {size[0]}x{size[1]}] {blocks} blocks of {BLOCK_MS} ms in {RUN_SECONDS} s; "
        f"client as seen by the caseworker: {sorted(map(str, states))}; disconnects: {lost}"
    )
    assert lost == [], lost
    # Never "reconnecting", never gone ("poor" is the page's own link measurement, which
    # a page frozen for 4 s may well report).
    assert states <= {"good", "poor"}, states
    assert server.metrics().get("roundtable_resumes_total", 0) == 0
    assert server.participants() == 2
    # And the media never stopped: both still play.
    before = await remote_videos(cw)
    await wait_remote_playing(cw, {ids["client"]}, within=20)
    await wait_remote_playing(cl, {ids["caseworker"]}, within=20)
    assert (await remote_videos(cw))[ids["client"]]["frames"] > before[ids["client"]]["frames"]
