"""Prometheus view of the media plane's per-room counters (``sfu.stats.RoomStats``).

The SFU only bumps integers on its hot path; this collector reads them at scrape time.
Counters must never go down, so a closed router's totals are folded into ``retired``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

_FIELDS = (
    "packets_in",
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


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
