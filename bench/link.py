"""``--link``: chosen subscribers behind a shaped downlink, in network namespaces of their own.

Layout (inside the bench's own loopback-only namespace, ``unshare -n``)::

    bench namespace: the server on LINK_HOST (an address on lo), the other generators
        ├── veth rbo<k> 10.204.<k>.1/30 ── tc on this end: what flows to subscriber k
        │       └── namespace k (veth rbi<k> 10.204.<k>.2/30, default route back;
        │           nftables: random loss of what arrives)
        └── ...

Rate is a ``tc qdisc … tbf`` on the bench's end of each veth (everything the server
sends to that subscriber, media and signalling alike, like a home line's downlink).
Loss is nftables' ``numgen random`` in the subscriber's namespace (or netem's where it
exists). The subscriber's uplink is not rate-shaped.

DELAY is one-way, in each direction (a ping through the link takes 2 × DELAY plus
what waits in the rate's queue), like a ``netem delay`` on both ends of the wire:

* where the kernel has the ``netem`` qdisc, it is that: netem (with the loss) on the
  bench's end, tbf below it, and a second netem for the uplink inside namespace k;
* where it has not (this development machine: no sch_netem), a router namespace goes
  between the two, and the delay is done in user space the way netem does it in the
  kernel (``bench/delayline.py``)::

    bench ── rbo<k> 10.204.<k>.1/30 (tbf) ── rbr<k> 10.204.<k>.2 ┐ router namespace k
                                                                  │ ip_forward; two TUN
      subscriber namespace k ── rbi<k> 10.204.<k>.6/30 ── rbs<k> 10.204.<k>.5 ┘ devices

  In the router, ``ip rule iif rbr<k> lookup 100`` sends everything coming from the
  bench into TUN ``dl_down`` (table 100: ``default dev dl_down``), ``iif rbs<k> lookup
  101`` everything from the subscriber into ``dl_up``. The delay line holds each packet
  for DELAY (the downlink's also drawn for LOSS) and writes it back into its device;
  packets the kernel receives *from* a TUN device match no rule and take the main
  table onwards, so nothing loops. Order on the downlink: the rate's queue first (tbf
  on the bench's end: the bottleneck, with its 300 ms buffer), then the wire (delay and
  random loss) — a home line's bottleneck plus its propagation delay. With a constant
  delay the order does not change any packet's total time (a FIFO queue and a fixed
  delay commute); it only decides that a lost packet has used its share of the rate,
  as on a real line. :meth:`Links.lift` takes the rules out (the packets then bypass
  the TUN devices) and the tbf off; :meth:`Links.shape` puts them back.

Which one ran is :attr:`Links.mechanism` (``"netem"`` or ``"userspace delay line via
TUN"``), in the bench's output, JSON and PNG. Without netem *and* without a usable TUN
device (``/dev/net/tun``) the bench refuses a DELAY rather than fake one.

Each namespace belongs to a ``sleep`` process started with ``unshare --net`` (nothing
is left in ``/run/netns``; it goes with that process, veth included). The generator
enters it from a thread of its own (``setns``), so that thread's sockets — ICE, DTLS,
the Socket.IO connection — live behind the shaped link (:class:`NetnsLoop`).

For tests (e.g. a Chromium behind a weak line): :func:`shaped_namespace` is a context
manager around :func:`create` for one namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import secrets
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .delayline import TUN_PATH, open_tun

LINK_HOST = "10.204.255.1"  # the server's address while subscribers sit behind links
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps)$", re.I)
_DELAY = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|us)(?:[~±](\d+(?:\.\d+)?)(ms|s|us))?$", re.I)
_MS = {"ms": 1.0, "s": 1000.0, "us": 0.001}
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
    jitter_ms: float | None = None  # DELAY ± this, uniform (packets may overtake, as in netem)

    def __str__(self) -> str:
        parts = [self.rate]
        if self.delay_ms or self.loss_pct:
            jitter = f"~{self.jitter_ms:g}ms" if self.jitter_ms else ""
            parts.append(f"{self.delay_ms:g}ms{jitter}" if self.delay_ms else "")
        if self.loss_pct:
            parts.append(f"{self.loss_pct:g}%")
        return ",".join(parts)


def parse_link(text: str) -> LinkSpec:
    """``RATE[,DELAY[~JITTER]][,LOSS]``: ``300kbit``, ``300kbit,100ms``, ``300kbit,,2%``,
    ``300kbit,100ms,2%``, ``300kbit,100ms~10ms,2%`` (each packet 90–110 ms)."""
    parts = [p.strip() for p in text.split(",")]
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise ValueError("--link takes RATE[,DELAY][,LOSS], e.g. 300kbit,100ms,2%")
    m = _RATE.match(parts[0])
    if not m:
        raise ValueError(f"--link rate {parts[0]!r}: give a number and bit/kbit/mbit, e.g. 300kbit")
    rate_bps = float(m.group(1)) * _BITS[m.group(2).lower()]
    if rate_bps < 8000:
        raise ValueError("--link rate below 8 kbit/s would not even carry signalling")
    delay = loss = jitter = None
    if len(parts) >= 2 and parts[1]:
        d = _DELAY.match(parts[1])
        if not d:
            raise ValueError(f"--link delay {parts[1]!r}: e.g. 100ms or 100ms~10ms")
        delay = float(d.group(1)) * _MS[d.group(2).lower()]
        if d.group(3):
            jitter = float(d.group(3)) * _MS[d.group(4).lower()]
            if jitter > delay:
                raise ValueError(f"--link delay {parts[1]!r}: the jitter exceeds the delay")
    if len(parts) == 3 and parts[2]:
        lo = _LOSS.match(parts[2])
        if not lo or float(lo.group(1)) >= 100:
            raise ValueError(f"--link loss {parts[2]!r}: a percentage below 100, e.g. 2%")
        loss = float(lo.group(1))
    tc_rate = f"{m.group(1)}{m.group(2).lower()}"
    return LinkSpec(tc_rate, rate_bps, delay or None, loss or None, (delay and jitter) or None)


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


NETEM = "netem"
USERSPACE = "userspace delay line via TUN"
DOWN_TABLE, UP_TABLE = 100, 101  # the router's routing tables into the delay line
DELAYLINE = str(Path(__file__).with_name("delayline.py"))


@dataclass(slots=True)
class Tools:
    ip: str
    tc: str
    nft: str
    nsenter: str
    unshare: str
    delay: str | None = None  # how a DELAY is applied: NETEM, USERSPACE, None (none asked)
    tun_path: str = TUN_PATH


def preflight(spec: LinkSpec, tun_path: str = TUN_PATH) -> Tools:
    """Refuse, with what to do, unless this process can shape links here: root, in a
    network namespace of its own (no default route: never the machine's network), with
    ip, tc, nft, nsenter and unshare, tbf in the kernel, and for a delay either netem or
    a TUN device at ``tun_path`` for the user-space delay line."""
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
    tools = Tools(**{n: str(p) for n, p in found.items()}, tun_path=tun_path)
    if _run(tools.ip, "route", "show", "default").stdout.strip():
        raise LinkError(
            "--link refuses to run where a default route exists (this looks like the "
            "machine's own network): run the bench in a namespace of its own, e.g.\n"
            "    unshare -n sh -c 'ip link set lo up && roundtable-bench --local --link ...'"
        )
    tools.delay = _probe_qdiscs(tools, spec)
    return tools


def _probe_qdiscs(tools: Tools, spec: LinkSpec) -> str | None:
    """Try tbf (and for a delay netem, else a TUN device) on a throwaway veth pair;
    return how a delay will be applied."""
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
        if not spec.delay_ms:
            return None
        netem = subprocess.run(
            [tools.tc, "qdisc", "add", "dev", a, "root", "netem", "delay", f"{spec.delay_ms}ms"],
            capture_output=True,
            text=True,
        )
        if netem.returncode == 0:
            return NETEM
        why = netem.stderr.strip().splitlines()[0] if netem.stderr.strip() else "failed"
        try:
            os.close(open_tun(f"rbpt{tag}", tools.tun_path))  # the device goes with the fd
        except OSError as exc:
            raise LinkError(
                f"--link {spec}: this kernel has no netem qdisc (tc: {why}), and the "
                f"user-space delay line that stands in for it needs a TUN device, which "
                f"{tools.tun_path} does not give here ({exc.strerror or exc}), so a DELAY "
                "cannot be applied (tbf's latency is a queue limit, not a delay). Give "
                "RATE[,,LOSS] (e.g. 300kbit,,2%), or run where /dev/net/tun works "
                "(modprobe tun) or the kernel has sch_netem."
            ) from None
        return USERSPACE
    finally:
        subprocess.run([tools.ip, "link", "del", a], capture_output=True)


@dataclass(slots=True)
class Shaped:
    """One subscriber's namespace and link (with a user-space delay: and its router)."""

    index: int
    holder: subprocess.Popen[bytes]
    outside_dev: str  # the bench's end (tbf)
    inside_dev: str  # the subscriber's end
    outside_ip: str  # the bench's address on the link (reachable from inside)
    inside_ip: str  # the subscriber's address
    netem: bool = False
    router: subprocess.Popen[bytes] | None = None  # holder of the router namespace
    router_in: str = ""  # the router's veth towards the bench
    router_out: str = ""  # the router's veth towards the subscriber
    delayline: subprocess.Popen[bytes] | None = None
    stats_path: str = ""
    rtt_ms: float | None = None  # idle round trip through the link, measured at setup

    @property
    def netns(self) -> str:
        return f"/proc/{self.holder.pid}/ns/net"

    @property
    def router_netns(self) -> str:
        assert self.router is not None
        return f"/proc/{self.router.pid}/ns/net"


@dataclass(slots=True)
class Links:
    """The shaped links of one run (:func:`create`); :meth:`close` removes them (or use
    it as a context manager)."""

    spec: LinkSpec
    tools: Tools
    shaped: list[Shaped] = field(default_factory=list)
    lifted: bool = False
    _host_added: bool = False
    _workdir: str = ""

    @property
    def mechanism(self) -> str | None:
        """How the DELAY is applied: "netem", "userspace delay line via TUN", or None."""
        return self.tools.delay if self.spec.delay_ms else None

    def describe(self) -> str:
        """What shapes the link, for the bench's output: e.g. ``tc tbf + userspace
        delay line via TUN (delay, loss)``."""
        parts = ["tc tbf"]
        if self.mechanism == NETEM:
            parts.append("netem (delay" + (", loss)" if self.spec.loss_pct else ")"))
        elif self.mechanism == USERSPACE:
            parts.append(f"{USERSPACE} (delay" + (", loss)" if self.spec.loss_pct else ")"))
        elif self.spec.loss_pct:
            parts.append("nftables loss")
        return " + ".join(parts)

    def __enter__(self) -> Links:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enter(self, s: Shaped) -> list[str]:
        """The argv prefix that runs a command in ``s``'s namespace."""
        return [self.tools.nsenter, f"--net={s.netns}", "--"]

    def wrapper(self, s: Shaped, binary: str, script: Path) -> Path:
        """Write an executable ``script`` that runs ``binary`` (with its arguments) in
        ``s``'s namespace: e.g. Playwright's ``executable_path`` for a Chromium there."""
        script.write_text(
            "#!/bin/sh\n# Run the program behind the shaped link (bench/link.py).\n"
            f'exec {self.tools.nsenter} --net={s.netns} -- {binary} "$@"\n'
        )
        script.chmod(0o755)
        return script

    def _router(self, s: Shaped, *args: str) -> subprocess.CompletedProcess[str]:
        return _run(self.tools.nsenter, f"--net={s.router_netns}", "--", *args)

    def _through_delay(self, s: Shaped, on: bool) -> None:
        """Route what crosses the router through the delay line (or around it)."""
        for dev, table in ((s.router_in, DOWN_TABLE), (s.router_out, UP_TABLE)):
            rule = ("iif", dev, "lookup", str(table), "pref", str(table))
            subprocess.run(
                [self.tools.nsenter, f"--net={s.router_netns}", "--", self.tools.ip]
                + ["rule", "del", *rule],
                capture_output=True,
            )
            if on:
                self._router(s, self.tools.ip, "rule", "add", *rule)

    def shape(self) -> None:
        """Put the link's rate, delay and loss on every link."""
        for s in self.shaped:
            dev = s.outside_dev
            tbf = ["tbf", "rate", self.spec.rate, "burst", "6kb", "latency", "300ms"]
            if self.spec.delay_ms and self.tools.delay == NETEM:
                delay = ["netem", "delay", f"{self.spec.delay_ms}ms"]
                if self.spec.jitter_ms:
                    delay.append(f"{self.spec.jitter_ms}ms")
                netem = delay + (["loss", f"{self.spec.loss_pct}%"] if self.spec.loss_pct else [])
                _run(self.tools.tc, "qdisc", "replace", "dev", dev, "root", "handle", "1:", *netem)
                _run(
                    self.tools.tc,
                    *("qdisc", "replace", "dev", dev, "parent", "1:", "handle", "2:", *tbf),
                )
                # the way back is as long (DELAY is one-way, each direction)
                _run(
                    *self.enter(s),
                    *(self.tools.tc, "qdisc", "replace", "dev", s.inside_dev, "root", *delay),
                )
                s.netem = True
                continue
            _run(self.tools.tc, "qdisc", "replace", "dev", dev, "root", *tbf)
            if s.router is not None:
                self._through_delay(s, True)  # delay and loss: the delay line's
            elif self.spec.loss_pct:
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
        """Take the shaping off (the link is then as fast as the veth, without delay)."""
        for s in self.shaped:
            subprocess.run(
                [self.tools.tc, "qdisc", "del", "dev", s.outside_dev, "root"], capture_output=True
            )
            if s.netem:
                subprocess.run(
                    [*self.enter(s), self.tools.tc, "qdisc", "del", "dev", s.inside_dev, "root"],
                    capture_output=True,
                )
            elif s.router is not None:
                self._through_delay(s, False)
            elif self.spec.loss_pct:
                subprocess.run(
                    [*self.enter(s), self.tools.nft]
                    + ["delete", "table", "inet", "roundtable_bench_link"],
                    capture_output=True,
                )
        self.lifted = True

    def delay_stats(self, s: Shaped) -> dict[str, Any] | None:
        """The delay line's counters and lateness (written by it 4 times a second)."""
        if not s.stats_path:
            return None
        with contextlib.suppress(OSError, ValueError):
            with open(s.stats_path) as f:
                return json.load(f)
        return None

    def dropped(self, s: Shaped) -> dict[str, Any]:
        """What the shaping dropped so far: tc's drops, nftables' loss counter, the
        delay line's random losses (and how late it released packets, µs)."""
        out: dict[str, Any] = {"tc_dropped": 0, "nft_dropped": 0}
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
        stats = self.delay_stats(s)
        if stats is not None:
            down = stats["lanes"].get("dl_down", {})
            out["delayline_dropped"] = down.get("lost", 0) + down.get("overflow", 0)
            out["delayline_packets"] = sum(x["sent"] for x in stats["lanes"].values())
            out["delayline_lateness_us"] = stats["lateness_us"]
        return out

    def close(self) -> None:
        for s in self.shaped:
            if s.delayline is not None and s.delayline.poll() is None:
                s.delayline.terminate()
                try:
                    s.delayline.wait(5)
                except subprocess.TimeoutExpired:
                    s.delayline.kill()
                    s.delayline.wait()
            for holder in (s.router, s.holder):
                if holder is not None and holder.poll() is None:
                    holder.kill()
                    holder.wait()
            subprocess.run([self.tools.ip, "link", "del", s.outside_dev], capture_output=True)
        self.shaped.clear()
        if self._host_added:
            subprocess.run(
                [self.tools.ip, "addr", "del", f"{LINK_HOST}/32", "dev", "lo"], capture_output=True
            )
            self._host_added = False
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = ""


def _namespace(tools: Tools, deadline: float) -> subprocess.Popen[bytes]:
    """A new network namespace, held by a ``sleep`` process."""
    own = os.readlink("/proc/self/ns/net")
    holder = subprocess.Popen([tools.unshare, "--net", "--", "sleep", "infinity"])
    while True:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{holder.pid}/ns/net") != own:
                return holder
        if holder.poll() is not None or time.monotonic() > deadline:
            holder.kill()
            raise LinkError("could not create a network namespace (unshare --net)")
        time.sleep(0.01)


def _wait_up(enter: list[str], tools: Tools, dev: str, deadline: float) -> None:
    while "LOWER_UP" not in _run(*enter, tools.ip, "link", "show", dev).stdout:
        if time.monotonic() > deadline:
            raise LinkError("a veth pair did not come up")
        time.sleep(0.05)


def create(
    spec: LinkSpec,
    count: int,
    shaped: bool = True,
    *,
    first: int = 0,
    tun_path: str = TUN_PATH,
) -> Links:
    """``count`` namespaces on veth pairs (subnets 10.204.<first + k>.0/29), shaped by
    ``spec`` (``shaped`` false: not yet, :meth:`Links.shape` later); LINK_HOST on lo for
    the server. Each link's idle round trip is measured once (:attr:`Shaped.rtt_ms`)."""
    if not 1 <= count or first < 0 or first + count > 250:
        raise LinkError("--link-subscribers must be between 1 and 250")
    tools = preflight(spec, tun_path)
    links = Links(spec, tools)
    try:
        _run(tools.ip, "link", "set", "lo", "up")
        have = _run(tools.ip, "-o", "addr", "show", "dev", "lo").stdout
        if f" {LINK_HOST}/" not in have:
            _run(tools.ip, "addr", "add", f"{LINK_HOST}/32", "dev", "lo")
            links._host_added = True
        userspace = tools.delay == USERSPACE
        if userspace:
            links._workdir = tempfile.mkdtemp(prefix="roundtable-link-")
        for k in range(first, first + count):
            deadline = time.monotonic() + 10
            tag = secrets.token_hex(2)
            s = Shaped(
                k,
                _namespace(tools, deadline),
                f"rbo{k}{tag}",
                f"rbi{k}{tag}",
                f"10.204.{k}.1",
                f"10.204.{k}.6" if userspace else f"10.204.{k}.2",
            )
            links.shaped.append(s)
            inside = links.enter(s)
            if userspace:
                _router_between(links, s, tag, deadline)
            else:
                _run(
                    tools.ip,
                    *("link", "add", s.outside_dev, "type", "veth", "peer", "name", s.inside_dev),
                )
                _run(tools.ip, "link", "set", s.inside_dev, "netns", str(s.holder.pid))
                _run(tools.ip, "addr", "add", f"{s.outside_ip}/30", "dev", s.outside_dev)
                _run(tools.ip, "link", "set", s.outside_dev, "up")
                _run(*inside, tools.ip, "addr", "add", f"{s.inside_ip}/30", "dev", s.inside_dev)
            _run(*inside, tools.ip, "link", "set", "lo", "up")
            _run(*inside, tools.ip, "link", "set", s.inside_dev, "up")
            gateway = f"10.204.{k}.5" if userspace else s.outside_ip
            _run(*inside, tools.ip, "route", "add", "default", "via", gateway)
            _wait_up(inside, tools, s.inside_dev, deadline)
        # one idle round trip per link, shaped: what the report says the link's RTT is
        links.shape()
        for s in links.shaped:
            try:
                rtts = ping_rtt(links, s, count=9)
            except OSError:  # no raw sockets here: the report then has no RTT, no more
                rtts = []
            s.rtt_ms = round(sorted(rtts)[len(rtts) // 2], 2) if rtts else None
        if not shaped:
            links.lift()
        return links
    except BaseException:
        links.close()
        raise


@contextlib.contextmanager
def shaped_namespace(
    link: str | LinkSpec,
    *,
    shaped: bool = True,
    index: int = 200,
    tun_path: str = TUN_PATH,
) -> Iterator[tuple[Links, Shaped]]:
    """One network namespace behind a shaped link, for tests (e.g. a Chromium behind
    ``"300kbit,100ms,2%"``), removed afterwards::

        with shaped_namespace("300kbit,100ms,2%") as (links, ns):
            links.wrapper(ns, "/usr/bin/chromium", tmp / "chromium")  # executable_path
            # a server on 0.0.0.0 (media host ns.outside_ip) is reached at ns.outside_ip
            links.lift(); links.shape()  # the line recovers / degrades again
            links.dropped(ns), ns.rtt_ms  # what the shaping did; idle round trip

    Must run inside the test's own loopback-only namespace (as root, like
    ``tests/netns.py``). ``index`` picks the subnet 10.204.<index>.0/29 (the bench uses
    0 up), ``shaped`` false starts it unshaped."""
    spec = parse_link(link) if isinstance(link, str) else link
    with create(spec, 1, shaped, first=index, tun_path=tun_path) as links:
        yield links, links.shaped[0]


def _router_between(links: Links, s: Shaped, tag: str, deadline: float) -> None:
    """The router namespace between the bench and subscriber ``s``, with its delay
    line (see the module's docstring for the layout and the rules)."""
    tools, k, spec = links.tools, s.index, links.spec
    s.router = _namespace(tools, deadline)
    s.router_in, s.router_out = f"rbr{k}{tag}", f"rbs{k}{tag}"
    router = [tools.nsenter, f"--net={s.router_netns}", "--"]
    _run(tools.ip, "link", "add", s.outside_dev, "type", "veth", "peer", "name", s.router_in)
    _run(tools.ip, "link", "set", s.router_in, "netns", str(s.router.pid))
    _run(tools.ip, "link", "add", s.router_out, "type", "veth", "peer", "name", s.inside_dev)
    _run(tools.ip, "link", "set", s.router_out, "netns", str(s.router.pid))
    _run(tools.ip, "link", "set", s.inside_dev, "netns", str(s.holder.pid))
    _run(tools.ip, "addr", "add", f"{s.outside_ip}/30", "dev", s.outside_dev)
    _run(tools.ip, "link", "set", s.outside_dev, "up")
    _run(tools.ip, "route", "add", f"10.204.{k}.4/30", "via", f"10.204.{k}.2")
    _run(*links.enter(s), tools.ip, "addr", "add", f"{s.inside_ip}/30", "dev", s.inside_dev)
    # forwarding on; reverse-path filtering off: packets come back from the TUN devices
    # with sources that the main table routes via the veths
    _run(
        *router,
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv4/ip_forward && "
        "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done && "
        # no IPv6 in the router: else its own router solicitations and MLD reports go
        # out through the TUN devices and are counted as if they crossed the link
        "for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 1 > $f; done",
    )
    _run(*router, tools.ip, "link", "set", "lo", "up")
    _run(*router, tools.ip, "addr", "add", f"10.204.{k}.2/30", "dev", s.router_in)
    _run(*router, tools.ip, "addr", "add", f"10.204.{k}.5/30", "dev", s.router_out)
    _run(*router, tools.ip, "link", "set", s.router_in, "up")
    _run(*router, tools.ip, "link", "set", s.router_out, "up")
    _run(*router, tools.ip, "route", "add", "default", "via", s.outside_ip)
    s.stats_path = os.path.join(links._workdir, f"delayline-{k}.json")
    loss = f"{spec.loss_pct:g}" if spec.loss_pct else "0"
    delay = f"{spec.delay_ms:g}:{spec.jitter_ms or 0:g}"
    s.delayline = subprocess.Popen(
        [*router, sys.executable, DELAYLINE, "--tun-path", tools.tun_path]
        + ["--tun", f"dl_down:{delay}:{loss}", "--tun", f"dl_up:{delay}"]
        + ["--stats", s.stats_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert s.delayline.stdout is not None
    ready, _, _ = select.select([s.delayline.stdout], [], [], max(0.1, deadline - time.monotonic()))
    if not ready or s.delayline.stdout.readline().strip() != b"ready":
        s.delayline.kill()
        err = s.delayline.communicate()[1].decode(errors="replace").strip()
        raise LinkError(f"the delay line did not start in the router namespace: {err}")
    for dev, table in (("dl_down", DOWN_TABLE), ("dl_up", UP_TABLE)):
        _run(*router, "sh", "-c", f"echo 0 > /proc/sys/net/ipv4/conf/{dev}/rp_filter")
        _run(*router, tools.ip, "link", "set", dev, "up")
        _run(*router, tools.ip, "route", "add", "default", "dev", dev, "table", str(table))
    _wait_up(router, tools, s.router_in, deadline)  # router_out: once the subscriber's end is up


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


SO_TIMESTAMPNS = 35  # Linux (asm-generic/socket.h); Python's socket module lacks the name


def ping_rtt(links: Links, s: Shaped, count: int = 5, timeout: float = 3.0) -> list[float]:
    """Round trips (ms) of ``count`` ICMP echo requests from the bench's end of ``s``'s
    link to the subscriber's address, 10 ms apart (the lost ones missing). The kernel
    in the subscriber's namespace answers, and the replies are stamped by the kernel as
    they arrive (SO_TIMESTAMPNS), so on a busy machine no process's wait for a CPU is
    counted into the link's delay — only the delay line's own (which is the point)."""
    ident = secrets.randbits(16)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.bind((s.outside_ip, 0))
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sent: dict[int, float] = {}
        rtts: list[float] = []
        start = time.monotonic()
        end = start + 0.01 * count + timeout
        n = 0
        while len(rtts) < count and (now := time.monotonic()) < end:
            if n < count and now >= start + 0.01 * n:
                body = struct.pack("!HH", ident, n) + b"roundtable-link-probe".ljust(56, b".")
                head = struct.pack("!BBH", 8, 0, 0)
                packet = struct.pack("!BBH", 8, 0, _checksum(head + body)) + body
                sent[n] = time.time()  # the kernel's receive stamps are CLOCK_REALTIME
                sock.sendto(packet, (s.inside_ip, 0))
                n += 1
                continue
            wake = start + 0.01 * n if n < count else end
            ready, _, _ = select.select([sock], [], [], max(0.0, wake - now))
            if not ready:
                continue
            data, ancillary, _, _ = sock.recvmsg(2048, 64)
            got = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    got = sec + nsec / 1e9
            icmp = data[(data[0] & 0x0F) * 4 :]  # past the IP header
            if len(icmp) < 8 or icmp[0] != 0:
                continue
            rid, seq = struct.unpack("!HH", icmp[4:8])
            if rid == ident and seq in sent:
                rtts.append((got - sent.pop(seq)) * 1e3)
        return rtts


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
