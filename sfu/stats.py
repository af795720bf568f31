"""Per-room forwarding statistics, cheap enough to update for every forwarded packet.

prometheus_client's Histogram takes a lock and walks its buckets in Python on every
``observe``; on the hot path we only bump integers and let the exporter
(``sfu.metrics``) read them at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

# Upper bounds in nanoseconds: sub-millisecond resolution where an SFU should live.
LATENCY_BUCKETS_NS: tuple[int, ...] = (
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


@dataclass(slots=True)
class LatencyHistogram:
    """Counts of packet-in → packet-out delays (ns), Prometheus-style cumulative on read."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_NS) + 1))
    total_ns: int = 0
    n: int = 0

    def observe(self, ns: int) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS_NS, ns)] += 1
        self.total_ns += ns
        self.n += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(upper bound in seconds, cumulative count), …, (inf, n)]``."""
        out, running = [], 0
        for bound, c in zip(LATENCY_BUCKETS_NS, self.counts, strict=False):
            running += c
            out.append((bound / 1e9, running))
        out.append((float("inf"), self.n))
        return out


@dataclass(slots=True)
class RoomStats:
    """What one router has forwarded since it was created."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    dropped: int = 0
    keyframe_requests: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
