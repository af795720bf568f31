"""Prometheus export of the media plane's counters, read at scrape time (never per packet)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .router import Router


class SfuCollector(Collector):
    """Per-room forwarding metrics for every live router.

    ``routers`` returns the current routers; register with
    ``registry.register(SfuCollector(lambda: rooms.routers()))``.
    Counters of closed rooms disappear with them, as Prometheus expects of a label set
    that goes away.
    """

    def __init__(self, routers: Callable[[], Iterable[Router]]) -> None:
        self._routers = routers

    def collect(self):  # noqa: ANN201 - prometheus_client's protocol
        latency = HistogramMetricFamily(
            "roundtable_forwarding_latency_seconds",
            "Time from an RTP packet entering the SFU to the same packet leaving for one subscriber.",
            labels=["room"],
        )
        packets = CounterMetricFamily(
            "roundtable_forwarded_packets", "RTP packets sent to subscribers.", labels=["room"]
        )
        octets = CounterMetricFamily(
            "roundtable_forwarded_bytes", "RTP bytes sent to subscribers.", labels=["room"]
        )
        received = CounterMetricFamily(
            "roundtable_received_packets", "RTP packets received from publishers.", labels=["room"]
        )
        dropped = CounterMetricFamily(
            "roundtable_dropped_packets",
            "Packets dropped for subscribers that could not keep up.",
            labels=["room"],
        )
        plis = CounterMetricFamily(
            "roundtable_keyframe_requests",
            "Key-frame requests relayed to publishers.",
            labels=["room"],
        )
        tracks = GaugeMetricFamily(
            "roundtable_forwarded_tracks", "Tracks currently forwarded (legs).", labels=["room"]
        )
        for router in list(self._routers()):
            room, s = router.room_id, router.stats
            buckets = [(_le(b), c) for b, c in s.latency.cumulative()]
            latency.add_metric([room], buckets, s.latency.total_ns / 1e9)
            packets.add_metric([room], s.packets_out)
            octets.add_metric([room], s.bytes_out)
            received.add_metric([room], s.packets_in)
            dropped.add_metric([room], s.dropped)
            plis.add_metric([room], s.keyframe_requests)
            tracks.add_metric([room], sum(len(sub.legs) for sub in router.subscribers.values()))
        yield from (latency, packets, octets, received, dropped, plis, tracks)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
