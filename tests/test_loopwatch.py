"""The event loop's busy stretches and GC pauses (server/loopwatch.py), as the bench
reads them."""

from __future__ import annotations

import asyncio
import gc

from prometheus_client import CollectorRegistry, generate_latest

from bench.report import _gc, _loop_stalls
from bench.runner import RawRun
from bench.scrape import parse
from server import loopwatch


async def test_a_long_callback_is_one_stretch_the_bench_counts(monkeypatch) -> None:
    """The time from one poll of the sockets to the next is what a datagram may wait:
    a callback that holds the loop 12 ms (of the test's clock) is one stretch > 10 ms."""
    now = [0.0]
    monkeypatch.setattr(loopwatch, "_clock", lambda: now[0])
    loop = asyncio.get_running_loop()
    registry = CollectorRegistry()
    watch = loopwatch.install(loop, registry)
    try:
        assert watch.selector_wrapped
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        before = parse(generate_latest(registry).decode())

        def busy(ms: float) -> None:
            now[0] += ms / 1000

        loop.call_soon(busy, 12)
        await asyncio.sleep(0.01)
        loop.call_soon(busy, 3)
        await asyncio.sleep(0.01)
        after = parse(generate_latest(registry).decode())
    finally:
        watch.uninstall(loop)
    assert not isinstance(loop._selector, loopwatch._TimedSelector)
    raw = RawRun(label="t", before=before, after=after)
    stalls = _loop_stalls(raw, 1.0)
    assert stalls is not None
    assert (stalls["over_5ms"], stalls["over_10ms"], stalls["over_20ms"]) == (1, 1, 0)
    assert stalls["max_ms"] == 15.0  # the 12 ms stretch's bucket: ≤ 15 ms
    assert stalls["busy_pct"] == 1.5  # 15 ms of the 1 s window
    gcs = _gc(raw)
    assert gcs is not None and set(gcs) == {"gen0", "gen1", "gen2"}


async def test_gc_pauses_are_timed_by_generation() -> None:
    loop = asyncio.get_running_loop()
    registry = CollectorRegistry()
    watch = loopwatch.install(loop, registry)
    try:
        before = parse(generate_latest(registry).decode())
        gc.collect(1)
        gc.collect(2)
        gc.collect(2)
        after = parse(generate_latest(registry).decode())
    finally:
        watch.uninstall(loop)
    gcs = _gc(RawRun(label="t", before=before, after=after))
    assert gcs is not None
    assert gcs["gen1"]["count"] == 1 and gcs["gen2"]["count"] == 2
    assert gcs["gen2"]["total_ms"] > 0
