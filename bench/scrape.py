"""Reading the server's ``/metrics``: the per-room latency histogram and a few counters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

LATENCY = "roundtable_forwarding_latency_seconds"
# Simulcast (issue 15): video legs by the layer forwarded, and per leg its layer and
# packets, labelled (room, subscriber, publisher); the bench keeps these labelled.
LEGS_BY_LAYER = "roundtable_video_legs"
LEG_LAYER = "roundtable_video_leg_layer"
LEG_WANTED = "roundtable_video_leg_wanted_layer"
LEG_PACKETS = "roundtable_video_leg_packets"
DOWNLINK = "roundtable_downlink_estimate_bps"
# server.loopwatch: the event loop's busy stretches (poll to poll), and GC pauses by
# generation; kept as histograms under "loop", "loop_cpu" (own CPU time) and "gc0".."gc2"
LOOP_BUSY = "roundtable_loop_busy_seconds"
LOOP_BUSY_CPU = "roundtable_loop_busy_cpu_seconds"
GC = "roundtable_gc_seconds"


@dataclass(slots=True)
class Histogram:
    """Cumulative bucket counts by upper bound (seconds), as Prometheus exposes them."""

    buckets: dict[float, float] = field(default_factory=dict)
    count: float = 0.0
    total: float = 0.0

    def minus(self, before: Histogram | None) -> Histogram:
        if before is None:
            return Histogram(dict(self.buckets), self.count, self.total)
        return Histogram(
            {le: c - before.buckets.get(le, 0.0) for le, c in self.buckets.items()},
            self.count - before.count,
            self.total - before.total,
        )

    def plus(self, other: Histogram) -> Histogram:
        keys = set(self.buckets) | set(other.buckets)
        return Histogram(
            {k: self.buckets.get(k, 0.0) + other.buckets.get(k, 0.0) for k in keys},
            self.count + other.count,
            self.total + other.total,
        )

    def quantile(self, q: float) -> float | None:
        """Like PromQL's ``histogram_quantile``: linear within the bucket holding rank q·n.

        The first bucket interpolates from 0; a rank in the +Inf bucket returns the
        largest finite bound (all we know is "more than that").
        """
        if self.count <= 0:
            return None
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for le in sorted(self.buckets):
            c = self.buckets[le]
            if c >= rank:
                if math.isinf(le):
                    return lower_bound
                if c == lower_count:
                    return le
                return lower_bound + (le - lower_bound) * (rank - lower_count) / (c - lower_count)
            lower_bound, lower_count = le, c
        return lower_bound

    def max_bound(self) -> float | None:
        """Upper bound of the lowest bucket holding every sample (the histogram's max);
        the largest finite bound if some fell in +Inf."""
        if self.count <= 0:
            return None
        finite = [le for le in sorted(self.buckets) if not math.isinf(le)]
        for le in finite:
            if self.buckets[le] >= self.count:
                return le
        return finite[-1] if finite else None

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass(slots=True)
class Scrape:
    latency: dict[str, Histogram] = field(default_factory=dict)  # by room
    counters: dict[str, float] = field(default_factory=dict)  # unlabelled samples by name
    legs_by_layer: dict[str, float] = field(default_factory=dict)  # "0", "1", "paused"
    # per video leg (room, subscriber, publisher): its layer (-1 paused), wanted, packets
    leg_layer: dict[tuple[str, str, str], float] = field(default_factory=dict)
    leg_wanted: dict[tuple[str, str, str], float] = field(default_factory=dict)
    leg_packets: dict[tuple[str, str, str], float] = field(default_factory=dict)
    # per subscriber (room, subscriber): the SFU's downlink estimate, bit/s
    downlink_bps: dict[tuple[str, str], float] = field(default_factory=dict)
    # server.loopwatch's histograms: "loop" (busy stretches), "gc0".."gc2" (collections)
    hists: dict[str, Histogram] = field(default_factory=dict)


def _add_sample(h: Histogram, sample: Any) -> None:
    """One sample of a Prometheus histogram family into ``h``."""
    if sample.name.endswith("_bucket"):
        h.buckets[float(sample.labels["le"])] = sample.value
    elif sample.name.endswith("_count"):
        h.count = sample.value
    elif sample.name.endswith("_sum"):
        h.total = sample.value


def parse(text: str) -> Scrape:
    out = Scrape()
    for family in text_string_to_metric_families(text):
        if family.name == LATENCY:
            for sample in family.samples:
                room = sample.labels.get("room", "")
                _add_sample(out.latency.setdefault(room, Histogram()), sample)
            continue
        if family.name in (LOOP_BUSY, LOOP_BUSY_CPU, GC):
            for sample in family.samples:
                key = {LOOP_BUSY: "loop", LOOP_BUSY_CPU: "loop_cpu"}.get(
                    family.name, f"gc{sample.labels.get('generation')}"
                )
                _add_sample(out.hists.setdefault(key, Histogram()), sample)
            continue
        per_leg = {
            LEG_LAYER: out.leg_layer,
            LEG_WANTED: out.leg_wanted,
            LEG_PACKETS: out.leg_packets,
        }
        for sample in family.samples:
            if not sample.labels:
                out.counters[sample.name] = sample.value
            elif family.name == LEGS_BY_LAYER:
                out.legs_by_layer[sample.labels.get("layer", "")] = sample.value
            elif family.name in per_leg and not sample.name.endswith("_created"):
                labels = sample.labels
                key = (
                    labels.get("room", ""),
                    labels.get("subscriber", ""),
                    labels.get("publisher", ""),
                )
                per_leg[family.name][key] = sample.value
            elif family.name == DOWNLINK:
                key2 = (sample.labels.get("room", ""), sample.labels.get("subscriber", ""))
                out.downlink_bps[key2] = sample.value
    return out


async def scrape(http: aiohttp.ClientSession, url: str) -> Scrape:
    async with http.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        resp.raise_for_status()
        return parse(await resp.text())


def merge(scrapes: list[Scrape]) -> Scrape:
    """Several nodes' scrapes as one: a room's histogram lives on its node only; the
    counters add up."""
    out = Scrape()
    for one in scrapes:
        for room, h in one.latency.items():
            out.latency[room] = out.latency[room].plus(h) if room in out.latency else h
        for name, value in one.counters.items():
            out.counters[name] = out.counters.get(name, 0.0) + value
        for layer, n in one.legs_by_layer.items():
            out.legs_by_layer[layer] = out.legs_by_layer.get(layer, 0.0) + n
        out.leg_layer.update(one.leg_layer)
        out.leg_wanted.update(one.leg_wanted)
        out.leg_packets.update(one.leg_packets)
        out.downlink_bps.update(one.downlink_bps)
        for key, h in one.hists.items():
            # several workers: their stretches together (each is one loop's)
            out.hists[key] = out.hists[key].plus(h) if key in out.hists else h
    return out
