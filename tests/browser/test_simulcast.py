"""Simulcast in real Chromium: three layers from every camera, one per subscriber.

Each page publishes its camera as three VP8 layers; the SFU forwards each subscriber
the layer that fits the tile that page shows (its ``view`` report), switches at key
frames of the target layer, and sends a hidden tile nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.browser.harness import (
    Browser,
    Launch,
    Server,
    eventually,
    inbound_rtp,
    join,
    my_id,
    partner_url,
    wait_remote_playing,
)

pytestmark = pytest.mark.browser

# What our camera sends, per rid (outbound-rtp).
_OUTBOUND_JS = """
async () => {
  const pc = window.roundtable.pcs.publish;
  const out = {};
  if (!pc) return out;
  (await pc.getStats()).forEach((s) => {
    if (s.type !== 'outbound-rtp' || s.kind !== 'video') return;
    out[s.rid || '-'] = {
      width: s.frameWidth || 0, height: s.frameHeight || 0, active: s.active,
      packets: s.packetsSent || 0, limit: s.qualityLimitationReason,
    };
  });
  return out;
}
"""


async def until(check: Callable[[], Awaitable[Any]], within: float, what: str) -> Any:
    """Poll an async ``check`` every 0.3 s until it returns something truthy; an
    AssertionError counts as not yet (the last one is raised at the end)."""
    deadline = time.monotonic() + within
    last: AssertionError | None = None
    while time.monotonic() < deadline:
        try:
            value = await check()
            if value:
                return value
        except AssertionError as exc:
            last = exc
        await asyncio.sleep(0.3)
    raise AssertionError(f"not within {within}s: {what}") from last


async def inbound(browser: Browser) -> dict[str, dict[str, Any]]:
    """Per remote participant: what its inbound video looks like now (getStats)."""
    out: dict[str, dict[str, Any]] = {}
    for key, s in (await inbound_rtp(browser)).items():
        participant, kind, ssrc = key.rsplit(":", 2)
        if kind == "video":
            out[participant] = {
                **s,
                "decoded": s["frames"],
                "packets": s["received"],
                "ssrc": int(ssrc),
            }
    return out


async def outbound(browser: Browser) -> dict[str, dict[str, Any]]:
    return await browser.page.evaluate(_OUTBOUND_JS)


# The page's own view report (what it told the server it shows).
_VIEW_JS = "window.roundtable.view"

# Layer sizes of the page's 832×624 camera: l, m, h (web/call.js SIMULCAST).
LAYER_SIZES = [(208, 156), (416, 312), (832, 624)]
TILE_SLACK = 0.8  # sfu.forwarder.TILE_SLACK


def expected_layer(tile: dict[str, Any]) -> int:
    """The layer sfu.forwarder.Leg.preferred_layer picks for a tile (-1: hidden)."""
    if not tile["visible"]:
        return -1
    for i, (w, h) in enumerate(LAYER_SIZES):
        if w >= tile["width"] * TILE_SLACK and h >= tile["height"] * TILE_SLACK:
            return i
    return len(LAYER_SIZES) - 1


def leg_metric(server: Server, name: str, subscriber: str, publisher: str) -> float | None:
    for key, value in server.metrics().items():
        if (
            key.startswith(name + "{")
            and f'subscriber="{subscriber}"' in key
            and f'publisher="{publisher}"' in key
        ):
            return value
    return None


def sfu_wanted(server: Server, subscriber: str, publisher: str) -> float | None:
    return leg_metric(server, "roundtable_video_leg_wanted_layer", subscriber, publisher)


def sfu_packets(server: Server, subscriber: str, publisher: str) -> float | None:
    return leg_metric(server, "roundtable_video_leg_packets_total", subscriber, publisher)


async def views_match_sfu(server: Server, browser: Browser, me: str) -> dict[str, int]:
    """Per remote tile this page reports: the layer the SFU wants for it, checked."""
    view = await browser.page.evaluate(_VIEW_JS)
    assert view, f"{browser.name}: no view report yet"
    out = {}
    for tile in view:
        want = expected_layer(tile)
        got = sfu_wanted(server, me, tile["participant"])
        assert got == want, f"{browser.name}: tile {tile}, SFU wants {got}, expected {want}"
        out[tile["participant"]] = want
    return out


async def test_layers_follow_tiles_switch_at_key_frames_and_hidden_tiles_get_nothing(
    server: Server, launch: Launch
) -> None:
    room = server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
    cw, cl = await launch("caseworker"), await launch("client")
    await asyncio.gather(join(cw, room["caseworker_url"]), join(cl, room["client_url"]))
    ids = {b.name: await my_id(b) for b in (cw, cl)}
    await wait_remote_playing(cl, {ids["caseworker"]}, within=60)
    await wait_remote_playing(cw, {ids["client"]}, within=60)
    # Every camera is sent as three layers (whether the uplink estimate lets the encoder
    # fill the upper ones is the browser's business).
    assert set(await outbound(cw)) == {"l", "m", "h"}

    # Two people on a desktop: big tiles, the top layer wanted.
    wanted = await until(
        lambda: views_match_sfu(server, cl, ids["client"]),
        within=20,
        what="client's view at the SFU",
    )
    assert wanted == {ids["caseworker"]: 2}

    # A partner joins on a phone: the desktop tiles shrink (the middle layer), the phone's
    # strip tile takes the low one.
    pa = await launch("partner", width=360, height=640)
    await join(pa, partner_url(server, room["room"]))
    ids["partner"] = await my_id(pa)
    everyone = set(ids.values())
    for b in (cw, cl, pa):
        await wait_remote_playing(b, everyone - {ids[b.name]}, within=60)
    for b in (cw, cl, pa):
        wanted = await until(
            lambda b=b: views_match_sfu(server, b, ids[b.name]), within=20, what=f"{b.name}'s view"
        )
        print(f"[layers] {b.name} wants {wanted}")
        # The desktop grid of three wants the middle layer; the phone's tiles are no larger.
        assert set(wanted.values()) <= ({0, 1} if b is pa else {1}), wanted

        # What arrives is never larger than the tile needs (one layer, the right one or,
        # while the publisher's uplink does not carry it, a lower one) once the switch
        # down is through: it waits for the lower layer's key frame (a PLI round trip and
        # an encode, seconds on a loaded machine), the frames decoded until then are the
        # old layer's.
        async def fits(b: Browser = b, wanted: dict = wanted) -> tuple[dict]:
            got = await inbound(b)
            for pid, want in wanted.items():
                if pid in got:  # (no inbound stats yet while the allocator holds it paused)
                    assert 0 < got[pid]["width"] <= LAYER_SIZES[want][0], (b.name, pid, got[pid])
            return (got,)

        (got,) = await until(fits, within=20, what=f"{b.name}'s frames fit its tiles")
        print(
            f"[layers] {b.name} receives { ({p: (v['width'], v['height']) for p, v in got.items()}) }"
        )

    # Nobody wants the caseworker's top layer now: after the SFU's hold time its page
    # stops sending it (encodings[h].active = false), and keeps the others.
    await until(
        lambda: _h_stopped(cw), within=20, what="the caseworker's page stops the unused top layer"
    )

    # Layer switches, on the client's view of the caseworker: the caseworker shares a
    # screen (only the full layer goes out, and the screen's tile is enlarged), then stops
    # (camera layers back, the small tile takes a camera layer again).
    share = cw.page.get_by_test_id("screen-toggle")
    for action, layers in (("share", (2,)), ("stop", (1, 0))):
        before = (await inbound(cl))[ids["caseworker"]]
        await share.click()
        await eventually(
            lambda layers=layers: _leg_layer_is(server, ids["client"], ids["caseworker"], *layers),
            within=20,
            what=f"{action}: layer {layers}",
        )
        # The switch and the first frames after it. The bandwidth allocator may pause the
        # video meanwhile (its estimate of a loaded machine's loopback can be below a
        # shared screen's rate): that freeze is the allocator's, not the switch's.
        paused = False
        for _ in range(10):
            await asyncio.sleep(0.2)
            paused |= sfu_wanted(server, ids["client"], ids["caseworker"]) == -1
        after = (await inbound(cl))[ids["caseworker"]]
        freeze = after["freezeSeconds"] - before["freezeSeconds"]
        print(
            f"[switch] {action}: {before['width']}x{before['height']} →"
            f" {after['width']}x{after['height']}, freezes +{after['freezes'] - before['freezes']}"
            f" ({freeze:.2f} s), frames dropped +{after['dropped'] - before['dropped']},"
            f" key frames +{after['keyframes'] - before['keyframes']}"
        )
        # One continuous stream (same SSRC) that starts the new layer at a key frame and
        # goes on decoding, without a freeze of a second.
        assert after["ssrc"] == before["ssrc"]
        assert after["keyframes"] > before["keyframes"]
        assert after["decoded"] > before["decoded"]
        # getStats gives the number of freezes and their total; each freeze is at least
        # a 150 ms gap (Chromium's definition), which bounds the longest one.
        freezes = after["freezes"] - before["freezes"]
        longest = freeze - max(0, freezes - 1) * 0.15
        # The goal is no freeze over 1 s (printed above: 0.3-0.9 s on a quiet run); a
        # loaded machine's encoder restarts take longer, so the assert only catches a
        # switch that waits for a key frame nobody asked for (seconds, or for ever).
        if paused:
            print(f"[switch] {action}: the allocator paused the video meanwhile")
        else:
            assert longest < 3.0, f"{action}: a freeze of up to {longest:.2f} s at the switch"
        await wait_remote_playing(cl, everyone - {ids["client"]}, within=30)

    # Hidden tiles: the partner's tab goes to the background. Headless Chromium never
    # hides a tab (not even a minimised window), so the page is told so the way the
    # browser would tell it: visibilityState "hidden" and a visibilitychange event.
    await pa.page.evaluate(_HIDE_JS)
    others = everyone - {ids["partner"]}
    await eventually(
        lambda: all(sfu_wanted(server, ids["partner"], p) == -1 for p in others),
        within=10,
        what="the partner's tiles hidden at the SFU",
    )
    await asyncio.sleep(1.5)  # packets in flight; the SFU folds its counters every 0.5 s
    counts = {p: sfu_packets(server, ids["partner"], p) for p in others}
    received = {p: v["packets"] for p, v in (await inbound(pa)).items()}
    await asyncio.sleep(3.0)
    # No video packet for a hidden tile: at the SFU and at the page.
    assert {p: sfu_packets(server, ids["partner"], p) for p in others} == counts
    assert {p: v["packets"] for p, v in (await inbound(pa)).items()} == received
    # Shown again: video again, from a key frame.
    await pa.page.evaluate(_SHOW_JS)
    await wait_remote_playing(pa, others, within=30)
    for p in others:
        # Counted at the SFU too (its counters fold in on a timer, and the allocator may
        # hold a paused leg until its next tick): wait for it rather than race it.
        await eventually(
            lambda p=p: (sfu_packets(server, ids["partner"], p) or 0) > (counts[p] or 0),
            within=10,
            what=f"video packets of {p} to the partner at the SFU after showing",
        )
    for b in (cw, cl, pa):
        errors = [x for x in b.console if x.startswith("pageerror") or "Refused to" in x]
        assert errors == [], f"{b.name}: {errors}"


_HIDE_JS = """() => {
  Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
  document.dispatchEvent(new Event('visibilitychange'));
}"""
_SHOW_JS = """() => {
  delete document.visibilityState;
  document.dispatchEvent(new Event('visibilitychange'));
}"""


async def _h_stopped(browser: Browser) -> bool:
    sent = await outbound(browser)
    return sent["h"]["active"] is False and sent["l"]["active"] is True


def _leg_layer_is(server: Server, subscriber: str, publisher: str, *layers: int) -> bool:
    return leg_metric(server, "roundtable_video_leg_layer", subscriber, publisher) in layers
