"""Transport-cc in real Chromium: the publisher's own congestion controller (GoogCC),
fed by the SFU's transport feedback, ramps the uplink up so the top simulcast layer
starts; with only our REMB (capped at ~1.5x what already flows) it would not."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.browser.harness import Launch, Server, join, my_id, wait_remote_playing

pytestmark = pytest.mark.browser

ENOUGH_BPS = 1_500_000  # more than the three layers' targets: the top layer fits
WITHIN = 90.0  # s from the join click; a loaded 2-core machine is slow, GoogCC is not

# The publish connection's uplink estimate and what each encoding sends (getStats).
_UPLINK_JS = """
async () => {
  const pc = window.roundtable.pcs && window.roundtable.pcs.publish;
  const out = {available: 0, layers: {}};
  if (!pc) return out;
  const stats = await pc.getStats();
  stats.forEach((s) => {
    if (s.type === 'candidate-pair' && s.nominated && s.availableOutgoingBitrate)
      out.available = Math.max(out.available, s.availableOutgoingBitrate);
    if (s.type === 'outbound-rtp' && s.kind === 'video')
      out.layers[s.rid || '-'] = {
        frames: s.framesSent || 0, height: s.frameHeight || 0, active: s.active !== false,
      };
  });
  return out;
}
"""


async def uplink(browser: Any) -> dict[str, Any]:
    return await browser.page.evaluate(_UPLINK_JS)


async def test_chromium_ramps_its_uplink_to_the_top_simulcast_layer(
    server: Server, launch: Launch
) -> None:
    room = server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
    cw, cl = await launch("caseworker"), await launch("client")
    clicked = time.monotonic()
    await asyncio.gather(join(cw, room["caseworker_url"]), join(cl, room["client_url"]))
    ids = {b.name: await my_id(b) for b in (cw, cl)}
    await wait_remote_playing(cl, {ids["caseworker"]}, within=60)

    # Until the estimate carries the top layer and every layer sends frames (frames
    # counted 1 s apart grow) — except one the SFU asked the page to stop because nobody
    # watches it (sfu.simulcast: here the middle one; the page marks it inactive).
    last: dict[str, Any] = {}
    seen: dict[str, Any] = {}
    growing: set[str] = set()
    stopped: set[str] = set()
    timeline: list[str] = []
    h_at: float | None = None  # s from the join click until the top layer first sent
    while time.monotonic() - clicked < WITHIN:
        seen = await uplink(cw)
        growing = {
            rid
            for rid, layer in seen["layers"].items()
            if rid in last.get("layers", {}) and layer["frames"] > last["layers"][rid]["frames"]
        }
        stopped = {rid for rid, layer in seen["layers"].items() if not layer["active"]}
        if "h" in growing and h_at is None:
            h_at = time.monotonic() - clicked
        timeline.append(
            f"{time.monotonic() - clicked:.0f}s {seen['available'] / 1e6:.2f}M {sorted(growing)}"
            f" stopped {sorted(stopped)}"
        )
        if (
            seen["available"] > ENOUGH_BPS
            and "h" in growing
            and growing | (stopped - {"h"}) >= {"l", "m", "h"}
        ):
            break
        last = seen
        await asyncio.sleep(1.0)
    took = time.monotonic() - clicked
    print(
        f"[twcc] join click -> top layer flowing, uplink estimate "
        f"{seen['available'] / 1e6:.2f} Mbit/s after {took:.1f} s: {seen['layers']}"
    )
    print(f"[twcc] top layer first sending {h_at} s after the join click")
    print("[twcc] " + " | ".join(timeline))
    assert set(seen["layers"]) == {"l", "m", "h"}, seen
    assert seen["available"] > ENOUGH_BPS, (
        f"uplink estimate {seen['available']} bit/s after {took:.0f} s"
    )
    assert "h" in growing and growing | (stopped - {"h"}) >= {"l", "m", "h"}, (
        f"layers sending: {growing}, stopped by the SFU: {stopped}: {seen}"
    )
    # and the top layer is the full picture, not a scaled-down copy of a lower one
    assert seen["layers"]["h"]["height"] > seen["layers"]["l"]["height"] > 0
