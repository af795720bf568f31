"""Prometheus metrics of the control plane, in a registry owned by the app (not global).

The media plane adds its own collectors (forwarded packets/bytes, forwarding latency) to
the same registry through ``Metrics.register``; ``/metrics`` renders the lot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# s of rendering /metrics at a go before the event loop polls its sockets again: with a
# few hundred video legs one render took 12-35 ms (server.loopwatch's trace at 30-50
# rooms × 3), and the media waited for it.
RENDER_BUDGET = 0.002
# The label values of roundtable_limit_hits_total (docs/protocol.md, "Metrics").
LIMITS = (
    "handshakes_per_address",  # new Engine.IO sessions per address and minute: HTTP 429
    "joins_per_address",  # Socket.IO connects per address and minute
    "events_per_connection",  # events per second on one connection
    "unauthenticated_per_address",  # sockets without a namespace CONNECT: HTTP 401
    "unauthenticated_timeout",  # such a socket closed after its seconds ran out
    "undecodable_event",  # a packet that does not decode or nests too deeply
)


class _One:
    """One metric family as a registry, for ``generate_latest``."""

    def __init__(self, family: Metric) -> None:
        self._family = family

    def collect(self) -> Iterable[Metric]:
        return [self._family]


class _LiveCollector(Collector):
    """Reads room and participant counts at scrape time instead of mirroring them."""

    def __init__(self, snapshot: Callable[[], tuple[int, dict[str, int]]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        rooms, by_state = self._snapshot()
        g = GaugeMetricFamily(
            "roundtable_rooms", "Rooms with at least one participant on this node."
        )
        g.add_metric([], rooms)
        yield g
        p = GaugeMetricFamily(
            "roundtable_participants", "Participants on this node by state.", labels=["state"]
        )
        for state in ("waiting", "admitted", "connected"):
            p.add_metric([state], by_state.get(state, 0))
        yield p


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # CPU seconds and resident memory of this process: what an operator's dashboard,
        # and roundtable-bench against a remote --url, read the server's load from.
        ProcessCollector(registry=self.registry)
        self.refused_joins = Counter(
            "roundtable_refused_joins",
            "Joins and API calls refused, by reason (the error code).",
            ["reason"],
            registry=self.registry,
        )
        self.rooms_created = Counter(
            "roundtable_rooms_created", "Sessions created through the API.", registry=self.registry
        )
        self.event_errors = Counter(
            "roundtable_event_errors",
            "Socket.IO events refused, by error code.",
            ["reason"],
            registry=self.registry,
        )
        self.limit_hits = Counter(
            "roundtable_limit_hits",
            "Protective limits that refused or closed something, by limit.",
            ["limit"],
            registry=self.registry,
        )
        for limit in LIMITS:
            self.limit_hits.labels(limit=limit)
        self.resumes = Counter(
            "roundtable_resumes",
            "Connects that came back to the same participant: resumed after a network cut "
            "(same media, ICE restart) or replacing its older connection (a reload).",
            registry=self.registry,
        )

        # Pre-create the usual reasons so a scrape shows 0 rather than nothing.
        for reason in (
            "token_missing",
            "token_malformed",
            "token_bad_signature",
            "token_bad_algorithm",
            "token_expired",
            "token_not_yet_valid",
            "token_claims_missing",
            "token_wrong_audience",
            "token_wrong_issuer",
            "token_wrong_room",
            "token_revoked",
            "invite_used",
            "room_closed",
            "room_full",
            "too_many_requests",
            "api_key_missing",
            "api_key_invalid",
        ):
            self.refused_joins.labels(reason=reason)

    def watch(self, snapshot: Callable[[], tuple[int, dict[str, int]]]) -> None:
        self.registry.register(_LiveCollector(snapshot))

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def refused(self, reason: str) -> None:
        self.refused_joins.labels(reason=reason).inc()

    def limit_hit(self, limit: str) -> None:
        self.limit_hits.labels(limit=limit).inc()

    def render(self) -> bytes:
        return b"".join(_texts(self.registry.collect()))

    async def render_async(
        self, budget: float = RENDER_BUDGET, clock: Callable[[], float] = time.perf_counter
    ) -> bytes:
        """:meth:`render`'s bytes, but the loop runs its other work (media) whenever a
        go took ``budget`` seconds: between metric families, or parts of one large family
        (server.metrics), which the registry's collectors build one at a time."""
        parts = []
        deadline = clock() + budget
        for text in _texts(self.registry.collect()):
            parts.append(text)
            if clock() >= deadline:
                await asyncio.sleep(0)
                deadline = clock() + budget
        return b"".join(parts)


def _texts(families: Iterable[Metric]) -> Iterator[bytes]:
    """Each family's exposition text. A collector may yield one large family as
    consecutive parts of the same name (server.metrics): the parts after the first lose
    their ``# HELP``/``# TYPE`` lines, so the text is that of the family in one piece."""
    previous = None
    for family in families:
        text = generate_latest(_One(family))
        if family.name == previous:
            text = b"".join(
                line for line in text.splitlines(keepends=True) if not line.startswith(b"# ")
            )
        previous = family.name
        yield text
