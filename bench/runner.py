"""Coordinating a run: the local server, the generator processes, scrapes and CPU samples."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import queue as queue_mod
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from tqdm import tqdm

from . import scrape as scrape_mod
from .generator import Scenario, process_main

LISTENING = "listening on "
REPO_ROOT = Path(__file__).resolve().parent.parent


def _open_log(path: Path) -> Any:
    return open(path, "wb")  # noqa: SIM115 - handed to the child, closed by the caller


@dataclass
class LocalServer:
    """A server process this bench started (``roundtable serve`` or the baseline relay)."""

    kind: str
    proc: asyncio.subprocess.Process
    url: str
    api_key: str
    secret: str
    workdir: Path
    stderr_path: Path
    _drain: asyncio.Task[None] | None = None
    # Every node's URL (``serve --workers N``: one per worker) and a private Redis.
    urls: list[str] = field(default_factory=list)
    redis: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        """Where run_load scrapes ``/metrics``: every node, comma-separated."""
        return ",".join(self.urls) if self.urls else self.url

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            # wait() does not raise the drain's own CancelledError, so a cancel of the
            # bench itself (SIGTERM) arriving meanwhile is not swallowed here.
            await asyncio.wait([self._drain])
            if not self._drain.cancelled():
                self._drain.exception()  # retrieved: a failed drain is not the bench's
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            await asyncio.get_running_loop().run_in_executor(None, self.redis.wait, 10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def cpu_plan() -> tuple[int | None, int | None]:
    """(server core, generator core): split the first two CPUs we may run on, if two."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:
        allowed = list(range(os.cpu_count() or 1))
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[1]


def free_tcp_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback TCP ports (``serve --workers``)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(first, first + count):
                    probe = stack.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server for a multi-worker server (its nodes share state there)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("--server-workers above 1 needs redis-server (make system-deps)")
    port = free_tcp_ports(1)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def start_local(
    kind: str,
    media_host: str,
    max_participants: int,
    server_cpu: int | None,
    api_key: str | None = None,
    secret: str | None = None,
    extra_env: dict[str, str] | None = None,
    workers: int = 1,
    host: str = "127.0.0.1",
) -> LocalServer:
    """Start ``roundtable serve`` (kind ``sfu``) or ``bench.baseline`` on a free loopback port;
    ``workers`` above 1: ``serve --workers`` with a private redis-server."""
    workdir = Path(tempfile.mkdtemp(prefix=f"roundtable-bench-{kind}-"))
    redis = None
    port = 0
    if workers > 1:
        redis, redis_url = start_redis(workdir)
        port = free_tcp_ports(workers)
        extra_env = {
            **(extra_env or {}),
            "ROUNDTABLE_REDIS_URL": redis_url,
            "ROUNDTABLE_DRAIN_TIMEOUT": "0",
            # Consecutive media ports from a free one (workers use MEDIA_PORT+i).
            "ROUNDTABLE_MEDIA_PORT": str(free_udp_port(media_host)),
        }
    secret = secret or secrets.token_urlsafe(48)
    api_key = api_key or secrets.token_urlsafe(24)
    env = dict(os.environ)
    env.update(
        {
            "ROUNDTABLE_SECRET": secret,
            "ROUNDTABLE_API_KEY": api_key,
            "ROUNDTABLE_STATE_DIR": str(workdir / "state"),
            "ROUNDTABLE_MEDIA_HOST": media_host,
            # One shared media port as deployed, but its own unless the operator chose
            # one: a `make run` on this machine keeps the default.
            "ROUNDTABLE_MEDIA_PORT": os.environ.get("ROUNDTABLE_MEDIA_PORT")
            or str(free_udp_port(media_host)),
            # One generator host makes every join: lift the per-address join limit.
            "ROUNDTABLE_JOINS_PER_IP_PER_MINUTE": "1000000",
            "ROUNDTABLE_MAX_PARTICIPANTS": str(max(12, max_participants)),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra_env or {})
    if kind == "sfu":
        module = ["server.cli", "serve", "--host", host, "--port", str(port)]
        module += ["--media-host", media_host, "--log-level", "WARNING"]
        if workers > 1:
            module += ["--workers", str(workers)]
    else:
        module = ["bench.baseline", "--host", "127.0.0.1", "--port", "0"]
    cmd = [sys.executable, "-m", *module]
    if server_cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(server_cpu), *cmd]
    stderr_path = workdir / "stderr.log"
    err = _open_log(stderr_path)
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=str(REPO_ROOT),
        )
    finally:
        err.close()
    url = None
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = await asyncio.wait_for(
                proc.stdout.readline(), max(0.1, deadline - time.monotonic())
            )
        except TimeoutError:
            break
        if not line:
            break
        text = line.decode(errors="replace").strip()
        if LISTENING in text:
            url = text.split(LISTENING, 1)[1].split()[0]
            break
    server = LocalServer(kind, proc, url or "", api_key, secret, workdir, stderr_path)
    server.redis = redis
    if workers > 1 and url is not None:
        server.url = f"http://127.0.0.1:{port}"
        server.urls = [f"http://127.0.0.1:{port + i}" for i in range(workers)]
    if url is None:
        tail = server.stderr_tail()
        await server.stop()
        raise RuntimeError(f"{kind} server did not start:\n{tail}")

    async def drain() -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    server._drain = asyncio.ensure_future(drain())
    return server


@dataclass
class RawRun:
    """What one load run collected, before any statistics."""

    label: str
    rooms: list[dict[str, Any]] = field(default_factory=list)
    before: scrape_mod.Scrape | None = None
    after: scrape_mod.Scrape | None = None
    window_s: float = 0.0
    cpu_series: list[tuple[float, float, float]] = field(default_factory=list)  # t, %, RSS MB
    cpu_pct: float | None = None
    rss_mb: float | None = None
    # The server's RSS before any participant joined it (measured once per server): a
    # server that ran an earlier step keeps that step's heap, so its RSS at this run's
    # start is no idle figure (a capacity search read 0.01 MB per participant off it).
    rss_idle_mb: float | None = None
    generator_cpu_pct: float | None = None  # all generator processes, in % of one core
    # % of the window the server's event loop was ready to run but waited for its core
    # (other processes on it): what SFU latency then measures is the machine's. With
    # ``serve --workers``: the largest of the workers' shares
    server_wait_pct: float | None = None
    ready: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    joined: int = 0
    # --link: every 0.5 s of the window, (t, leg layers by (room, subscriber, publisher),
    # downlink estimates by (room, subscriber)) from /metrics; what the shaping dropped
    leg_series: list[tuple[float, dict[Any, float], dict[Any, float]]] = field(default_factory=list)
    legs_by_layer: dict[str, float] = field(default_factory=dict)  # at the window's end
    link_lifted_at: float | None = None
    link_shaped_at: float | None = None  # --link-from: when the shaping went on
    link_drops: list[dict[str, int]] = field(default_factory=list)
    # per shaped link: what shapes it (tbf, netem or the user-space delay line) and its
    # idle round trip measured at setup
    link_info: list[dict[str, Any]] = field(default_factory=list)


class CpuSampler:
    """The server's CPU % and RSS: psutil on a local pid, else ``process_*`` from /metrics."""

    def __init__(self, pid: int | None) -> None:
        self.proc = psutil.Process(pid) if pid else None
        # ``serve --workers``: the workers are the parent's children; count them all.
        self.tree = [self.proc, *self.proc.children(recursive=True)] if self.proc else []
        for p in self.tree:
            with contextlib.suppress(psutil.Error):
                p.cpu_percent(None)

    def times(self) -> float | None:
        if self.proc is None:
            return None
        return _cpu_seconds(self.tree)

    def waited(self) -> dict[int, float] | None:
        """Per server process (``serve --workers``: each worker), the seconds its main
        thread -- the event loop -- spent runnable but waiting for a CPU so far
        (``/proc/PID/schedstat``, field 2), or None where the kernel does not keep it."""
        if self.proc is None:
            return None
        out = {}
        for p in self.tree:
            try:
                with open(f"/proc/{p.pid}/schedstat") as f:
                    out[p.pid] = int(f.read().split()[1]) / 1e9
            except (OSError, IndexError, ValueError):
                return None
        return out

    def sample(self) -> tuple[float, float] | None:
        if self.proc is None:
            return None
        cpu = rss = 0.0
        for p in self.tree:
            with contextlib.suppress(psutil.Error):
                cpu += p.cpu_percent(None)
                rss += p.memory_info().rss / 2**20
        return cpu, rss


def server_rss_mb(pid: int | None) -> float | None:
    """The RSS of a local server (and its workers) now, in MB; None without a pid."""
    s = CpuSampler(pid).sample() if pid else None
    return s[1] if s is not None else None


async def run_load(
    label: str,
    url: str,
    scenario: Scenario,
    rooms: int,
    workers: int,
    duration: float,
    server_pid: int | None,
    generator_cpu: int | None,
    progress: bool = True,
    warmup: float = 2.0,
    links: Any = None,
    link_until: float | None = None,
    link_from: float | None = None,
    rss_idle_mb: float | None = None,
) -> RawRun:
    """Join ``rooms`` rooms from ``workers`` processes, measure ``duration`` seconds, leave.
    ``links`` (bench.link.Links): sample the shaped subscribers' layers and estimates
    from /metrics through the window, and lift the shaping ``link_until`` s into it.
    ``rss_idle_mb``: the server's RSS before any participant ever joined it
    (:func:`server_rss_mb` right after it started); None: the RSS at this run's start."""
    raw = RawRun(label)
    if links is not None and links.lifted and link_from is None:
        links.shape()  # a previous run of this invocation lifted it
    if links is not None and link_from is not None and not links.lifted:
        links.lift()  # shaped from link_from s into the window on
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    start, stop = ctx.Event(), ctx.Event()
    workers = max(1, min(workers, rooms))
    shares = [list(range(w, rooms, workers)) for w in range(workers)]
    procs = [
        ctx.Process(
            target=process_main,
            args=(scenario, share, q, start, stop, generator_cpu),
            name=f"bench-generator-{w}",
            daemon=True,
        )
        for w, share in enumerate(shares)
    ]
    for p in procs:
        p.start()
    total = rooms * scenario.participants
    sampler = CpuSampler(server_pid)
    idle = sampler.sample()
    raw.rss_idle_mb = rss_idle_mb if rss_idle_mb is not None else idle[1] if idle else None
    results: list[list[dict[str, Any]]] = []
    http = aiohttp.ClientSession()
    try:
        with tqdm(total=total, desc=f"{label}: joining", unit="peer", disable=not progress) as bar:
            budget = (
                30
                + rooms * scenario.join_pacing * scenario.participants / workers
                + scenario.partner_delay
                + scenario.join_timeout
            )
            deadline = time.monotonic() + budget
            while len(raw.ready) + len(raw.errors) < workers and time.monotonic() < deadline:
                msg = await _next(q)
                if msg is None:
                    if not any(p.is_alive() for p in procs):
                        raw.errors.append("generator processes exited early")
                        break
                    continue
                kind, data = msg
                if kind == "joined":
                    raw.joined += data
                    bar.update(1)
                elif kind == "ready":
                    raw.ready.append(data)
                elif kind == "error":
                    raw.errors.append(data)
            have = sum(r["pairs"] for r in raw.ready)
            want = sum(r["pairs_expected"] for r in raw.ready)
            bar.set_postfix_str(f"media flowing {have}/{want}")
        await asyncio.sleep(warmup)
        raw.before = await _try_scrape(http, url)
        gens = [psutil.Process(p.pid) for p in procs if p.pid]
        g_cpu0 = _cpu_seconds(gens)
        t_cpu0, t0 = sampler.times(), time.monotonic()
        wait0 = sampler.waited()
        start.set()
        with tqdm(
            total=round(duration), desc=f"{label}: measuring", unit="s", disable=not progress
        ) as bar:
            shown = 0
            while (elapsed := time.monotonic() - t0) < duration:
                await asyncio.sleep(min(0.5, duration - elapsed))
                if links is not None:
                    t = round(time.monotonic() - t0, 2)
                    if link_from is not None and raw.link_shaped_at is None and t >= link_from:
                        links.shape()
                        raw.link_shaped_at = t
                    if link_until is not None and not links.lifted and t >= link_until:
                        raw.link_drops = [links.dropped(sh) for sh in links.shaped]
                        links.lift()
                        raw.link_lifted_at = t
                    now_scrape = await _try_scrape(http, url)
                    if now_scrape is not None:
                        raw.leg_series.append(
                            (t, dict(now_scrape.leg_layer), dict(now_scrape.downlink_bps))
                        )
                s = sampler.sample()
                if s is not None:
                    raw.cpu_series.append((round(time.monotonic() - t0, 2), s[0], s[1]))
                    bar.set_postfix_str(f"server CPU {s[0]:.0f}%")
                now = min(round(time.monotonic() - t0), round(duration))
                bar.update(now - shown)
                shown = now
        # The video legs as the window closes: after stop the generators leave at
        # once, and a slow /metrics could no longer show them.
        last = await _try_scrape(http, url)
        raw.legs_by_layer = dict(last.legs_by_layer) if last is not None else {}
        stop.set()
        raw.window_s = time.monotonic() - t0
        t_cpu1 = sampler.times()
        wait1 = sampler.waited()
        if wait0 and wait1:
            # the most delayed server process (one node's loop), not the sum over workers
            raw.server_wait_pct = max(
                100.0 * (wait1[pid] - wait0[pid]) / raw.window_s for pid in wait0 if pid in wait1
            )
        if links is not None and not raw.link_drops:
            raw.link_drops = [links.dropped(sh) for sh in links.shaped]
        if links is not None:
            raw.link_info = [
                {"shaping": links.describe(), "delay": links.mechanism, "rtt_ms": sh.rtt_ms}
                for sh in links.shaped
            ]
        raw.generator_cpu_pct = 100.0 * (_cpu_seconds(gens) - g_cpu0) / raw.window_s
        raw.after = await _try_scrape(http, url)
        if t_cpu0 is not None and t_cpu1 is not None:
            raw.cpu_pct = 100.0 * (t_cpu1 - t_cpu0) / raw.window_s
            raw.rss_mb = max((s[2] for s in raw.cpu_series), default=None)
        elif raw.before is not None and raw.after is not None:
            c0 = raw.before.counters.get("process_cpu_seconds_total")
            c1 = raw.after.counters.get("process_cpu_seconds_total")
            if c0 is not None and c1 is not None:
                raw.cpu_pct = 100.0 * (c1 - c0) / raw.window_s
            rss = raw.after.counters.get("process_resident_memory_bytes")
            raw.rss_mb = rss / 2**20 if rss else None
        deadline = time.monotonic() + 60
        while len(results) + len(raw.errors) < workers and time.monotonic() < deadline:
            msg = await _next(q)
            if msg is None:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            kind, data = msg
            if kind == "result":
                results.append(data)
            elif kind == "error":
                raw.errors.append(data)
    finally:
        stop.set()
        start.set()
        await http.close()
        for p in procs:
            await asyncio.get_running_loop().run_in_executor(None, p.join, 40)
            if p.is_alive():
                p.terminate()
                p.join(5)
    for share in results:
        raw.rooms.extend(share)
    raw.rooms.sort(key=lambda r: r["index"])
    return raw


async def measure_floor(
    sizes: list[int],
    cpu: int | None,
    seconds: float = 2.0,
    fanout: float | None = None,
    reader_cpu: int | None = None,
) -> dict[str, Any] | None:
    """The Python-loop floor (:mod:`bench.floor`) on the server's core, in a process of
    its own; with ``fanout`` (the run's forwarded ÷ received packets) also the fair floor
    (``fair``: a live reader on ``reader_cpu``, one unprotect per fan-out). None if it
    could not run."""
    cmd = [sys.executable, "-m", "bench.floor", "--seconds", str(seconds)]
    cmd += ["--sizes", ",".join(str(s) for s in sizes)]
    if fanout:
        cmd += ["--fanout", f"{fanout:.3f}"]
        if reader_cpu is not None:
            cmd += ["--reader-cpu", str(reader_cpu)]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(REPO_ROOT)
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return None
    try:
        return json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


async def _next(q: Any) -> tuple[str, Any] | None:
    try:
        return q.get_nowait()
    except queue_mod.Empty:
        await asyncio.sleep(0.05)
        return None


async def _try_scrape(http: aiohttp.ClientSession, url: str) -> scrape_mod.Scrape | None:
    """``url``: one node, or several comma-separated (a cluster): their sum."""
    try:
        scrapes = [await scrape_mod.scrape(http, u) for u in url.split(",")]
    except Exception:
        return None
    return scrape_mod.merge(scrapes)
