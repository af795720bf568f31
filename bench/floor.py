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
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import time
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--sizes", default="160,1100", help="payload sizes to cycle through, bytes")
    args = p.parse_args(argv)
    sizes = [max(1, min(1300, int(s))) for s in args.sizes.split(",") if s.strip()]
    print(json.dumps(measure(sizes or [160], args.seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
