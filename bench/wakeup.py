"""What one event-loop wake-up costs: the microbenchmark docs/bench.md quotes.

    python -m bench.wakeup asyncio    # or: uvloop

A child process on core 1 sends one 200-byte datagram every 300 µs to a socket that an
``add_reader`` callback drains on core 0 (roughly what the SFU's loop sees at 10 × 3,
where it wakes for every few packets). Printed: the loop process's CPU time per
wake-up and per datagram, the receives included (the two agree while each wake-up
finds one datagram; on a loaded machine wake-ups find several). Alternate the two loops in pairs and compare within a
pair: on a shared machine the absolute figure moves with the load.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time

DATAGRAMS = 10_000
INTERVAL = 0.0003  # s between datagrams
SIZE = 200


def _send(addr: tuple[str, int]) -> None:
    """The child: paced by busy-waiting, since a sleep this short oversleeps."""
    os.sched_setaffinity(0, {1})
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    due = time.monotonic()
    for _ in range(DATAGRAMS + 100):
        s.sendto(b"x" * SIZE, addr)
        due += INTERVAL
        while time.monotonic() < due:
            pass


def measure(loop_name: str) -> tuple[float, int, int]:
    """(µs of CPU, wake-ups, datagrams) for the loop named ``asyncio`` or ``uvloop``."""
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    r.setblocking(False)
    pid = os.fork()
    if pid == 0:
        try:
            _send(r.getsockname())
        finally:
            os._exit(0)
    os.sched_setaffinity(0, {0})
    if loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    counts = [0, 0]  # wake-ups, datagrams

    def drain() -> None:
        counts[0] += 1
        try:
            while True:
                r.recv(2048)
                counts[1] += 1
        except BlockingIOError:
            pass

    loop.add_reader(r.fileno(), drain)
    cpu = time.process_time()
    loop.run_until_complete(asyncio.sleep(DATAGRAMS * INTERVAL + 0.5))
    cpu = time.process_time() - cpu
    loop.remove_reader(r.fileno())
    loop.close()
    os.waitpid(pid, 0)
    return cpu * 1e6, counts[0], counts[1]


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    if name not in ("asyncio", "uvloop"):
        sys.exit("usage: python -m bench.wakeup asyncio|uvloop")
    us, wakeups, datagrams = measure(name)
    print(
        f"{name}: {us / max(1, wakeups):.2f} µs CPU per wake-up, "
        f"{us / max(1, datagrams):.2f} per datagram ({datagrams} datagrams, {wakeups} wake-ups)"
    )


if __name__ == "__main__":
    main()
