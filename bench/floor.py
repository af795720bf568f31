"""The Python-loop floor: what forwarding one packet costs in the plainest Python.

The SFU's CPU per forwarded packet means little on its own on a shared, noisy machine;
as a ratio to a floor measured in the same run, on the same core, it survives the noise
(issue 16: the goal is ≤ 1.7× this floor). The floor is a loop doing only what any
forwarder must do per packet and subscriber, with the same library the SFU uses
(pylibsrtp): SRTP-unprotect a packet, rewrite its header (sequence number, timestamp,
SSRC), SRTP-protect it, and ``sendto`` it on a loopback UDP socket. No event loop, no
receive syscall, no RTCP, no statistics: a floor, not a server.

Run as ``python -m bench.floor --seconds 2 --sizes 60,1100,...`` (the bench starts it
pinned to the server's core right after each measurement window); prints JSON with
``us_per_packet`` (process CPU time per packet).

That floor flatters the SFU in two ways, and pulls the other way in one: its sink is a
socket nobody reads, so after a few hundred packets the kernel drops at the full receive
queue without delivering anything or waking anyone, while each of the SFU's ``sendto``
on loopback runs the generator's whole UDP input and wakes its event loop; and it
unprotects once per *forwarded* packet, where the SFU unprotects once per *received*
packet and forwards it to every subscriber (the fan-out). With ``--fanout F`` the same
process also measures a **fair floor** (``fair`` in the JSON): per received packet one
unprotect, then ``F`` times rewrite + protect + ``sendto`` (F legs; a fractional F is
spread over the packets), to ``ceil(F)`` sinks that a live reader in another process
drains as an event loop would (epoll, then read until empty), pinned with
``--reader-cpu`` to the generator's core as the bench's subscribers are. Both floors are
reported; neither replaces the other (docs/bench.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from pylibsrtp import Policy, Session

BATCH = 4096  # packets protected up front; a fresh receive session per pass (replay window)
_HEADER = struct.Struct("!HII")  # sequence number, timestamp, SSRC at offset 2


def _packets(sizes: Sequence[int], session: Session) -> list[bytes]:
    out = []
    for i in range(BATCH):
        size = sizes[i % len(sizes)]
        header = struct.pack("!BBHII", 0x80, 96, i, i * 3000, 0x1234)
        out.append(session.protect(header + os.urandom(size)))
    return out


def measure(sizes: Sequence[int], seconds: float) -> dict[str, float]:
    """CPU µs per packet of unprotect + rewrite + protect + sendto, over ``seconds``."""
    key_in, key_out = os.urandom(30), os.urandom(30)
    packets = _packets(sizes, Session(Policy(key_in, Policy.SSRC_ANY_OUTBOUND)))
    tx = Session(Policy(key_out, Policy.SSRC_ANY_OUTBOUND))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setblocking(False)
    addr = sink.getsockname()
    pack_into = _HEADER.pack_into
    seq, ts_off, ssrc = 1000, 12345, 0xCAFE
    n = 0
    cpu0, wall_end = time.process_time(), time.monotonic() + seconds
    while time.monotonic() < wall_end:
        rx = Session(Policy(key_in, Policy.SSRC_ANY_INBOUND))
        for data in packets:
            plain = bytearray(rx.unprotect(data))
            seq = (seq + 1) & 0xFFFF
            ts = (int.from_bytes(plain[4:8]) + ts_off) & 0xFFFFFFFF
            pack_into(plain, 2, seq, ts, ssrc)
            try:
                out.sendto(tx.protect(bytes(plain)), addr)
            except BlockingIOError:
                pass  # a full sink: the packet is dropped as a kernel would
            n += 1
    cpu = time.process_time() - cpu0
    sink.close()
    out.close()
    return {"us_per_packet": round(cpu / n * 1e6, 2), "packets": n, "cpu_s": round(cpu, 3)}


def measure_fair(
    sizes: Sequence[int], seconds: float, fanout: float, reader_cpu: int | None = None
) -> dict[str, Any]:
    """CPU µs per forwarded packet of one unprotect per received packet and ``fanout``
    times rewrite + protect + ``sendto`` to sinks a live reader drains (module doc)."""
    fanout = min(64.0, max(0.1, fanout))
    sinks = math.ceil(fanout)
    cmd = [sys.executable, "-m", "bench.floor", "--read", str(sinks)]
    if reader_cpu is not None:
        cmd += ["--reader-cpu", str(reader_cpu)]
    reader = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert reader.stdin is not None and reader.stdout is not None
    try:
        addrs = [("127.0.0.1", int(port)) for port in reader.stdout.readline().split()]
        if len(addrs) != sinks:
            raise RuntimeError("the floor's reader did not start")
        key_in, key_out = os.urandom(30), os.urandom(30)
        packets = _packets(sizes, Session(Policy(key_in, Policy.SSRC_ANY_OUTBOUND)))
        tx = Session(Policy(key_out, Policy.SSRC_ANY_OUTBOUND))
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.setblocking(False)
        pack_into = _HEADER.pack_into
        seq, ts_off, ssrc = 1000, 12345, 0xCAFE
        n = dropped = unprotected = 0
        owed = 0.0  # legs carried over: a fan-out of 1.5 is 1, 2, 1, 2, ...
        cpu0, wall_end = time.process_time(), time.monotonic() + seconds
        while time.monotonic() < wall_end:
            rx = Session(Policy(key_in, Policy.SSRC_ANY_INBOUND))
            for data in packets:
                plain = rx.unprotect(data)  # once per received packet, as the SFU
                unprotected += 1
                owed += fanout
                legs = int(owed)
                owed -= legs
                for leg in range(legs):
                    buf = bytearray(plain)
                    seq = (seq + 1) & 0xFFFF
                    ts = (int.from_bytes(buf[4:8]) + ts_off) & 0xFFFFFFFF
                    pack_into(buf, 2, seq, ts, ssrc + leg)
                    try:
                        out.sendto(tx.protect(bytes(buf)), addrs[leg])
                    except BlockingIOError:
                        dropped += 1
                    n += 1
        cpu = time.process_time() - cpu0
        out.close()
    finally:
        reader.stdin.close()  # the reader's signal to report and stop
        got = reader.stdout.read().split()
        reader.wait(10)
    received = int(got[0]) if got else 0
    return {
        "us_per_packet": round(cpu / max(1, n) * 1e6, 2),
        "packets": n,
        "cpu_s": round(cpu, 3),
        "fanout": round(fanout, 3),
        "unprotected": unprotected,
        "reader_cpu": reader_cpu,
        # what the live reader got: near 100 % or the sink was not really live
        "delivered_pct": round(100.0 * received / max(1, n), 1),
        "send_dropped": dropped,
    }


def read_sinks(count: int, cpu: int | None) -> None:
    """The fair floor's live reader: ``count`` sinks drained as an event loop would
    (epoll wait, then read each ready socket until empty), until stdin closes; prints
    the sinks' ports first and the datagrams received last."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    ep = select.epoll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    stdin = sys.stdin.fileno()
    ep.register(stdin, select.EPOLLIN | select.EPOLLHUP)
    print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
    buf = bytearray(2048)

    def drain(sock: socket.socket) -> int:
        """Read ``sock`` until empty; how many datagrams that was."""
        n = 0
        try:
            while True:
                sock.recv_into(buf)
                n += 1
        except BlockingIOError:
            return n

    received = 0
    while True:
        events = ep.poll()
        if any(fd == stdin for fd, _ in events):
            break
        received += sum(drain(by_fd[fd]) for fd, _ in events)
    # what is still queued arrived too (sent before the sender stopped)
    received += sum(drain(sock) for sock in socks)
    print(received, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--sizes", default="160,1100", help="payload sizes to cycle through, bytes")
    p.add_argument(
        "--fanout",
        type=float,
        default=None,
        help="also measure the fair floor (live reader, one unprotect per this many "
        "forwarded packets: the run's forwarded ÷ received)",
    )
    p.add_argument(
        "--reader-cpu", type=int, default=None, help="the fair floor's reader's core (generator's)"
    )
    p.add_argument("--read", type=int, default=None, help=argparse.SUPPRESS)  # the reader
    args = p.parse_args(argv)
    if args.read is not None:
        read_sinks(args.read, args.reader_cpu)
        return 0
    sizes = [max(1, min(1300, int(s))) for s in args.sizes.split(",") if s.strip()] or [160]
    result: dict[str, Any] = measure(sizes, args.seconds)
    if args.fanout is not None:
        result["fair"] = measure_fair(sizes, args.seconds, args.fanout, args.reader_cpu)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
