"""Per-room forwarding statistics, cheap enough to update for every forwarded packet.

prometheus_client's Histogram takes a lock and walks its buckets in Python on every
``observe``; on the hot path we only bump integers and let the exporter
(``sfu.metrics``) read them at scrape time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._fastpath import Meter

# Upper bounds in nanoseconds: sub-millisecond resolution where an SFU should live.
LATENCY_BUCKETS_NS: tuple[int, ...] = (
    10_000,
    20_000,
    30_000,
    50_000,
    100_000,
    200_000,
    300_000,
    500_000,
    750_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
)


class LatencyHistogram:
    """Counts of packet-in → packet-out delays (ns), Prometheus-style cumulative on read.

    The counts live in a C :class:`sfu._fastpath.Meter`, which the C send path bumps
    directly; this is the Python view of them.
    """

    __slots__ = ("meter",)

    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def observe(self, ns: int) -> None:
        self.meter.observe(ns)

    @property
    def counts(self) -> list[int]:
        return self.meter.counts

    @property
    def total_ns(self) -> int:
        return self.meter.total_ns

    @property
    def n(self) -> int:
        return self.meter.n

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(upper bound in seconds, cumulative count), …, (inf, n)]``."""
        out, running = [], 0
        counts = self.meter.counts
        for bound, c in zip(LATENCY_BUCKETS_NS, counts, strict=False):
            running += c
            out.append((bound / 1e9, running))
        out.append((float("inf"), running + counts[-1]))
        return out


@dataclass(slots=True)
class RoomStats:
    """What one router has forwarded since it was created.

    ``packets_in``/``bytes_in``, ``packets_out``/``bytes_out`` and the latency histogram
    are kept by ``meter`` (C, updated by the receive and every leg's send path); the
    rest are plain integers.
    """

    dropped: int = 0
    send_errors: int = 0
    keyframe_requests: int = 0
    meter: Meter = field(default_factory=lambda: Meter(LATENCY_BUCKETS_NS))
    latency: LatencyHistogram = field(init=False)

    def __post_init__(self) -> None:
        self.latency = LatencyHistogram(self.meter)

    @property
    def packets_in(self) -> int:
        return self.meter.packets_in

    @property
    def bytes_in(self) -> int:
        return self.meter.bytes_in

    @property
    def packets_in_python(self) -> int:
        """Of :attr:`packets_in`, those the Python receive path forwarded (the C Inbound
        took the rest): a stream's first packets, a simulcast layer's key frames, the
        packet after a gap, late packets, repairs."""
        return self.meter.packets_in_python

    @property
    def packets_out(self) -> int:
        return self.meter.packets

    @property
    def bytes_out(self) -> int:
        return self.meter.bytes
