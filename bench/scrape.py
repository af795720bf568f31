"""Reading the server's ``/metrics``: the per-room latency histogram and a few counters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

LATENCY = "roundtable_forwarding_latency_seconds"


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


def parse(text: str) -> Scrape:
    out = Scrape()
    for family in text_string_to_metric_families(text):
        if family.name == LATENCY:
            for sample in family.samples:
                room = sample.labels.get("room", "")
                h = out.latency.setdefault(room, Histogram())
                if sample.name.endswith("_bucket"):
                    h.buckets[float(sample.labels["le"])] = sample.value
                elif sample.name.endswith("_count"):
                    h.count = sample.value
                elif sample.name.endswith("_sum"):
                    h.total = sample.value
            continue
        for sample in family.samples:
            if not sample.labels:
                out.counters[sample.name] = sample.value
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
    return out
