"""The event loop's busy stretches and GC pauses (server/loopwatch.py), as the bench
reads them, and the GC policy that keeps full collections short (server/gcpolicy.py)."""

from __future__ import annotations

import asyncio
import gc
import signal
import weakref

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bench.report import _gc, _loop_stalls
from bench.runner import RawRun
from bench.scrape import parse
from server import gcpolicy, loopwatch


async def test_a_long_callback_is_one_stretch_the_bench_counts(monkeypatch) -> None:
    """The time from one poll of the sockets to the next is what a datagram may wait:
    a callback that holds the loop 12 ms (of the test's clock) is one stretch > 10 ms.
    Of it, 4 ms were the server's own CPU time (the OS ran something else for 8 ms): by
    own CPU time it is no stall over 5 ms."""
    now, cpu = [0.0], [0.0]
    monkeypatch.setattr(loopwatch, "_clock", lambda: now[0])
    monkeypatch.setattr(loopwatch, "_cpu_clock", lambda: cpu[0])
    loop = asyncio.get_running_loop()
    registry = CollectorRegistry()
    watch = loopwatch.install(loop, registry)
    try:
        assert watch.selector_wrapped
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        before = parse(generate_latest(registry).decode())

        def busy(ms: float, own_ms: float) -> None:
            now[0] += ms / 1000
            cpu[0] += own_ms / 1000

        loop.call_soon(busy, 12, 4)
        await asyncio.sleep(0.01)
        loop.call_soon(busy, 3, 3)
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
    assert (stalls["cpu_over_5ms"], stalls["cpu_over_10ms"]) == (0, 0)
    assert stalls["cpu_max_ms"] == 5.0  # the 4 ms of own CPU time: ≤ 5 ms
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


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


async def test_full_collections_examine_only_what_survived_since_the_last() -> None:
    """What the server held at start, and what survived a full collection, is frozen:
    the next full collection does not examine (nor free) it. Without the policy the
    cycle below is freed by the first full collection."""
    loop = asyncio.get_running_loop()
    policy = gcpolicy.GcPolicy(loop, thaw_growth=1e9, freeze_every=0)  # never thaws here
    held = [cycle()]  # a cycle alive (referenced) when the server starts
    keep = held[0]()
    policy.install()
    try:
        del keep
        gc.collect()
        await asyncio.sleep(0)
        assert held[0]() is not None  # frozen: not examined, so not freed
        # made after the start: examined and freed by the next full collection
        young = cycle()
        gc.collect()
        assert young() is None
        # a cycle that survives one full collection is frozen after it
        late = cycle()
        keep = late()
        gc.collect()
        await asyncio.sleep(0)
        assert policy.full >= 2 and policy.thaws == 0
        del keep
        gc.collect()
        await asyncio.sleep(0)
        assert late() is not None
    finally:
        policy.uninstall()
    gc.collect()
    assert held[0]() is None and late() is None


@pytest.mark.parametrize("freeze_every", [0.0, 0.1])
async def test_frozen_cycles_are_freed_once_the_frozen_heap_has_grown(freeze_every) -> None:
    """What is frozen and becomes cyclic garbage (a participant who left) is freed by
    the full collection after the frozen heap grew past ``thaw_growth`` times its last
    base: the leak is bounded. Without the young freeze that is the next full
    collection; with it, one run at once (the timer would freeze everything again
    before the next came)."""
    loop = asyncio.get_running_loop()
    policy = gcpolicy.GcPolicy(loop, thaw_growth=1.0001, freeze_every=freeze_every)
    leaked = cycle()
    keep = leaked()
    policy.install()
    try:
        del keep
        grown = [[] for _ in range(1000)]  # the frozen heap grows at the next freeze
        gc.collect()  # survivors frozen; more than the base: thawed
        await asyncio.sleep(0)
        assert policy.thaws == 1
        if not freeze_every:
            assert leaked() is not None  # not yet examined
            gc.collect()  # the whole heap: the frozen cycle is freed
            await asyncio.sleep(0)
        assert leaked() is None
        await asyncio.sleep(0)
        assert gc.get_freeze_count() > 0  # and its survivors frozen again
        assert policy.thaws == 1
        del grown
    finally:
        policy.uninstall()


async def test_frozen_cycles_are_freed_at_the_latest_thaw_after_seconds() -> None:
    """A heap that does not grow (participants leave as others join) still has its
    frozen garbage freed: the first full collection ``thaw_after`` seconds after the
    last whole-heap one thaws, and the next examines everything."""
    loop = asyncio.get_running_loop()
    now = [0.0]
    policy = gcpolicy.GcPolicy(
        loop, thaw_growth=1e9, thaw_after=300, clock=lambda: now[0], freeze_every=0
    )
    leaked = cycle()
    keep = leaked()
    policy.install()
    try:
        del keep
        gc.collect()
        await asyncio.sleep(0)
        assert policy.thaws == 0 and leaked() is not None  # 0 s: frozen, kept
        now[0] = 301.0
        gc.collect()  # the first full collection after 300 s: thawed
        await asyncio.sleep(0)
        assert policy.thaws == 1
        gc.collect()  # the whole heap
        await asyncio.sleep(0)
        assert leaked() is None
        # the clock starts again from that whole-heap collection
        gc.collect()
        await asyncio.sleep(0)
        assert policy.thaws == 1
    finally:
        policy.uninstall()


async def test_uninstall_undoes_the_trace(monkeypatch, tmp_path) -> None:
    from asyncio import events

    from sfu import timers

    run = events.Handle._run
    monkeypatch.setenv("ROUNDTABLE_LOOP_TRACE", str(tmp_path / "trace"))
    loop = asyncio.get_running_loop()
    watch = loopwatch.install(loop, CollectorRegistry())
    assert events.Handle._run is not run and timers.Wheel.trace is not None
    watch.uninstall(loop)
    assert events.Handle._run is run and timers.Wheel.trace is None
    assert not loop.remove_signal_handler(signal.SIGUSR1)  # none left


async def test_the_timer_freezes_young_objects_and_thaws_on_its_own() -> None:
    """Every ``freeze_every`` seconds the young objects are frozen (a young collection
    then has nothing of before to examine, nor to free); the thaw rule is checked on the
    same timer, and when due it runs the whole-heap collection itself - full collections
    no longer come by themselves once young ones are rare."""
    loop = asyncio.get_running_loop()
    now = [0.0]
    policy = gcpolicy.GcPolicy(
        loop,
        thaw_growth=1e9,
        thaw_after=300,
        clock=lambda: now[0],
        freeze_every=0.01,
    )
    policy.install()
    try:
        leaked = cycle()  # young garbage made after the start
        await asyncio.sleep(0.05)
        assert policy.freezes >= 1
        gc.collect(0)
        gc.collect(1)
        assert leaked() is not None  # frozen by the timer: examined by neither
        before = policy.full
        now[0] = 301.0  # the thaw is due at the next tick
        await asyncio.sleep(0.2)  # ~20 ticks
        assert leaked() is None  # freed by the whole-heap collection the timer ran
        assert policy.thaws == 1 and policy.full > before
        await asyncio.sleep(0.05)
        assert policy.thaws == 1  # and the clock starts again from it
    finally:
        policy.uninstall()
    assert policy._timer is None


async def test_the_timer_keeps_the_growth_rule_too() -> None:
    """Full collections rarely come by themselves once the young objects are frozen:
    the timer reads the heap's size and, grown past ``thaw_growth``, frees what leaked
    (a node's RSS grew by 165 MB per 210 departed participants without it)."""
    loop = asyncio.get_running_loop()
    policy = gcpolicy.GcPolicy(loop, thaw_growth=1.0001, freeze_every=0.01, check_every=0.02)
    policy.install()
    try:
        leaked = cycle()
        grown = [[] for _ in range(2000)]  # the heap grows past the base
        await asyncio.sleep(0.3)  # no collection asked for here
        assert leaked() is None
        assert policy.thaws >= 1
        del grown
    finally:
        policy.uninstall()


async def test_a_thaw_whose_collection_did_not_run_is_tried_again(monkeypatch) -> None:
    """gc.collect() does nothing while another thread's collection is under way: that
    is no whole-heap collection, so no new base is taken and the next tick tries again."""
    loop = asyncio.get_running_loop()
    policy = gcpolicy.GcPolicy(loop, thaw_growth=1e9, freeze_every=0)
    policy.install()
    try:
        monkeypatch.setattr(gc, "collect", lambda *args: 0)
        policy._whole_heap()
        assert policy.thaws == 0 and not policy._thawed
        assert gc.get_freeze_count() > 0  # frozen again, as before the attempt
        monkeypatch.undo()
        policy._whole_heap()
        assert policy.thaws == 1 and policy._thawed
        await asyncio.sleep(0)
        assert not policy._thawed  # _after_full took the new base
    finally:
        policy.uninstall()


async def test_the_young_freeze_can_be_turned_off(monkeypatch) -> None:
    monkeypatch.setenv("ROUNDTABLE_GC_FREEZE_EVERY", "0")
    policy = gcpolicy.install(asyncio.get_running_loop())
    try:
        assert policy.freeze_every == 0 and policy._timer is None
        leaked = cycle()
        gc.collect(0)
        assert leaked() is None  # CPython's young collections as before
    finally:
        policy.uninstall()
