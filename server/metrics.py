"""Prometheus view of the media plane's per-room counters (``sfu.stats.RoomStats``).

The SFU only bumps integers on its hot path; this collector reads them at scrape time.
Counters must never go down, so a closed router's totals are folded into ``retired``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sfu.stats import LATENCY_BUCKETS_NS

T = TypeVar("T")

_FIELDS = (
    "packets_in",
    "packets_in_python",
    "bytes_in",
    "packets_out",
    "bytes_out",
    "dropped",
    "send_errors",
    "keyframe_requests",
)


class MediaStatsCollector(Collector):
    def __init__(self) -> None:
        # router -> its RoomStats; weak so a forgotten router does not stay alive for us.
        self._routers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._retired = dict.fromkeys(_FIELDS, 0)

    def track(self, router: Any) -> None:
        self._routers[router] = router.stats
        weakref.finalize(router, self._retire, router.stats)

    def _retire(self, stats: Any) -> None:
        for name in _FIELDS:
            self._retired[name] += getattr(stats, name, 0)

    def collect(self) -> Iterable[Metric]:
        totals = dict(self._retired)
        routers = list(self._routers.items())
        for _, stats in routers:
            for name in _FIELDS:
                totals[name] += getattr(stats, name, 0)
        # A closed room's router lives on until a collection frees its cycles (after
        # server.gcpolicy's next thaw: minutes): its totals count, its series do not.
        live = [(router, stats) for router, stats in routers if not router.closed]
        for name, help_text in (
            ("packets_in", "RTP packets received from publishers."),
            (
                "packets_in_python",
                "Of those, the ones forwarded by the Python path, not the C receive path.",
            ),
            ("bytes_in", "RTP payload bytes received from publishers."),
            ("packets_out", "RTP packets forwarded to subscribers."),
            ("bytes_out", "RTP payload bytes forwarded to subscribers."),
            ("dropped", "Packets dropped for slow subscribers (and late ones after a restart)."),
            ("send_errors", "Packets the SFU failed to protect or send."),
            ("keyframe_requests", "Key-frame requests relayed to publishers."),
        ):
            metric_name = {
                "packets_out": "roundtable_forwarded_packets",
                "bytes_out": "roundtable_forwarded_bytes",
            }.get(name, f"roundtable_media_{name}")
            c = CounterMetricFamily(metric_name, help_text)
            c.add_metric([], totals[name])
            yield c
        # The per-room histogram and the per-leg/per-subscriber series grow with the
        # node (~1,400 samples each at 70 rooms × 3): built and yielded in parts of at
        # most PART samples, which ``signaling.metrics`` renders as one family. So a
        # scrape holds the media for one part at a go, not one 7-10 ms family.
        rooms = [(str(router.room_id), stats.latency) for router, stats in live]
        yield from _parts(
            lambda: HistogramMetricFamily(
                "roundtable_forwarding_latency_seconds",
                "Delay added by the SFU, packet in to packet out, per room.",
                labels=["room"],
            ),
            rooms,
            lambda h, room: h.add_metric(
                [room[0]],
                [(_le(bound), count) for bound, count in room[1].cumulative()],
                room[1].total_ns / 1e9,
            ),
            per_item=len(LATENCY_BUCKETS_NS) + 3,  # buckets, +Inf, _count, _sum
        )
        # Simulcast (issue 15): which layer each subscriber gets. Per leg only ids, and
        # only while the room is live (a room holds at most a dozen people).
        legs = [(str(router.room_id), leg) for router, _ in live for leg in router.video_legs()]
        by_layer: dict[str, int] = {}
        for _, leg in legs:
            key = "paused" if leg.layer is None else str(leg.layer)
            by_layer[key] = by_layer.get(key, 0) + 1
        layers = GaugeMetricFamily(
            "roundtable_video_legs",
            "Video legs by the simulcast layer forwarded (0 = lowest; paused = none).",
            labels=["layer"],
        )
        for key, n in sorted(by_layer.items()):
            layers.add_metric([key], n)
        yield layers
        per_leg = ["room", "subscriber", "publisher"]
        yield from _parts(
            lambda: CounterMetricFamily(
                "roundtable_video_leg_packets",
                "RTP packets forwarded on one subscriber's video leg of one publisher.",
                labels=per_leg,
            ),
            legs,
            lambda f, rl: f.add_metric([rl[0], rl[1].subscriber, rl[1].publisher], rl[1].packets),
        )
        yield from _parts(
            lambda: GaugeMetricFamily(
                "roundtable_video_leg_layer",
                "The layer a video leg forwards now (-1: paused).",
                labels=per_leg,
            ),
            legs,
            lambda f, rl: f.add_metric(
                [rl[0], rl[1].subscriber, rl[1].publisher],
                -1 if rl[1].layer is None else rl[1].layer,
            ),
        )
        yield from _parts(
            lambda: GaugeMetricFamily(
                "roundtable_video_leg_wanted_layer",
                "The layer the subscriber's view and the allocator's cap ask for (-1: none).",
                labels=per_leg,
            ),
            legs,
            lambda f, rl: f.add_metric(
                [rl[0], rl[1].subscriber, rl[1].publisher],
                -1 if rl[1].wanted is None else rl[1].wanted,
            ),
        )
        # What each subscriber's link is believed to take, and what is spent of it (the
        # shaped-link test's timeline and the bench read these).
        downs = [(str(router.room_id), down) for router, _ in live for down in router.downlinks()]
        yield from _parts(
            lambda: GaugeMetricFamily(
                "roundtable_downlink_estimate_bps",
                "A subscriber's downlink bandwidth estimate (bits/s).",
                labels=["room", "subscriber"],
            ),
            downs,
            lambda f, rd: f.add_metric([rd[0], rd[1].subscriber], rd[1].estimate_bps),
        )
        yield from _parts(
            lambda: GaugeMetricFamily(
                "roundtable_downlink_allocated_bps",
                "What the allocator forwards to a subscriber (bits/s, headers included).",
                labels=["room", "subscriber"],
            ),
            downs,
            lambda f, rd: f.add_metric([rd[0], rd[1].subscriber], rd[1].sent_bps),
        )


# Samples per yielded part of a large family (see MediaStatsCollector.collect).
PART = 64


def _parts(
    make: Callable[[], Metric],
    items: Sequence[T],
    add: Callable[[Metric, T], None],
    per_item: int = 1,
) -> Iterator[Metric]:
    """One family over ``items`` as consecutive parts of the same name, each built when
    the consumer asks for it; at least one part (an empty family still shows its HELP)."""
    step = max(1, PART // per_item)
    for i in range(0, max(len(items), 1), step):
        family = make()
        for item in items[i : i + step]:
            add(family, item)
        yield family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
