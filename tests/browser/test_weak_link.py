"""A participant behind a weak downlink: the voices get through, the pictures give way
(docs/protocol.md, "Weak links"; issue 15).

Layout (inside the suite's loopback-only namespace)::

    test namespace: roundtable serve (0.0.0.0; media on 10.203.0.13), the others'
                    Chromiums on loopback
        └── veth (tc tbf on our end: the shaped participant's downlink) ──►
            child namespace 10.203.0.14: the shaped participant's Chromium

The shaping is real: ``tc qdisc … tbf`` on the test namespace's end of the veth limits
everything flowing to the child namespace (media and signalling alike). Measured and
printed for the closing notes: the shaped participant's audio loss from its own getStats
(``packetsLost`` / ``packetsReceived`` of inbound audio over the shaped period), the video
width it received, how long the move down and the climb back took, and the freezes.
Issue 15's climb back within 10 s is asserted. On a shared 2-core machine the round
trips the estimator judges probes by jumped with the CPU load on every connection at
once, and the climb took 18-60 s at load 20-30 (NOTES-weak3); since the estimator takes
such a jump for the host's, not the link's (sfu.downlink.HostJumps), it took 3.9-8.0 s in
every run, at load 8-10 too (NOTES-weak4). The other goal, no freeze over 1 s, is printed
and asserted in the steady window and across the climb (each freeze on its own: the
client's page reads getStats every 100 ms, harness.watch_freezes; from the totals of two
samples alone, two freezes of 0.7 s read as "at most 1.28 s"): a 1.5x probe that passes
wrongly on the shaped link moves a video up for a second and freezes it about 1 s. Since
only a probe's own SR can pass it, that held at 0 s in every run at load 2-6, but not at
load 9-13 (NOTES-weak5: 1.33 s once, and a video paused after such an upgrade). At the
move down when the shaping starts, the freeze lasts from the first loss on the full link
until the low layer's key frame is decoded: 0.4-5.0 s per video (median 1.8 s) while the
old layer kept flowing until that key frame and its losses were repaired; since the cut
stops the old layer at once and its losses are not repaired (docs/bench.md, "Issue 15:
the move down"), 0.36-1.49 s (median 1.0 s) in 14 runs at load 3-6; since the first REMB
below what is sent thins the videos to temporal layer 0 at once (the brake, docs/bench.md
"Issue 15: the brake"), 0.23-1.05 s (median 0.45 s, 1 of 16 over 1 s) against 0.55-1.29 s
(median 0.95 s) without it in the same half hour; measured per freeze since (stop 32),
median 0.3 s, 1 of 60 over 1 s. Since the estimate takes the ICE consent check's round
trip as the empty link's, asks for an SR when it brakes and cuts again when the queue
grows after a cut (docs/bench.md, "Issue 15: the move down in a call's first
seconds"), at most 0.80 s in 16 runs (32 videos), and the steady window and the climb
at most 0.25 s. Asserted: under 1 s in the steady window and across the climb (issue
15's goal), under 2 s at the move down (a network event before any switch). The bench
(`roundtable-bench --link`) measures the same on a delayed, lossy link, and the unit test
test_a_lifted_link_is_climbed_back_within_a_few_seconds_whenever_it_is_lifted holds the
climb on a fake clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import run_server
from tests.browser.harness import (
    Browser,
    Launch,
    Server,
    eventually,
    inbound_rtp,
    join,
    launch_inside,
    my_id,
    take_freezes,
    wait_remote_playing,
    watch_freezes,
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
    a home router's buffer); ``None`` lifts it: the shaper is widened in place to far
    more than any call sends, so what it holds drains at once, as when a link gets wider.
    (Deleting it dropped the packets it held: the loss the subscriber then reported
    failed the first probe after the lift, and the climb took 11-12 s in 1 of ~10 runs.)"""
    if rate is None:
        _run(
            TC,
            *("qdisc", "change", "dev", ns.outside_dev, "root", "tbf"),
            *("rate", "1gbit", "burst", "1mb", "latency", "300ms"),
        )
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


# --- three people, one behind 300 kbit/s ---------------------------------------------------

# Layer widths of the page's 832x624 camera (web/call.js SIMULCAST): l, m, h.
LAYER_WIDTHS = (208, 416, 832)
LOW_WIDTH = LAYER_WIDTHS[0]


class Timeline:
    """Once a second: which layer every video leg follows at the SFU, the width each
    page decodes, and each subscriber's downlink estimate; printed, and written as JSON
    to ``$ROUNDTABLE_TIMELINE_OUT`` (the closing note's "layer timeline")."""

    def __init__(self, server: Server, pages: dict[str, Browser], ids: dict[str, str]) -> None:
        self.server = server
        self.pages = pages
        self.ids = ids
        self.names = {pid: name for name, pid in ids.items()}
        self.start = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.stats: dict[str, dict[str, dict[str, Any]]] = {}  # page -> its latest getStats
        self._task: asyncio.Task[None] | None = None
        self._fresh = asyncio.Event()
        self.figures: dict[str, Any] = {}

    def now(self) -> float:
        return round(time.monotonic() - self.start, 2)

    def event(self, what: str) -> float:
        t = self.now()
        self.events.append({"t": t, "event": what})
        print(f"[300 kbit/s] t={t:6.1f} s  {what}")
        return t

    async def _sample(self) -> None:
        t = self.now()
        stats = dict(
            zip(
                self.pages,
                await asyncio.gather(*(inbound_rtp(b) for b in self.pages.values())),
                strict=True,
            )
        )
        layers: dict[str, dict[str, int]] = {n: {} for n in self.pages}
        scrape = time.monotonic()
        # One /metrics read a second, not two: the SFU builds it on its event loop, and
        # under load a read took 20-80 ms (median) up to 0.9 s here, read and parse
        # included; round trips measured meanwhile look like a queue on the links.
        metrics = self.server.metrics()
        leg_layers, estimates = (
            self.server.leg_layers(metrics),
            self.server.downlink_estimates(metrics),
        )
        scrape_ms = round(1000 * (time.monotonic() - scrape))
        for (sub, pub), layer in leg_layers.items():
            if sub in self.names and pub in self.names:
                layers[self.names[sub]][self.names[pub]] = layer
        widths: dict[str, dict[str, int]] = {n: {} for n in self.pages}
        for name, sample in stats.items():
            for key, s in sample.items():
                pid, kind, _ = key.split(":")
                if kind == "video" and pid in self.names and s["frames"]:
                    pub = self.names[pid]
                    widths[name][pub] = max(widths[name].get(pub, 0), s["width"])
        estimate = {
            self.names[pid]: round(bps) for pid, bps in estimates.items() if pid in self.names
        }
        self.stats = stats
        self.samples.append(
            {
                "t": t,
                "layers": layers,
                "widths": widths,
                "estimate": estimate,
                "scrape_ms": scrape_ms,  # the /metrics read
            }
        )

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            try:
                await self._sample()
            except Exception as exc:  # a page mid-renegotiation: the next second tells
                print(f"[300 kbit/s] sample failed: {exc!r}")
            self._fresh.set()
            await asyncio.sleep(max(0.2, 1.0 - (time.monotonic() - began)))

    def begin(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def next(self) -> dict[str, Any]:
        """The next sample taken from now on."""
        self._fresh.clear()
        await asyncio.wait_for(self._fresh.wait(), 60)
        return self.samples[-1]

    async def until(
        self, check: Callable[[dict[str, Any]], bool], within: float, what: str
    ) -> tuple[float, dict[str, Any]]:
        """Seconds until a sample passes ``check`` (and that sample)."""
        start = time.monotonic()
        while True:
            sample = await self.next()
            if check(sample):
                return time.monotonic() - start, sample
            if time.monotonic() - start > within:
                raise AssertionError(f"{what}: not within {within} s; last sample {sample}")

    def row(self, sample: dict[str, Any]) -> str:
        cells = []
        for sub in self.pages:
            legs = " ".join(
                f"{pub[:2]}:{sample['layers'][sub].get(pub, '?')}/{sample['widths'][sub].get(pub, 0)}"
                for pub in self.pages
                if pub != sub
            )
            est = sample["estimate"].get(sub)
            cells.append(f"{sub[:6]:>6} {legs} est {est / 1000 if est else 0:7.0f}k")
        return f"t={sample['t']:6.1f}  " + " | ".join(cells)

    def print(self) -> None:
        print("[300 kbit/s] timeline: per subscriber, publisher:layer at the SFU/width decoded")
        marks = sorted(self.events, key=lambda e: e["t"])
        for sample in self.samples:
            while marks and marks[0]["t"] <= sample["t"]:
                print(f"           --- {marks.pop(0)['event']}")
            print("  " + self.row(sample))

    def write(self, **figures: Any) -> None:
        """Figures written once stay in later writes (a failing assert after the
        figures' write adds ``failed`` to them)."""
        self.figures.update(figures)
        out = os.environ.get("ROUNDTABLE_TIMELINE_OUT")
        if not out:
            return
        doc = {
            "test": "tests/browser/test_weak_link.py three people, one behind 300 kbit/s",
            "link": "tc tbf rate 300kbit burst 6kb latency 300ms on the shaped subscriber's downlink",
            "shaped": "client",
            "layer_widths": list(LAYER_WIDTHS),
            "events": self.events,
            "samples": self.samples,
            **self.figures,
        }
        Path(out).write_text(json.dumps(doc, indent=1))
        print(f"[300 kbit/s] timeline written to {out}")


def video_of(sample: dict[str, dict[str, Any]], pid: str) -> dict[str, Any]:
    """Summed freeze and frame counters of ``pid``'s video in one getStats sample."""
    keys = ("frames", "keyframes", "dropped", "freezes", "freezeSeconds", "pli", "nack")
    out = dict.fromkeys(keys, 0)
    for key, s in sample.items():
        if key.startswith(f"{pid}:video:"):
            for k in keys:
                out[k] += s[k]
    return out


def video_change(
    before: dict[str, Any], after: dict[str, Any], pid: str, freezes: list[dict[str, Any]]
) -> dict[str, Any]:
    """What happened to ``pid``'s video between two samples. ``longest`` is its longest
    freeze, from the page's freeze log of the same span (``take_freezes``: each freeze on
    its own). ``bound`` is what the two samples alone allow: getStats gives only the
    count and total, and each freeze lasts at least ~150 ms (Chromium's definition), so
    the longest is at most total - (n-1)*0.15 s."""
    a, b = video_of(before, pid), video_of(after, pid)
    d = {k: b[k] - a[k] for k in a}
    d["bound"] = longest_of(d["freezeSeconds"], d["freezes"])
    mine = [f for f in freezes if f["participant"] == pid]
    # A step of several freezes (the page read late) counts with the same bound.
    d["longest"] = max((longest_of(f["seconds"], f["count"]) for f in mine), default=0.0)
    d["each"] = [round(f["seconds"], 2) for f in mine]
    return d


def longest_of(seconds: float, count: int) -> float:
    """The longest of ``count`` freezes lasting ``seconds`` in all, at most: each of the
    others lasted at least ~150 ms (Chromium's definition)."""
    return max(0.0, seconds - max(0, count - 1) * 0.15)


def show_change(what: str, name: str, d: dict[str, Any]) -> str:
    return (
        f"[300 kbit/s] {what}, {name}'s video: frames +{d['frames']} (key +{d['keyframes']}),"
        f" dropped +{d['dropped']}, freezes +{d['freezes']} ({d['freezeSeconds']:.2f} s:"
        f" {d['each']}, longest {d['longest']:.2f} s, from the totals <= {d['bound']:.2f} s),"
        f" PLI +{d['pli']}, NACK +{d['nack']}"
    )


async def test_three_people_one_behind_300_kbits_gets_every_low_layer_with_its_voice_intact(
    shaped_server: Server, child: Netns, launch: Launch
) -> None:
    server = shaped_server
    room = server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
    partner_url = server.join_url(
        server.token(
            room["room"],
            "partner",
            "Frau Sommer",
            *("--org", "Deutsche Rentenversicherung"),
            *("--grants", "publish,subscribe,audio,video,see_client"),
        )
    )
    # 1280x720 windows: the grid of three asks for the middle layer. (At 1920x1080 the
    # top one; three Chromiums encoding and decoding 832x624 were more than this shared
    # two-core machine carried: pages lost their signalling.)
    caseworker = await launch("caseworker")
    partner = await launch("partner")
    await asyncio.gather(join(caseworker, room["caseworker_url"]), join(partner, partner_url))
    client, client_url = await launch_inside(launch, child, "client", server, room["client_url"])
    await join(client, client_url)
    pages = {"caseworker": caseworker, "partner": partner, "client": client}
    ids = {name: await my_id(b) for name, b in pages.items()}
    everyone = set(ids.values())
    # Three Chromiums encoding three layers each on a shared two-core machine start slowly:
    # the waits are for conditions, with room for a loaded machine.
    await asyncio.gather(
        *(wait_remote_playing(b, everyone - {ids[n]}, within=180) for n, b in pages.items())
    )
    await watch_freezes(client)
    timeline = Timeline(server, pages, ids)
    timeline.begin()
    try:
        await _shaped_and_lifted(server, child, pages, ids, timeline)
    except BaseException:
        timeline.print()
        timeline.write(failed=True)
        raise
    finally:
        await timeline.stop()


def others_of(name: str) -> list[str]:
    return [n for n in ("caseworker", "partner", "client") if n != name]


async def _shaped_and_lifted(
    server: Server,
    child: Netns,
    pages: dict[str, Browser],
    ids: dict[str, str],
    timeline: Timeline,
) -> None:
    def on_layer(sample: dict[str, Any], sub: str, layer: int) -> bool:
        """``sub`` receives every other's video on ``layer``, at the SFU and decoded."""
        for pub in others_of(sub):
            width = sample["widths"][sub].get(pub, 0)
            if sample["layers"][sub].get(pub) != layer:
                return False
            # Decoded at that layer's size (Chromium may trim a loaded encoder's
            # resolution a little: up to the layer's width, above the one below).
            below = LAYER_WIDTHS[layer - 1] if layer > 0 else 0
            if not below < width <= LAYER_WIDTHS[layer]:
                return False
        return True

    # The layer the unshaped pages' tiles ask for (the SFU's view of their size), once
    # their view reports are in: the same for all four legs, above the low one.
    def unshaped_wanted() -> list[int]:
        return [
            int(value)
            for labels, value in server.labelled("roundtable_video_leg_wanted_layer")
            if labels["subscriber"] != ids["client"]
        ]

    wanted = await eventually(
        lambda: (w := unshaped_wanted()) and len(w) == 4 and min(w) == max(w) >= 1 and w,
        30,
        "the unshaped tiles' layer at the SFU",
    )
    top = wanted[0]
    print(f"[300 kbit/s] the tiles ask for layer {top} ({LAYER_WIDTHS[top]} px wide)")

    # Before shaping: everyone on that layer (the publishers start the upper layers once
    # their own uplink estimate, from the SFU's transport-cc feedback, has ramped up).
    took, sample = await timeline.until(
        lambda s: all(on_layer(s, n, top) for n in pages), 120, f"everyone on layer {top}"
    )
    timeline.event(f"everyone on layer {top} ({took:.1f} s after the first sample)")
    print("[300 kbit/s]", timeline.row(sample))

    shape(child, "300kbit")
    before_shaping = await inbound_rtp(pages["client"])
    await take_freezes(pages["client"])  # from here on: the move down's
    shaped_at = timeline.event("client's downlink shaped: tbf 300kbit")
    took, sample = await timeline.until(
        lambda s: on_layer(s, "client", 0), 60, "the shaped client on the low layer of every video"
    )
    timeline.event(f"client on the low layer of every video ({took:.1f} s after shaping)")
    down_s = took

    # The measured window: from 5 s after the move down (the queue the 300 kbit/s link
    # built has drained by then) for 20 s. The client's videos are never paused; it is
    # on the low layer of every video in nearly every sample (a probe the link did not
    # show as too much may move one up for a second before its queue undoes it: such
    # excursions are counted and printed), the others on theirs.
    await asyncio.sleep(5)
    a0 = await inbound_rtp(pages["client"])
    freezes_down = await take_freezes(pages["client"])
    window_from = timeline.event("measured window starts")
    unshaped_low: dict[str, int] = {}
    samples = on_low = unshaped_kept = 0
    while time.monotonic() - timeline.start - window_from < 20:
        sample = await timeline.next()
        samples += 1
        assert all(sample["layers"]["client"].get(p, -1) >= 0 for p in others_of("client")), (
            f"a video paused on the shaped link: {timeline.row(sample)}"
        )
        on_low += on_layer(sample, "client", 0)
        kept = True
        for name in ("caseworker", "partner"):
            for pub in others_of(name):
                layer = sample["layers"][name].get(pub, -1)
                key = f"{name}<-{pub}"
                unshaped_low[key] = min(layer, unshaped_low.get(key, layer))
                kept &= layer == top
        unshaped_kept += kept
    a1 = await inbound_rtp(pages["client"])
    freezes_steady = await take_freezes(pages["client"])
    window_to = timeline.event("measured window ends")
    pids = {ids["caseworker"], ids["partner"]}
    loss = audio_loss(a0, a1, pids)
    packets = sum(audio_received(a0, a1, p) for p in pids)
    est = [s["estimate"].get("client", 0) for s in timeline.samples if s["t"] >= window_from]
    print(
        f"[300 kbit/s] client's audio loss over 20 s shaped: {100 * loss:.2f} % of "
        f"{packets} packets; estimate {min(est) / 1000:.0f}-{max(est) / 1000:.0f} kbit/s; "
        f"lowest layer the unshaped subscribers had meanwhile: {unshaped_low}; samples with "
        f"the client on the low layer of both: {on_low}/{samples}, the others on theirs: "
        f"{unshaped_kept}/{samples}"
    )
    window = timeline.now() - window_from
    streams = {}
    for key, s1 in a1.items():
        s0 = a0.get(key)
        pid, kind, _ = key.split(":")
        if s0 is None or pid not in timeline.names:
            continue
        got = s1["received"] - s0["received"]
        octets = s1["bytes"] + s1["header"] - s0["bytes"] - s0["header"]
        streams[f"{timeline.names[pid]} {kind}"] = {
            "kbps": round(octets * 8 / window / 1000, 1),  # RTP: payload and header
            "bytes_per_packet": round(octets / got) if got else 0,
            "packets_per_s": round(got / window, 1),
        }
    print(f"[300 kbit/s] what the client received per stream (RTP level): {streams}")
    steady = {}
    for name in ("caseworker", "partner"):
        steady[name] = video_change(a0, a1, ids[name], freezes_steady)
        print(show_change("shaped, steady 20 s", name, steady[name]))
        assert steady[name]["frames"] > 100, steady[name]  # low layer keeps playing
    down = {}
    for name in ("caseworker", "partner"):
        down[name] = video_change(before_shaping, a0, ids[name], freezes_down)
        print(show_change("shaping → low layer", name, down[name]))

    shape(child, None)
    lifted_at = timeline.event("shaping lifted")
    climb, sample = await timeline.until(
        lambda s: on_layer(s, "client", top), 60, f"the client back on layer {top}"
    )
    timeline.event(f"client back on layer {top} of every video ({climb:.1f} s after lifting)")
    await asyncio.sleep(3)
    after = await inbound_rtp(pages["client"])
    freezes_up = await take_freezes(pages["client"])
    up_seconds = timeline.now() - window_to  # what `up` below spans
    up = {}
    for name in ("caseworker", "partner"):
        up[name] = video_change(a1, after, ids[name], freezes_up)
        print(show_change(f"lifted → layer {top} (+3 s)", name, up[name]))
    timeline.print()
    print(
        f"[300 kbit/s] shaped → low layer of both videos after {down_s:.1f} s; audio loss "
        f"{100 * loss:.2f} %; lifted → layer {top} after {climb:.1f} s "
        f"(shaped for {lifted_at - shaped_at:.0f} s)"
    )
    print_allocations(server)
    timeline.write(
        audio_loss=loss,
        audio_packets=packets,
        down_seconds=down_s,
        climb_seconds=climb,
        window_samples=samples,
        window_client_low=on_low,
        window_unshaped_kept=unshaped_kept,
        streams=streams,
        freezes={
            "shaping": down,
            "steady": steady,
            "lifted": up,
        },
    )

    # The voices got through the 300 kbit/s link.
    assert loss < 0.01, f"audio loss {100 * loss:.2f} %"
    # The low layer of every video, nearly all the time (a moment up is a probe's).
    assert samples >= 15 and on_low >= 0.85 * samples, (on_low, samples)
    # The unshaped subscribers keep their layer (the client's link is not theirs; a
    # loaded machine's loopback may cost them a moment).
    assert unshaped_kept >= 0.85 * samples, (unshaped_kept, samples, unshaped_low)
    # Back up once the link is free, within issue 15's 10 s: the first probe after the
    # lift is at most sfu.downlink.MAX_BACKOFF (2.5 s) away, and two passed probes reach
    # the middle layer of both videos.
    assert climb <= 10, f"climb back took {climb:.1f} s (issue 15: 10 s)"
    longest = max(d["longest"] for d in (*steady.values(), *up.values()))
    print(
        f"[300 kbit/s] longest freeze in the steady window and after the climb <= {longest:.2f} s"
        " (issue 15's goal: 1 s); at the move down: "
        + " / ".join(f"{name} {down[name]['longest']:.2f} s" for name in ("caseworker", "partner"))
    )
    # Switching at key frames: the video keeps decoding across each switch (a new key
    # frame on the way up, the decoder never stuck): issue 15's goal, no freeze over 1 s
    # (each freeze on its own, from the page's log), in the steady window and across the
    # climb. At the move down the freeze starts with the loss on the link the shaping
    # narrowed, before any switch: at most 2 s (module docstring).
    for name in ("caseworker", "partner"):
        for what, d, most in (
            ("down", down[name], 2.0),
            ("steady", steady[name], 1.0),
            ("up", up[name], 1.0),
        ):
            assert d["longest"] < most, (name, what, d)
        # Decoding went on (at least half the low layer's 15 frames a second).
        assert up[name]["frames"] >= 7 * up_seconds, (name, up[name], up_seconds)
        assert up[name]["keyframes"] > 0, (name, up[name])
