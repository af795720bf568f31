"""``--link``: chosen subscribers behind a shaped downlink, in network namespaces of their own.

Layout (inside the bench's own loopback-only namespace, ``unshare -n``)::

    bench namespace: the server on LINK_HOST (an address on lo), the other generators
        ├── veth rbo<k> 10.204.<k>.1/30 ── tc on this end: what flows to subscriber k
        │       └── namespace k (veth rbi<k> 10.204.<k>.2/30, default route back;
        │           nftables: random loss of what arrives)
        └── ...

Rate is a ``tc qdisc … tbf`` on the bench's end of each veth (everything the server
sends to that subscriber, media and signalling alike, like a home line's downlink).
Delay needs the ``netem`` qdisc; kernels without it (this development machine's) cannot
delay packets in the kernel — tbf's ``latency`` is a queue limit, not a delay — so the
bench refuses a DELAY there rather than fake one in user space. Loss is nftables'
``numgen random`` in the subscriber's namespace (or netem's where it exists). The
subscriber's uplink is not shaped.

Each namespace belongs to a ``sleep`` process started with ``unshare --net`` (nothing
is left in ``/run/netns``; it goes with that process, veth included). The generator
enters it from a thread of its own (``setns``), so that thread's sockets — ICE, DTLS,
the Socket.IO connection — live behind the shaped link (:class:`NetnsLoop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

LINK_HOST = "10.204.255.1"  # the server's address while subscribers sit behind links
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps)$", re.I)
_DELAY = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|us)$", re.I)
_LOSS = re.compile(r"^(\d+(?:\.\d+)?)%?$")
_BITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3, "mbps": 8e6}


class LinkError(RuntimeError):
    """--link cannot be set up here; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class LinkSpec:
    rate: str  # as tc takes it, e.g. "300kbit"
    rate_bps: float
    delay_ms: float | None = None
    loss_pct: float | None = None

    def __str__(self) -> str:
        parts = [self.rate]
        if self.delay_ms or self.loss_pct:
            parts.append(f"{self.delay_ms:g}ms" if self.delay_ms else "")
        if self.loss_pct:
            parts.append(f"{self.loss_pct:g}%")
        return ",".join(parts)


def parse_link(text: str) -> LinkSpec:
    """``RATE[,DELAY][,LOSS]``: ``300kbit``, ``300kbit,100ms``, ``300kbit,,2%``,
    ``300kbit,100ms,2%``."""
    parts = [p.strip() for p in text.split(",")]
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise ValueError("--link takes RATE[,DELAY][,LOSS], e.g. 300kbit,100ms,2%")
    m = _RATE.match(parts[0])
    if not m:
        raise ValueError(f"--link rate {parts[0]!r}: give a number and bit/kbit/mbit, e.g. 300kbit")
    rate_bps = float(m.group(1)) * _BITS[m.group(2).lower()]
    if rate_bps < 8000:
        raise ValueError("--link rate below 8 kbit/s would not even carry signalling")
    delay = loss = None
    if len(parts) >= 2 and parts[1]:
        d = _DELAY.match(parts[1])
        if not d:
            raise ValueError(f"--link delay {parts[1]!r}: e.g. 100ms")
        delay = float(d.group(1)) * {"ms": 1.0, "s": 1000.0, "us": 0.001}[d.group(2).lower()]
    if len(parts) == 3 and parts[2]:
        lo = _LOSS.match(parts[2])
        if not lo or float(lo.group(1)) >= 100:
            raise ValueError(f"--link loss {parts[2]!r}: a percentage below 100, e.g. 2%")
        loss = float(lo.group(1))
    tc_rate = f"{m.group(1)}{m.group(2).lower()}"
    return LinkSpec(tc_rate, rate_bps, delay or None, loss or None)


def _tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (
            p
            for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}")
            if os.path.exists(p)
        ),
        None,
    )


def _run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, input=input, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise LinkError(f"`{' '.join(args)}` failed: {done.stderr.strip() or done.returncode}")
    return done


@dataclass(slots=True)
class Tools:
    ip: str
    tc: str
    nft: str
    nsenter: str
    unshare: str


def preflight(spec: LinkSpec) -> Tools:
    """Refuse, with what to do, unless this process can shape links here: root, in a
    network namespace of its own (no default route: never the machine's network), with
    ip, tc, nft, nsenter and unshare, tbf in the kernel, and netem if a delay is asked."""
    if os.geteuid() != 0:
        raise LinkError(
            "--link creates network namespaces and shapes them: it needs root inside the "
            "bench's own network namespace, e.g. (as root)\n"
            "    unshare -n sh -c 'ip link set lo up && roundtable-bench --local --link 300kbit ...'"
        )
    names = ("ip", "tc", "nft", "nsenter", "unshare")
    found = {n: _tool(n) for n in names}
    missing = [n for n, path in found.items() if path is None]
    if missing:
        raise LinkError(
            f"--link needs {', '.join(missing)} (Debian: iproute2, nftables, util-linux; "
            "`make system-deps` installs them)"
        )
    tools = Tools(**{n: str(p) for n, p in found.items()})
    if _run(tools.ip, "route", "show", "default").stdout.strip():
        raise LinkError(
            "--link refuses to run where a default route exists (this looks like the "
            "machine's own network): run the bench in a namespace of its own, e.g.\n"
            "    unshare -n sh -c 'ip link set lo up && roundtable-bench --local --link ...'"
        )
    _probe_qdiscs(tools, spec)
    return tools


def _probe_qdiscs(tools: Tools, spec: LinkSpec) -> None:
    """Try tbf (and netem for a delay) on a throwaway veth pair."""
    tag = secrets.token_hex(3)
    a, b = f"rbpa{tag}", f"rbpb{tag}"
    _run(tools.ip, "link", "add", a, "type", "veth", "peer", "name", b)
    try:
        tbf = subprocess.run(
            [tools.tc, "qdisc", "add", "dev", a, "root", "tbf"]
            + ["rate", spec.rate, "burst", "6kb", "latency", "300ms"],
            capture_output=True,
            text=True,
        )
        if tbf.returncode != 0:
            raise LinkError(f"tc tbf does not work here ({tbf.stderr.strip()}): no rate shaping")
        subprocess.run([tools.tc, "qdisc", "del", "dev", a, "root"], capture_output=True)
        if spec.delay_ms:
            netem = subprocess.run(
                [
                    tools.tc,
                    "qdisc",
                    "add",
                    "dev",
                    a,
                    "root",
                    "netem",
                    "delay",
                    f"{spec.delay_ms}ms",
                ],
                capture_output=True,
                text=True,
            )
            if netem.returncode != 0:
                raise LinkError(
                    f"--link {spec}: this kernel has no netem qdisc (tc: "
                    f"{netem.stderr.strip().splitlines()[0] if netem.stderr.strip() else 'failed'}), "
                    "so a DELAY cannot be applied in the kernel (tbf's latency is a queue "
                    "limit, not a delay, and a user-space delay would not be a real link). "
                    "Give RATE[,,LOSS] (e.g. 300kbit,,2%), or run on a kernel with sch_netem."
                )
    finally:
        subprocess.run([tools.ip, "link", "del", a], capture_output=True)


@dataclass(slots=True)
class Shaped:
    """One subscriber's namespace and link."""

    index: int
    holder: subprocess.Popen[bytes]
    outside_dev: str
    inside_dev: str
    outside_ip: str
    inside_ip: str
    netem: bool = False

    @property
    def netns(self) -> str:
        return f"/proc/{self.holder.pid}/ns/net"


@dataclass(slots=True)
class Links:
    """The shaped links of one run (:func:`create`); :meth:`close` removes them."""

    spec: LinkSpec
    tools: Tools
    shaped: list[Shaped] = field(default_factory=list)
    lifted: bool = False
    _host_added: bool = False

    def enter(self, s: Shaped) -> list[str]:
        return [self.tools.nsenter, f"--net={s.netns}", "--"]

    def shape(self) -> None:
        """Put the link's rate (and netem's delay/loss, nftables' loss) on every veth."""
        for s in self.shaped:
            dev = s.outside_dev
            tbf = ["tbf", "rate", self.spec.rate, "burst", "6kb", "latency", "300ms"]
            if self.spec.delay_ms:
                netem = ["netem", "delay", f"{self.spec.delay_ms}ms"]
                if self.spec.loss_pct:
                    netem += ["loss", f"{self.spec.loss_pct}%"]
                _run(self.tools.tc, "qdisc", "replace", "dev", dev, "root", "handle", "1:", *netem)
                _run(
                    self.tools.tc,
                    "qdisc",
                    "replace",
                    "dev",
                    dev,
                    "parent",
                    "1:",
                    "handle",
                    "2:",
                    *tbf,
                )
                s.netem = True
            else:
                _run(self.tools.tc, "qdisc", "replace", "dev", dev, "root", *tbf)
                if self.spec.loss_pct:
                    # numgen draws 0..9999 per packet: loss in steps of 0.01 %
                    below = int(round(self.spec.loss_pct * 100))
                    ruleset = (
                        "table inet roundtable_bench_link {\n"
                        "  chain input {\n"
                        "    type filter hook input priority 0; policy accept;\n"
                        f'    iifname "{s.inside_dev}" numgen random mod 10000 < {below} '
                        "counter drop\n"
                        "  }\n"
                        "}\n"
                    )
                    _run(*self.enter(s), self.tools.nft, "-f", "-", input=ruleset)
        self.lifted = False

    def lift(self) -> None:
        """Take the shaping off (the link is then as fast as the veth)."""
        for s in self.shaped:
            subprocess.run(
                [self.tools.tc, "qdisc", "del", "dev", s.outside_dev, "root"], capture_output=True
            )
            if self.spec.loss_pct and not s.netem:
                subprocess.run(
                    [
                        *self.enter(s),
                        self.tools.nft,
                        "delete",
                        "table",
                        "inet",
                        "roundtable_bench_link",
                    ],
                    capture_output=True,
                )
        self.lifted = True

    def dropped(self, s: Shaped) -> dict[str, int]:
        """What the shaping dropped so far: tc's drops, nftables' loss counter."""
        out = {"tc_dropped": 0, "nft_dropped": 0}
        tc = subprocess.run(
            [self.tools.tc, "-s", "qdisc", "show", "dev", s.outside_dev],
            capture_output=True,
            text=True,
        ).stdout
        out["tc_dropped"] = sum(int(x) for x in re.findall(r"dropped (\d+)", tc))
        nft = subprocess.run(
            [*self.enter(s), self.tools.nft, "list", "table", "inet", "roundtable_bench_link"],
            capture_output=True,
            text=True,
        ).stdout
        m = re.search(r"counter packets (\d+)", nft)
        out["nft_dropped"] = int(m.group(1)) if m else 0
        return out

    def close(self) -> None:
        for s in self.shaped:
            if s.holder.poll() is None:
                s.holder.kill()
                s.holder.wait()
            subprocess.run([self.tools.ip, "link", "del", s.outside_dev], capture_output=True)
        self.shaped.clear()
        if self._host_added:
            subprocess.run(
                [self.tools.ip, "addr", "del", f"{LINK_HOST}/32", "dev", "lo"], capture_output=True
            )
            self._host_added = False


def create(spec: LinkSpec, count: int, shaped: bool = True) -> Links:
    """``count`` namespaces on veth pairs, shaped by ``spec`` (``shaped`` false: not
    yet, :meth:`Links.shape` later); LINK_HOST on lo for the server."""
    if not 1 <= count <= 250:
        raise LinkError("--link-subscribers must be between 1 and 250")
    tools = preflight(spec)
    links = Links(spec, tools)
    try:
        _run(tools.ip, "link", "set", "lo", "up")
        have = _run(tools.ip, "-o", "addr", "show", "dev", "lo").stdout
        if f" {LINK_HOST}/" not in have:
            _run(tools.ip, "addr", "add", f"{LINK_HOST}/32", "dev", "lo")
            links._host_added = True
        own = os.readlink("/proc/self/ns/net")
        for k in range(count):
            tag = secrets.token_hex(2)
            holder = subprocess.Popen([tools.unshare, "--net", "--", "sleep", "infinity"])
            s = Shaped(k, holder, f"rbo{k}{tag}", f"rbi{k}{tag}", f"10.204.{k}.1", f"10.204.{k}.2")
            links.shaped.append(s)
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError):
                    if os.readlink(s.netns) != own:
                        break
                if holder.poll() is not None or time.monotonic() > deadline:
                    raise LinkError("could not create a network namespace (unshare --net)")
                time.sleep(0.01)
            _run(
                tools.ip, "link", "add", s.outside_dev, "type", "veth", "peer", "name", s.inside_dev
            )
            _run(tools.ip, "link", "set", s.inside_dev, "netns", str(holder.pid))
            _run(tools.ip, "addr", "add", f"{s.outside_ip}/30", "dev", s.outside_dev)
            _run(tools.ip, "link", "set", s.outside_dev, "up")
            inside = links.enter(s)
            _run(*inside, tools.ip, "link", "set", "lo", "up")
            _run(*inside, tools.ip, "addr", "add", f"{s.inside_ip}/30", "dev", s.inside_dev)
            _run(*inside, tools.ip, "link", "set", s.inside_dev, "up")
            _run(*inside, tools.ip, "route", "add", "default", "via", s.outside_ip)
            while "LOWER_UP" not in _run(*inside, tools.ip, "link", "show", s.inside_dev).stdout:
                if time.monotonic() > deadline:
                    raise LinkError("a veth pair did not come up")
                time.sleep(0.05)
        if shaped:
            links.shape()
        else:
            links.lifted = True
        return links
    except BaseException:
        links.close()
        raise


# -- the generator's side: a thread (and event loop) inside a subscriber's namespace --------

_thread = threading.local()


def thread_media_host() -> str | None:
    """The address this thread's ICE gathers on (inside a namespace), else None."""
    return getattr(_thread, "media_host", None)


def gather_per_thread() -> None:
    """Make aioice's host-address lookup ask :func:`thread_media_host` first: a thread
    inside a subscriber's namespace gathers on that namespace's address, the rest on
    the process-wide media host (``sfu.aiortc_hooks.use_media_host``). Call after it."""
    import aioice.ice

    base = aioice.ice.get_host_addresses
    if getattr(base, "_per_thread", False):
        return

    def per_thread(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        host = thread_media_host()
        return [host] if host else base(use_ipv4, use_ipv6)

    per_thread._per_thread = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = per_thread


class NetnsLoop:
    """An asyncio loop on a thread of its own that entered another network namespace:
    every socket it creates (ICE, DTLS, Socket.IO) lives behind that namespace's link."""

    def __init__(self, netns: str, media_host: str, name: str = "bench-shaped") -> None:
        self._netns, self._host = netns, media_host
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise LinkError(f"could not enter the subscriber's namespace: {self._error}")

    def _main(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(self._netns, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            finally:
                os.close(fd)
            _thread.media_host = self._host
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this loop and await its result from the caller's loop."""
        assert self.loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
