"""How long the event loop is busy between two looks at its sockets, and what GC takes.

A datagram that arrives while the loop runs callbacks waits in the socket until the loop
next polls (``select``): the SFU latency measured from the kernel's receive time counts
that wait. So the figure that limits latency is not the loop's average load but its
longest *busy stretches*: the time from one ``select`` returning to the next being
called (every ready callback and timer of that iteration). :class:`LoopWatch` wraps the
selector of asyncio's loop to time each stretch (two clock reads per iteration) and
``gc.callbacks`` to time every collection by generation; both are Prometheus histograms
on ``/metrics`` (``roundtable_loop_busy_seconds``, ``roundtable_gc_seconds``), which the
bench turns into counts of stalls ≥ 5/10/20 ms and the longest.

uvloop's selector is not a Python object: there only the GC histogram is kept.

``ROUNDTABLE_LOOP_TRACE=FILE`` (diagnosis, not for production: it times every callback)
also writes one line per stretch ≥ :data:`TRACE_MS` to FILE: its length, the GC time in
it, and the callbacks and timer-wheel jobs that took ≥ 0.2 ms in it, by name.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Upper bounds, seconds: fine around the 10 ms SFU latency goal.
BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    float("inf"),
)
TRACE_MS = 5.0

_clock = time.perf_counter
_cpu_clock = time.thread_time  # this thread's CPU time: a stretch less what the OS took


class Hist:
    """Counts per bucket of :data:`BUCKETS` (not cumulative) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1  # the first bound ≥ seconds
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        out, run = [], 0
        for bound, n in zip(BUCKETS, self.counts, strict=True):
            run += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), run))
        return out


class _TimedSelector:
    """The loop's selector, with the time between two ``select`` calls recorded."""

    def __init__(self, inner: Any, watch: LoopWatch) -> None:
        self._inner = inner
        self._watch = watch

    def select(self, timeout: float | None = None) -> Any:
        watch = self._watch
        back = watch._back
        if back is not None:
            watch._stretch(_clock() - back, _cpu_clock() - watch._back_cpu)
        events = self._inner.select(timeout)
        watch._back = _clock()
        watch._back_cpu = _cpu_clock()
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class LoopWatch(Collector):
    def __init__(self) -> None:
        self.busy = Hist()
        self.busy_cpu = Hist()  # the same stretches' own CPU time
        self.gc = [Hist(), Hist(), Hist()]  # by generation
        self.gc_in_stretch = 0.0  # GC seconds since the stretch began
        self._back: float | None = None
        self._back_cpu = 0.0
        self._gc_start = 0.0
        self._trace: Any = None
        self._calls: list[tuple[float, str]] = []
        self._original_run: Any = None
        self.selector_wrapped = False

    # -- installing -------------------------------------------------------------------
    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        gc.callbacks.append(self._on_gc)
        selector = getattr(loop, "_selector", None)
        if selector is not None and callable(getattr(selector, "select", None)):
            loop._selector = _TimedSelector(selector, self)  # type: ignore[attr-defined]
            self.selector_wrapped = True
        path = os.environ.get("ROUNDTABLE_LOOP_TRACE")
        if path and self.selector_wrapped:
            self._start_trace(path)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._trace is not None:
            from asyncio import events

            from sfu import timers

            events.Handle._run = self._original_run  # type: ignore[method-assign]
            timers.Wheel.trace = None
            loop.remove_signal_handler(signal.SIGUSR1)
            self._trace.close()
            self._trace = None
        selector = getattr(loop, "_selector", None)
        if isinstance(selector, _TimedSelector):
            loop._selector = selector._inner  # type: ignore[attr-defined]
        self.selector_wrapped = False

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = _clock()
            return
        took = _clock() - self._gc_start
        self.gc_in_stretch += took
        self.gc[min(int(info.get("generation", 2)), 2)].add(took)
        if self._trace is not None:
            self._calls.append(
                (took, f"gc gen{info.get('generation')} collected={info.get('collected')}")
            )

    def _stretch(self, seconds: float, cpu: float) -> None:
        self.busy.add(seconds)
        self.busy_cpu.add(cpu)
        if self._trace is not None and seconds * 1e3 >= TRACE_MS:
            self._write_trace(seconds, cpu)
        self.gc_in_stretch = 0.0
        if self._calls:
            self._calls = []

    # -- diagnosis --------------------------------------------------------------------
    def _start_trace(self, path: str) -> None:
        from asyncio import events

        from sfu import timers

        self._trace = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as us
        calls = self._calls_append

        original_run = self._original_run = events.Handle._run

        def timed_run(handle: Any) -> None:
            t0 = _clock()
            original_run(handle)
            took = _clock() - t0
            if took >= 0.0002:
                calls(took, _name(handle._callback))

        events.Handle._run = timed_run  # type: ignore[method-assign]
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._census)
        timers.Wheel.trace = calls  # type: ignore[attr-defined]

    def _census(self) -> None:
        """SIGUSR1 (trace only): the GC-tracked objects by type, most numerous first."""
        counts: dict[str, int] = {}
        for obj in gc.get_objects():
            name = type(obj).__qualname__
            counts[name] = counts.get(name, 0) + 1
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:40]
        self._trace.write(
            f"{time.time():.3f} census {sum(counts.values())} tracked, frozen "
            f"{gc.get_freeze_count()}, by gen {gc.get_count()}: "
            + ", ".join(f"{k} {v}" for k, v in top)
            + "\n"
        )

    def _calls_append(self, took: float, name: str) -> None:
        self._calls.append((took, name))

    def _write_trace(self, seconds: float, cpu: float) -> None:
        by_name: dict[str, list[float]] = {}
        for took, name in self._calls:
            entry = by_name.setdefault(name, [0, 0.0])
            entry[0] += 1
            entry[1] += took
        top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:12]
        parts = " | ".join(f"{name} x{int(n)} {t * 1e3:.2f}ms" for name, (n, t) in top)
        self._trace.write(
            f"{time.time():.3f} stretch {seconds * 1e3:.2f}ms cpu "
            f"{cpu * 1e3:.2f}ms gc {self.gc_in_stretch * 1e3:.2f}ms"
            f" :: {parts}\n"
        )

    # -- Prometheus -------------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        if self.selector_wrapped:
            h = HistogramMetricFamily(
                "roundtable_loop_busy_seconds",
                "Event-loop stretches from one poll of the sockets to the next: how long a "
                "datagram may wait in its socket.",
            )
            h.add_metric([], self.busy.cumulative(), self.busy.total)
            yield h
            c = HistogramMetricFamily(
                "roundtable_loop_busy_cpu_seconds",
                "The same stretches' own CPU time (the thread's): without the time the OS "
                "gave other processes meanwhile.",
            )
            c.add_metric([], self.busy_cpu.cumulative(), self.busy_cpu.total)
            yield c
        g = HistogramMetricFamily(
            "roundtable_gc_seconds",
            "Python garbage collections by generation, and how long each took.",
            labels=["generation"],
        )
        for gen, hist in enumerate(self.gc):
            g.add_metric([str(gen)], hist.cumulative(), hist.total)
        yield g


def _name(callback: Any) -> str:
    func = getattr(callback, "func", callback)  # functools.partial
    self = getattr(func, "__self__", None)
    if self is not None and type(self).__name__ == "Task":
        coro = self.get_coro()
        return f"task {getattr(coro, '__qualname__', type(coro).__name__)}"
    return getattr(func, "__qualname__", type(func).__name__)


def install(loop: asyncio.AbstractEventLoop, registry: Any) -> LoopWatch:
    watch = LoopWatch()
    watch.install(loop)
    registry.register(watch)
    return watch


__all__ = ["BUCKETS", "Hist", "LoopWatch", "install"]
