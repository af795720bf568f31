"""The note on a tile whose video the SFU paused for our weak link ("Video pausiert –
schwache Verbindung") and the participant's name label must both stay readable, on a
phone (360×640) and a desktop (1280×720), and the call's buttons stay clickable.

Three people, so that the phone shows its focus layout (big tiles on top, a strip
below): the client's Chromium, the caseworker's Chromium and a partner who is the
bench's synthetic participant (a real aiortc peer behind a real Socket.IO client; one
Chromium less on a shared machine).

The page gets the server's own ``video.paused`` event (the SFU's allocator sends it when
a video does not fit the link); here it is written into the page's real Socket.IO
connection, through Playwright's WebSocket route, because pausing for real needs a
shaped link (tests/browser/test_weak_link.py) and this is about the layout.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

import pytest

from bench.generator import partner_token
from bench.media import encode_media
from bench.participant import SyntheticParticipant, Window
from tests.browser.harness import (
    Launch,
    Server,
    join,
    my_id,
    wait_js,
    wait_remote_playing,
)

pytestmark = pytest.mark.browser

# Per remote tile: the boxes of its name label, its name and the paused note, as shown.
_BOXES_JS = """
() => [...document.querySelectorAll('.tile:not(.self)')].map((tile) => {
  const box = (el) => {
    if (!el) return null;
    const s = getComputedStyle(el);
    const r = el.getBoundingClientRect();
    if (s.display === 'none' || s.visibility === 'hidden' || r.width === 0 || r.height === 0) {
      return null;
    }
    return { x: r.x, y: r.y, w: r.width, h: r.height };
  };
  return {
    pid: tile.dataset.participant,
    featured: tile.classList.contains('featured'),
    tile: box(tile),
    label: box(tile.querySelector('.tile-label')),
    name: box(tile.querySelector('.tile-name')),
    nameText: (tile.querySelector('.tile-name') || {}).textContent || '',
    note: box(tile.querySelector('.tile-paused')),
    noteText: (tile.querySelector('.tile-paused') || {}).textContent || '',
    // What a person sees of the note: all of it (the CSS clamps it to two lines, and
    // textContent is the whole string however much the clamp cuts off), nothing on top.
    noteClipped: (() => {
      const el = tile.querySelector('.tile-paused');
      return !!el && (el.scrollHeight > el.clientHeight + 1 || el.scrollWidth > el.clientWidth + 1);
    })(),
    noteCovered: (() => {
      const el = tile.querySelector('.tile-paused');
      if (!el) return false;
      const r = el.getBoundingClientRect();
      return [[0.1, 0.5], [0.5, 0.5], [0.9, 0.5]].some(([fx, fy]) => {
        const top = document.elementFromPoint(r.x + fx * r.width, r.y + fy * r.height);
        return !top || !el.contains(top);
      });
    })(),
    state: box(tile.querySelector('.tile-state')),
  };
})
"""


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def _inside(inner: dict[str, float], outer: dict[str, float]) -> bool:
    return (
        inner["x"] >= outer["x"] - 0.5
        and inner["y"] >= outer["y"] - 0.5
        and inner["x"] + inner["w"] <= outer["x"] + outer["w"] + 0.5
        and inner["y"] + inner["h"] <= outer["y"] + outer["h"] + 0.5
    )


@pytest.mark.parametrize("size", [(360, 640), (1280, 720)], ids=["phone", "desktop"])
async def test_paused_note_and_name_are_both_readable_and_buttons_clickable(
    server: Server, launch: Launch, size: tuple[int, int]
) -> None:
    room = server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
    cw = await launch("caseworker")
    cl = await launch("client", width=size[0], height=size[1])
    sockets: list[Any] = []

    def route(ws: Any) -> None:
        ws.connect_to_server()  # everything passes both ways, as without the route
        sockets.append(ws)

    await cl.page.route_web_socket(re.compile(r"/socket\.io/"), route)
    media = encode_media(video_bitrate=150_000, seconds=1.0, size=(320, 240))
    partner = SyntheticParticipant(
        server.base_url,
        partner_token(server.secret, room["room"], 0),
        "partner",
        0,
        media,
        Window(active=True),
    )
    try:
        await asyncio.gather(
            join(cw, room["caseworker_url"]), join(cl, room["client_url"]), partner.join()
        )
        others = {await my_id(cw), partner.pid}
        await wait_remote_playing(cl, others, within=90)
        await _check(cl, sockets, others, size)
    finally:
        await partner.close()


async def _check(cl: Any, sockets: list[Any], others: set[str], size: tuple[int, int]) -> None:
    # The SFU pauses both videos for the client's link (its event, on its connection).
    assert sockets
    for pid in others:
        event = json.dumps(["video.paused", {"participant": pid, "paused": True}])
        sockets[-1].send("42" + event)
    await wait_js(cl, "document.querySelectorAll('.tile.video-paused').length === 2", within=10)

    shots = os.environ.get("ROUNDTABLE_SCREENSHOTS")
    for panel in (False, True):
        if panel:  # the side panel open, as a person opens it
            await cl.page.get_by_test_id("panel-toggle").click()
            await cl.page.get_by_test_id("panel").wait_for(state="visible")
        await asyncio.sleep(0.5)  # the layout settles (ui.js sizes tiles on resize)
        if shots:
            await cl.page.screenshot(path=f"{shots}/paused-{size[0]}x{size[1]}-panel{panel}.png")
        tiles = await cl.page.evaluate(_BOXES_JS)
        assert {t["pid"] for t in tiles} == others
        shown = [t for t in tiles if t["note"] is not None]
        assert shown, tiles  # the note is said somewhere (strip tiles show initials only)
        for t in tiles:
            where = (size, panel, t)
            assert t["name"] is not None and t["label"] is not None, where
            assert _inside(t["label"], t["tile"]) and _inside(t["name"], t["tile"]), where
            assert t["name"]["w"] >= 40 and t["nameText"], where  # some of it is readable
            if t["note"] is None:
                continue
            assert "schwache Verbindung" in t["noteText"] or "weak" in t["noteText"], where
            assert not t["noteClipped"], where  # shown in full, not cut off by the clamp
            assert not t["noteCovered"], where
            assert _inside(t["note"], t["tile"]), where
            assert not _overlap(t["note"], t["name"]), where
            if t["state"] is not None:
                assert not _overlap(t["note"], t["state"]), where

    # The call's buttons take a person's click: nothing lies over them.
    for testid in ("panel-toggle", "mic-toggle", "cam-toggle", "mic-toggle", "cam-toggle"):
        await cl.page.get_by_test_id(testid).click()
