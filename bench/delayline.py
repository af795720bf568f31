"""A delay line in user space: what the ``netem`` qdisc does, for kernels without it.

Run inside a router namespace (``bench/link.py`` starts it there with ``nsenter``)::

    python bench/delayline.py --tun dl_down:100:0:2 --tun dl_up:100 --stats FILE

Each ``--tun NAME:DELAY_MS[:JITTER_MS[:LOSS_PCT]]`` opens a TUN device (``IFF_TUN |
IFF_NO_PI``: whole IP packets, no header). Policy routing in the namespace sends the
packets to be delayed into it (``ip rule add iif VETH lookup T``, table T: ``default dev
NAME``); this process reads each packet, drops it with probability LOSS, holds it for
DELAY (± a uniform JITTER) and writes it back into the same device. The kernel then
receives it *from* the TUN device: no rule matches that interface, so the main table
forwards it on to where it was going, and nothing loops.

Timing: packets are stamped with ``time.monotonic()`` when read and kept in one heap
ordered by (release time, arrival number): without jitter the order is the arrival
order (a FIFO); with jitter packets may overtake each other, as with netem. The loop
waits in ``select`` (microsecond timeout, unlike epoll's milliseconds) until the next
release or the next packet. How late each packet left against its release time is
kept as a histogram and written, with the counters, to ``--stats`` four times a second and
at exit (``lateness_us`` p50/p99/max): that is the accuracy figure the bench reports.

Stdlib only, and importable without side effects: ``bench/link.py`` uses
:func:`open_tun` to probe that TUN works here before it builds anything.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time
from dataclasses import dataclass, field

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
QUEUE_LIMIT = 10_000  # packets held at once, all devices; netem's default is 1,000 per qdisc
STATS_EVERY = 0.25  # s between writes of --stats
BIN_US = 25  # lateness histogram resolution
_PROTO = {1: "icmp", 6: "tcp", 17: "udp", 256: "not ipv4"}
BINS = 4000  # up to 100 ms; later ones land in the last bin (max is kept exactly)


def open_tun(name: str, path: str = TUN_PATH) -> int:
    """Create TUN device ``name`` in this process's network namespace; the returned
    non-blocking fd serves it (the device goes away when the fd is closed)."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(slots=True)
class Lane:
    """One TUN device and what it does to its packets."""

    name: str
    delay_s: float
    jitter_s: float = 0.0
    loss: float = 0.0  # probability
    fd: int = -1
    received: int = 0
    sent: int = 0
    lost: int = 0  # dropped on purpose (LOSS)
    overflow: int = 0  # dropped because QUEUE_LIMIT packets were held
    write_errors: int = 0
    protocols: dict[int, int] = field(default_factory=dict)  # IP protocol number: packets read

    @classmethod
    def parse(cls, text: str) -> Lane:
        name, *nums = text.split(":")
        if not name or not 1 <= len(nums) <= 3 or len(name) > 15:
            raise ValueError(f"--tun {text!r}: NAME:DELAY_MS[:JITTER_MS[:LOSS_PCT]]")
        delay, jitter, loss = (float(x) if x else 0.0 for x in [*nums, "", ""][:3])
        if delay < 0 or jitter < 0 or jitter > delay or not 0 <= loss < 100:
            raise ValueError(f"--tun {text!r}: 0 <= JITTER <= DELAY, 0 <= LOSS < 100")
        return cls(name, delay / 1e3, jitter / 1e3, loss / 100)

    def counters(self) -> dict[str, int | float]:
        return {
            "delay_ms": self.delay_s * 1e3,
            "jitter_ms": self.jitter_s * 1e3,
            "loss_pct": self.loss * 100,
            "received": self.received,
            "sent": self.sent,
            "lost": self.lost,
            "overflow": self.overflow,
            "write_errors": self.write_errors,
            "protocols": {_PROTO.get(p, str(p)): n for p, n in sorted(self.protocols.items())},
        }


@dataclass(slots=True)
class DelayLine:
    lanes: list[Lane]
    stats_path: str | None = None
    held: list[tuple[float, int, int, bytes]] = field(default_factory=list)  # heap
    arrivals: int = 0
    late_hist: list[int] = field(default_factory=lambda: [0] * BINS)
    late_max_us: float = 0.0
    late_n: int = 0
    rng: random.Random = field(default_factory=random.Random)
    scheduling: str = "normal"

    def run(self, stop_at: float | None = None) -> None:
        by_fd = {lane.fd: lane for lane in self.lanes}
        fds = list(by_fd)
        held, hist = self.held, self.late_hist
        push, pop = heapq.heappush, heapq.heappop
        read, write, now = os.read, os.write, time.monotonic
        next_stats = now() + STATS_EVERY
        parent = os.getppid()
        while True:
            t = now()
            # release everything due
            while held and held[0][0] <= t:
                due, _, fd, data = pop(held)
                lane = by_fd[fd]
                try:
                    write(fd, data)
                    lane.sent += 1
                except OSError:
                    lane.write_errors += 1
                    continue
                late = (now() - due) * 1e6
                hist[min(int(late // BIN_US), BINS - 1)] += 1
                self.late_n += 1
                if late > self.late_max_us:
                    self.late_max_us = late
            if t >= next_stats:
                self.write_stats()
                next_stats = t + STATS_EVERY
                if os.getppid() != parent:
                    return  # whoever started us is gone (killed bench): do not linger
            if stop_at is not None and t >= stop_at:
                return
            timeout = min(next_stats - t, held[0][0] - t if held else 1.0)
            ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
            for fd in ready:
                lane = by_fd[fd]
                while True:
                    try:
                        data = read(fd, 65536)
                    except BlockingIOError:
                        break
                    t = now()
                    lane.received += 1
                    proto = data[9] if data[0] >> 4 == 4 else 256  # 256: not IPv4
                    lane.protocols[proto] = lane.protocols.get(proto, 0) + 1
                    if lane.loss and self.rng.random() < lane.loss:
                        lane.lost += 1
                        continue
                    if len(held) >= QUEUE_LIMIT:
                        lane.overflow += 1
                        continue
                    due = t + lane.delay_s
                    if lane.jitter_s:
                        due += self.rng.uniform(-lane.jitter_s, lane.jitter_s)
                    self.arrivals += 1
                    push(held, (due, self.arrivals, fd, data))

    def percentile_us(self, q: float) -> float | None:
        if not self.late_n:
            return None
        want, seen = q * self.late_n, 0
        for i, n in enumerate(self.late_hist):
            seen += n
            if seen >= want:
                return (i + 1) * BIN_US  # upper edge of the bin: never flatters
        return self.late_max_us

    def stats(self) -> dict[str, object]:
        return {
            "mechanism": "userspace delay line via TUN",
            "lanes": {lane.name: lane.counters() for lane in self.lanes},
            "held": len(self.held),
            "scheduling": self.scheduling,
            "lateness_us": {
                "n": self.late_n,
                "p50": self.percentile_us(0.5),
                "p99": self.percentile_us(0.99),
                "max": round(self.late_max_us, 1),
            },
        }

    def write_stats(self) -> None:
        if not self.stats_path:
            return
        tmp = f"{self.stats_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.stats(), f)
        os.replace(tmp, self.stats_path)


def _prioritise() -> str:
    """netem's timer runs in the kernel, ahead of every process; a delay line at normal
    priority on a busy machine waits for a CPU (measured here at load 5 on 2 cores:
    p99 17 ms late). So: real-time FIFO if allowed (it blocks in select between
    packets, and the kernel keeps 5 % of each CPU for others), else a lower nice value."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        return "SCHED_FIFO 10"
    except (OSError, AttributeError):
        pass
    try:
        os.nice(-10)
        return "nice -10"
    except OSError:
        return "normal"


class _Stop(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="delayline",
        description="Hold IP packets read from TUN devices for a delay (± jitter, with "
        "random loss) and write them back: netem's delay in user space.",
    )
    ap.add_argument(
        "--tun",
        action="append",
        required=True,
        metavar="NAME:DELAY_MS[:JITTER_MS[:LOSS_PCT]]",
        help="a TUN device to create and serve (repeat: e.g. one per direction)",
    )
    ap.add_argument("--tun-path", default=TUN_PATH, help="the TUN clone device")
    ap.add_argument("--stats", help="write counters and lateness here (JSON), 4 times a second")
    ap.add_argument("--seed", type=int, help="seed the loss/jitter draws (repeatable runs)")
    args = ap.parse_args(argv)
    try:
        lanes = [Lane.parse(t) for t in args.tun]
    except ValueError as exc:
        ap.error(str(exc))
    line = DelayLine(lanes, args.stats, rng=random.Random(args.seed))
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        for lane in lanes:
            lane.fd = open_tun(lane.name, args.tun_path)
    except OSError as exc:
        print(f"delayline: cannot open a TUN device via {args.tun_path}: {exc}", file=sys.stderr)
        return 1
    line.scheduling = _prioritise()
    # nothing below allocates cycles: the collector would only add pauses to the timing
    gc.collect()
    gc.freeze()
    line.write_stats()
    print("ready", flush=True)
    try:
        line.run()
    except _Stop:
        pass
    finally:
        line.write_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main())
