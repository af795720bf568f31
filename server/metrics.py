"""Prometheus view of the media plane's per-room counters (``sfu.stats.RoomStats``).

The SFU only bumps integers on its hot path; this collector reads them at scrape time.
Counters must never go down, so a closed router's totals are folded into ``retired``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

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
        live = list(self._routers.items())
        for _, stats in live:
            for name in _FIELDS:
                totals[name] += getattr(stats, name, 0)
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
        h = HistogramMetricFamily(
            "roundtable_forwarding_latency_seconds",
            "Delay added by the SFU, packet in to packet out, per room.",
            labels=["room"],
        )
        for router, stats in live:
            lat = stats.latency
            buckets = [(_le(bound), count) for bound, count in lat.cumulative()]
            h.add_metric([str(router.room_id)], buckets, lat.total_ns / 1e9)
        yield h
        # Simulcast (issue 15): which layer each subscriber gets. Per leg only ids, and
        # only while the room is live (a room holds at most a dozen people).
        layers = GaugeMetricFamily(
            "roundtable_video_legs",
            "Video legs by the simulcast layer forwarded (0 = lowest; paused = none).",
            labels=["layer"],
        )
        per_leg = ["room", "subscriber", "publisher"]
        packets = CounterMetricFamily(
            "roundtable_video_leg_packets",
            "RTP packets forwarded on one subscriber's video leg of one publisher.",
            labels=per_leg,
        )
        layer = GaugeMetricFamily(
            "roundtable_video_leg_layer",
            "The layer a video leg forwards now (-1: paused).",
            labels=per_leg,
        )
        wanted = GaugeMetricFamily(
            "roundtable_video_leg_wanted_layer",
            "The layer the subscriber's view and the allocator's cap ask for (-1: none).",
            labels=per_leg,
        )
        by_layer: dict[str, int] = {}
        for router, _ in live:
            for leg in router.video_legs():
                key = "paused" if leg.layer is None else str(leg.layer)
                by_layer[key] = by_layer.get(key, 0) + 1
                labels = [str(router.room_id), leg.subscriber, leg.publisher]
                packets.add_metric(labels, leg.packets)
                layer.add_metric(labels, -1 if leg.layer is None else leg.layer)
                wanted.add_metric(labels, -1 if leg.wanted is None else leg.wanted)
        for key, n in sorted(by_layer.items()):
            layers.add_metric([key], n)
        yield from (layers, packets, layer, wanted)
        # What each subscriber's link is believed to take, and what is spent of it (the
        # shaped-link test's timeline and the bench read these).
        estimate = GaugeMetricFamily(
            "roundtable_downlink_estimate_bps",
            "A subscriber's downlink bandwidth estimate (bits/s).",
            labels=["room", "subscriber"],
        )
        spent = GaugeMetricFamily(
            "roundtable_downlink_allocated_bps",
            "What the allocator forwards to a subscriber (bits/s, headers included).",
            labels=["room", "subscriber"],
        )
        for router, _ in live:
            for down in router.downlinks():
                labels = [str(router.room_id), down.subscriber]
                estimate.add_metric(labels, down.estimate_bps)
                spent.add_metric(labels, down.sent_bps)
        yield from (estimate, spent)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
