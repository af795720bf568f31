"""A steady layout sends a steady view: no tile flips, no `view` storm, no paused video.

Three people; the page under test is a phone (360×640) or a desktop (1280×720) with
its side panel open. Once the call plays, nothing on the page changes for ~10 s, so
its tiles must keep their size, the page must send (almost) no `view` reports, the
SFU must not pause or resume anyone's video for it, and every remote video keeps
decoding. Counted on the wire: the Socket.IO frames the page sends and receives.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from tests.browser.harness import (
    Browser,
    Launch,
    Server,
    join,
    my_id,
    partner_url,
    remote_videos,
    wait_remote_playing,
)

pytestmark = pytest.mark.browser

# A Socket.IO EVENT frame (engine.io "4" + socket.io "2", optional ack id) and its name.
_EVENT = re.compile(r'^42\d*\["([^"]+)"')

# Every remote tile's size and where the tiles list stands, sampled on each animation
# frame for a while: shows a flip even when it is undone before the next view report.
_TILE_SIZES_JS = """
async (ms) => {
  const seen = new Set();
  const end = performance.now() + ms;
  while (performance.now() < end) {
    await new Promise((r) => requestAnimationFrame(r));
    const list = document.getElementById('tiles');
    const tiles = [...list.querySelectorAll('.tile:not(.self)')].map((el) => {
      const r = el.getBoundingClientRect();
      return `${el.dataset.participant.slice(0, 4)}:${Math.round(r.width)}x${Math.round(r.height)}`;
    });
    seen.add(`${list.dataset.layout} ${list.clientWidth}x${list.clientHeight} ${tiles.join(' ')}`);
  }
  return [...seen];
}
"""


def _wire(browser: Browser) -> dict[str, list[tuple[str, Any]]]:
    """Record the Socket.IO events the page sends and receives on its websocket."""
    log: dict[str, list[tuple[str, Any]]] = {"sent": [], "received": []}

    def frame(direction: str, payload: str | bytes) -> None:
        if not isinstance(payload, str):
            return
        m = _EVENT.match(payload)
        if not m:
            return
        body = payload[payload.index("[") :]
        try:
            args = json.loads(body)[1:]
        except ValueError:
            args = []
        log[direction].append((m.group(1), args[0] if args else None))

    def on_ws(ws: Any) -> None:
        ws.on("framesent", lambda p: frame("sent", p))
        ws.on("framereceived", lambda p: frame("received", p))

    browser.page.on("websocket", on_ws)
    return log


@pytest.mark.parametrize("size", [(360, 640), (1280, 720)], ids=["phone", "desktop"])
async def test_steady_layout_sends_steady_view_and_video_keeps_playing(
    server: Server, launch: Launch, size: tuple[int, int]
) -> None:
    room = server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
    cw = await launch("caseworker")
    pa = await launch("partner")
    cl = await launch("client", width=size[0], height=size[1])
    wire = _wire(cl)
    await asyncio.gather(
        join(cw, room["caseworker_url"]),
        join(pa, partner_url(server, room["room"])),
        join(cl, room["client_url"]),
    )
    ids = {b.name: await my_id(b) for b in (cw, pa, cl)}
    others = {ids["caseworker"], ids["partner"]}
    await wait_remote_playing(cl, others, within=90)

    # The side panel open, as a person opens it.
    await cl.page.get_by_test_id("panel-toggle").click()
    await cl.page.get_by_test_id("panel").wait_for(state="visible")
    # Let the layout, the view report and the allocator's first decisions settle.
    await asyncio.sleep(4)

    sent_before = len(wire["sent"])
    received_before = len(wire["received"])
    first = await remote_videos(cl)
    layouts = await cl.page.evaluate(_TILE_SIZES_JS, 10_000)
    second = await remote_videos(cl)
    views = [a for name, a in wire["sent"][sent_before:] if name == "view"]
    pauses = [a for name, a in wire["received"][received_before:] if name == "video.paused"]
    print(f"\n[steady {size[0]}x{size[1]}] layouts seen: {layouts}")
    print(f"[steady {size[0]}x{size[1]}] view reports in 10 s: {len(views)}; pauses: {pauses}")

    # One layout the whole time: no tile changes size while nothing changes.
    assert len(layouts) == 1, layouts
    assert len(views) <= 3, views
    assert pauses == [], pauses
    for pid in others:
        assert second[pid]["frames"] > first[pid]["frames"] + 50, (pid, first[pid], second[pid])
        assert not second[pid]["paused"], second[pid]


# web/view.js, driven with its own clock in the real page: what reaches the SFU.
_VIEW_REPORT_JS = """
async () => {
  const { ViewReport, HIDE_AFTER_MS } = await import('/static/view.js');
  let now = 0;
  const sent = [];
  const report = new ViewReport((tiles) => { sent.push(tiles); return true; }, () => now);
  const tile = (visible, width, height) => [{ participant: 'p_a', visible, width, height }];
  const steps = [];
  const step = (what, tiles) => { report.update(tiles); steps.push([what, sent.length]); };
  step('first report', tile(true, 168, 128));
  step('a wobble', tile(true, 176, 120));
  step('just past the low layer (208/0.8 = 260 px)', tile(true, 264, 200));
  step('clearly past it', tile(true, 320, 240));
  step('just under it again', tile(true, 256, 192));
  step('clearly under', tile(true, 200, 150));
  now += 100; step('hidden for a moment', tile(false, 0, 0));
  now += 400; step('visible again', tile(true, 200, 150));
  now += 100; step('hidden', tile(false, 0, 0));
  now += HIDE_AFTER_MS; step('still hidden a second later', tile(false, 0, 0));
  now += 100; step('shown', tile(true, 200, 150));
  return { steps, last: sent[sent.length - 1] };
}
"""


async def test_view_report_sends_only_layer_changes_and_lasting_hides(
    server: Server, launch: Launch
) -> None:
    room = server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
    page = await launch("client", width=360, height=640)
    await page.page.goto(server.local_url(room["client_url"]))
    out = await page.page.evaluate(_VIEW_REPORT_JS)
    counts = dict(out["steps"])
    assert counts == {
        "first report": 1,
        "a wobble": 1,
        "just past the low layer (208/0.8 = 260 px)": 1,
        "clearly past it": 2,
        "just under it again": 2,
        "clearly under": 3,
        "hidden for a moment": 3,
        "visible again": 3,
        "hidden": 3,
        "still hidden a second later": 4,
        "shown": 5,
    }, out["steps"]
    assert out["last"] == [{"participant": "p_a", "visible": True, "width": 200, "height": 150}]
