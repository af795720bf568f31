"""/metrics on a big node: the media plane's large families (per-room latency histogram,
per-leg and per-subscriber series) come in parts, so a scrape never holds the event loop
(and the media waiting on it) for a whole family, and the text is that of one family."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from prometheus_client import generate_latest

from server.metrics import PART, MediaStatsCollector
from sfu.router import DownlinkInfo
from sfu.stats import RoomStats
from signaling.metrics import Metrics, _texts


@dataclass
class _Leg:
    """A LegInfo whose packet count notes when the scrape reads it."""

    subscriber: str
    publisher: str
    layer: int | None
    wanted: int | None
    seen: list[str]

    @property
    def packets(self) -> int:
        self.seen.append("leg")
        return 7


class _Router:
    def __init__(self, room: int, seen: list[str]) -> None:
        self.room_id = f"r{room}"
        self.closed = False
        self.stats = RoomStats()
        for ns in (15_000, 900_000, 4_000_000 * (room % 3)):
            self.stats.latency.observe(ns)
        self._legs = [
            _Leg(f"s{s}", f"p{p}", None if (room + s) % 5 == 0 else p % 3, p % 3, seen)
            for s in range(3)
            for p in range(3)
            if s != p
        ]

    def video_legs(self) -> list[_Leg]:
        return self._legs

    def downlinks(self) -> list[DownlinkInfo]:
        return [DownlinkInfo(f"s{s}", 1e6 + s, 5e5) for s in range(3)]


class _Merged:
    """The collector's parts of one name put back together: one family each."""

    def __init__(self, collector: MediaStatsCollector) -> None:
        self.collector = collector

    def collect(self):
        merged = []
        for family in self.collector.collect():
            if merged and merged[-1].name == family.name:
                merged[-1].samples.extend(family.samples)
            else:
                merged.append(family)
        return merged


def _node(rooms: int) -> tuple[MediaStatsCollector, list[_Router], list[str]]:
    seen: list[str] = []
    collector = MediaStatsCollector()
    routers = [_Router(i, seen) for i in range(rooms)]
    for router in routers:
        collector.track(router)
    return collector, routers, seen


def test_a_big_node_s_families_come_in_parts_whose_text_is_one_family_s() -> None:
    collector, _routers, _ = _node(40)  # 240 video legs, 120 downlinks, 40 histograms
    names = [family.name for family in collector.collect()]
    for name in (
        "roundtable_forwarding_latency_seconds",
        "roundtable_video_leg_packets",
        "roundtable_video_leg_layer",
        "roundtable_video_leg_wanted_layer",
        "roundtable_downlink_estimate_bps",
    ):
        assert names.count(name) > 1, (name, names.count(name))
    for family in collector.collect():
        assert len(family.samples) <= PART, (family.name, len(family.samples))

    text = b"".join(_texts(collector.collect()))
    assert text == generate_latest(_Merged(collector))
    assert text.count(b"# TYPE roundtable_video_leg_packets") == 1
    assert text.count(b"roundtable_video_leg_packets_total{") == 240
    assert b'roundtable_video_leg_layer{publisher="p1",room="r0",subscriber="s0"} -1.0' in text
    assert text.count(b'roundtable_forwarding_latency_seconds_count{room="') == 40


def test_a_closed_room_s_series_go_its_totals_stay() -> None:
    """A closed room's router lives until a collection frees its cycles (minutes, with
    server.gcpolicy): its series left /metrics at once - 20 closed rooms' histograms in
    every scrape of the next bench step - while the counters still never go down."""
    collector, routers, _ = _node(3)
    for router in routers:
        router.stats.dropped = 5
    text = b"".join(_texts(collector.collect()))
    assert text.count(b'roundtable_forwarding_latency_seconds_count{room="') == 3
    routers[1].closed = True
    text = b"".join(_texts(collector.collect()))
    assert text.count(b'roundtable_forwarding_latency_seconds_count{room="') == 2
    assert b'room="r1"' not in text
    assert b"roundtable_media_dropped_total 15.0" in text


def test_an_empty_node_still_shows_each_family_once() -> None:
    collector, _, _ = _node(0)
    text = b"".join(_texts(collector.collect()))
    assert text == generate_latest(_Merged(collector))
    for name in (b"roundtable_video_leg_packets", b"roundtable_downlink_allocated_bps"):
        assert text.count(b"# TYPE " + name) == 1


async def test_a_scrape_lets_the_loop_run_within_the_per_leg_series() -> None:
    """Before, one family of every leg's packets was built and rendered in one go: 240
    legs here, ~420 at 70 rooms × 3 (7-10 ms of the loop in the 70-room bench)."""
    collector, _, seen = _node(40)
    metrics = Metrics()
    metrics.register(collector)
    seen.clear()  # the registry read every family once on register (auto_describe)
    loop = asyncio.get_running_loop()
    rendering = True

    def turn() -> None:
        seen.append("loop")
        if rendering:
            loop.call_soon(turn)

    now = [0.0]

    def clock() -> float:
        now[0] += 0.001
        return now[0]

    loop.call_soon(turn)
    body = await metrics.render_async(budget=0.0005, clock=clock)
    rendering = False
    runs, run = [], 0
    for what in seen:
        if what == "leg":
            run += 1
        else:
            runs.append(run)
            run = 0
    runs.append(run)
    assert sum(runs) == 240
    assert max(runs) <= PART, runs
    assert body.count(b"roundtable_video_leg_packets_total{") == 240
