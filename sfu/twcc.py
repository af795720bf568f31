"""Transport-wide congestion control feedback: the SFU tells a publisher when each of its
packets arrived, and the publisher's own congestion controller does the rest.

With only REMB from a receive-side estimator (``sfu/_bwe.c``, like libwebrtc's AIMD) a
publisher never hears more than ~1.5x what it already sends, so Chromium takes very
long to turn on the top simulcast layer, which needs the lower layers' rate plus its own
minimum. LiveKit, mediasoup and Jitsi answer ``transport-cc`` instead: they only report
arrivals (RTCP transport feedback, draft-holmer-rmcat-transport-wide-cc-extensions-01,
RTPFB FMT 15) and Chromium's GoogCC probes and ramps the uplink up within seconds.

The C reader records (transport-wide sequence number, arrival time) for every packet of
a publish transport that negotiated it (``sfu/fastpath/twcc.c``); a
:class:`FeedbackSender` drains that every 50-250 ms (as the way back to the publisher
allows) and sends what :class:`FeedbackState` builds with :func:`build_feedback`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
RTPFB = 205
FMT = 15
INTERVAL = 0.05  # s between feedback rounds while packets arrive and the way back is wide
MAX_INTERVAL = 0.25  # s: the longest, however narrow the way back (libwebrtc: 50..250 ms)
SHARE = 0.05  # of the way back's estimate the feedback may take (libwebrtc's 5 %)
WIRE_OVERHEAD = 14 + 8 + 20  # bytes around an RTCP packet on the wire: SRTCP, UDP, IPv4
POLL = 0.025  # s: how often the buffer is looked at, so a burst is reported sooner
EARLY = 64  # arrivals waiting that are reported without waiting for INTERVAL
HISTORY_US = 500_000  # arrivals kept to answer a late (reordered) packet's window again
MAX_BYTES = 1200  # one feedback packet stays well under the path MTU
MAX_STATUS = 0x7FFF  # the most packets one feedback window may span
TICK_US = 250  # receive deltas are multiples of 250 us
REF_US = 64_000  # the reference time counts 64 ms

NOT_RECEIVED, SMALL, LARGE = 0, 1, 2


def _symbol(delta_ticks: int) -> int:
    return SMALL if 0 <= delta_ticks <= 0xFF else LARGE


def _chunks(symbols: list[int]) -> bytes:
    """Packet status chunks for ``symbols`` (draft section 3.1.1-3.1.4).

    A run of one symbol long enough to fill a status-vector chunk becomes a run-length
    chunk (up to 8191 symbols); otherwise a one-bit vector holds 14 symbols when none
    of them is a large delta, a two-bit vector 7. Symbols past the status count in the
    last vector chunk are "not received" and ignored by the reader.
    """
    out = bytearray()
    n = len(symbols)
    i = 0
    while i < n:
        s = symbols[i]
        run = 1
        while i + run < n and run < 0x1FFF and symbols[i + run] == s:
            run += 1
        if run >= 14 or (run >= 7 and s == LARGE) or i + run == n:
            out += struct.pack("!H", (s << 13) | run)
            i += run
            continue
        one_bit = symbols[i : i + 14]
        if LARGE not in one_bit:
            word = 0x8000
            for k, sym in enumerate(one_bit):
                word |= sym << (13 - k)
            out += struct.pack("!H", word)
            i += len(one_bit)
        else:
            two_bit = symbols[i : i + 7]
            word = 0xC000
            for k, sym in enumerate(two_bit):
                word |= sym << (12 - 2 * k)
            out += struct.pack("!H", word)
            i += len(two_bit)
    return bytes(out)


def build_feedback(
    sender_ssrc: int,
    media_ssrc: int,
    base_seq: int,
    fb_count: int,
    arrivals: list[int | None],
) -> tuple[bytes, int]:
    """One transport feedback packet for sequence numbers ``base_seq`` onwards.

    ``arrivals[i]`` is the arrival time in µs of sequence number ``base_seq + i`` (mod
    2^16), ``None`` if it did not arrive; at least one must have. Returns the packet and
    how many of ``arrivals`` it covers: it stops before a packet whose delta does not
    fit 16 bits or that would make it larger than :data:`MAX_BYTES` (the caller starts
    the next one there). The reference time is the first arrival, floored to 64 ms;
    each delta is measured from the previous arrival *as the reader reconstructs it*,
    so rounding never accumulates.
    """
    first = next(t for t in arrivals if t is not None)
    ref = first // REF_US
    prev = ref * REF_US
    symbols: list[int] = []
    deltas = bytearray()
    received = 0
    for t in arrivals[:MAX_STATUS]:
        if t is None:
            symbols.append(NOT_RECEIVED)
            continue
        ticks = (t - prev + TICK_US // 2) // TICK_US
        if not -0x8000 <= ticks <= 0x7FFF:
            break
        # 20 bytes of header, up to 2 bytes per chunk of >= 7 symbols, the deltas
        if 20 + 2 * (len(symbols) // 7 + 2) + len(deltas) + 2 > MAX_BYTES:
            break
        sym = _symbol(ticks)
        symbols.append(sym)
        deltas += struct.pack("!B" if sym == SMALL else "!h", ticks)
        prev += ticks * TICK_US
        received += 1
    while symbols and symbols[-1] == NOT_RECEIVED:
        symbols.pop()  # a window never ends on a loss: the next one reports it
    assert received, "a feedback packet reports at least one arrival"
    body = (
        struct.pack(
            "!IIHHI",
            sender_ssrc,
            media_ssrc,
            base_seq & 0xFFFF,
            len(symbols),
            ((ref & 0xFFFFFF) << 8) | (fb_count & 0xFF),
        )
        + _chunks(symbols)
        + deltas
    )
    padding = -(4 + len(body)) % 4
    if padding:
        body += bytes(padding - 1) + bytes([padding])
    header = struct.pack(
        "!BBH", 0x80 | (0x20 if padding else 0) | FMT, RTPFB, (4 + len(body)) // 4 - 1
    )
    return header + body, len(symbols)


class FeedbackState:
    """What one transport reported so far, and the next feedback packets to send.

    As libwebrtc's periodic feedback: each report covers the sequence numbers from the
    first one not yet reported to the newest arrival; a packet that arrives after its
    window was reported (reordering) moves the next window back to it, and the
    arrivals since are reported again from :data:`HISTORY_US` of history. Sequence
    numbers are unwrapped to 64 bits, so a 16-bit wrap inside a window is seamless.
    """

    __slots__ = ("_last", "_arrived", "_order", "_start", "_max", "fb_count")

    def __init__(self) -> None:
        self._last: int | None = None  # the newest unwrapped sequence number
        self._arrived: dict[int, int] = {}  # unwrapped seq -> arrival µs
        self._order: deque[tuple[int, int]] = deque()  # (arrival µs, seq) to forget
        self._start: int | None = None  # first unwrapped seq of the next window
        self._max: int | None = None
        self.fb_count = 0

    def _unwrap(self, seq: int) -> int:
        last = self._last
        if last is None:
            self._last = seq
            return seq
        diff = (seq - last) & 0xFFFF
        ext = last + diff - (0x10000 if diff >= 0x8000 else 0)
        if ext > last:
            self._last = ext
        return ext

    def add(self, arrivals: list[tuple[int, int]]) -> None:
        """Take ``(seq, arrival µs)`` pairs, oldest first (``Arrivals.drain()``)."""
        for seq, us in arrivals:
            ext = self._unwrap(seq)
            if ext in self._arrived:
                continue  # a duplicate: the first arrival counts
            self._arrived[ext] = us
            self._order.append((us, ext))
            if self._start is None or ext < self._start:
                self._start = ext
            if self._max is None or ext > self._max:
                self._max = ext
        # Forget what is old and reported (a packet not reported yet is always kept).
        order, start = self._order, self._start
        if order and start is not None:
            horizon = order[-1][0] - HISTORY_US
            while order and order[0][0] < horizon and order[0][1] < start:
                _, ext = order.popleft()
                self._arrived.pop(ext, None)

    def packets(self, sender_ssrc: int, media_ssrc: int) -> list[bytes]:
        """The feedback for everything not reported yet ([] if nothing arrived)."""
        start, end = self._start, self._max
        if start is None or end is None:
            return []
        start = max(start, end - MAX_STATUS + 1)
        out = []
        arrived = self._arrived
        times = [arrived.get(s) for s in range(start, end + 1)]
        i = 0
        while i < len(times):
            if all(t is None for t in times[i:]):
                break  # only losses left (history forgot them): nothing to say
            packet, covered = build_feedback(
                sender_ssrc, media_ssrc, start + i, self.fb_count, times[i:]
            )
            self.fb_count = (self.fb_count + 1) & 0xFF
            out.append(packet)
            i += covered
        self._start = end + 1
        return out


class FeedbackSender:
    """Reports one publish transport's arrivals to the publisher, a round every
    :meth:`interval` (sooner once :data:`EARLY` arrivals wait, if the way back is wide),
    while it lives.

    ``arrivals`` is the transport's ``sfu._fastpath.Arrivals``; ``sender_ssrc()`` the SSRC
    our RTCP goes out with (``None`` until known); ``send(packet)`` sends one RTCP packet
    on the transport; ``path_bps()`` what the way back to the publisher carries (its
    downlink estimate, :class:`sfu.downlink.DownlinkEstimate`; ``None``: not known). Owned
    by the :class:`~sfu.publisher.Publisher`, which closes it.

    The feedback travels on the publisher's downlink, beside everything the SFU forwards
    to that participant. At every :data:`INTERVAL` a publisher sending a simulcast video
    got ~13 kbit/s of it (~80 bytes a round); on a 90 kbit/s downlink that, the audio and
    the keep-alive padding filled the link and the voice lost 1-6 % of its packets. As
    libwebrtc's receiver (``RemoteEstimatorProxy``), the rounds are spaced to take
    :data:`SHARE` of that estimate, but at least one every :data:`MAX_INTERVAL` (so a
    publisher sending many packets up a very narrow downlink gets more: ~6 % at 60 kbit/s
    and 200 packets/s) and at most one every :data:`INTERVAL`. The size of a round is
    the last one's, measured (libwebrtc assumes 68 bytes).
    """

    def __init__(
        self,
        arrivals: Any,
        sender_ssrc: Callable[[], int | None],
        send: Callable[[bytes], None],
        path_bps: Callable[[], float | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.arrivals = arrivals
        self.state = FeedbackState()
        self.sent = 0
        self._sender_ssrc = sender_ssrc
        self._send = send
        self._path_bps = path_bps
        self._clock = clock
        self._round_bytes = 0  # what the last round put on the wire
        self._task = asyncio.ensure_future(self._run())

    def interval(self) -> float:
        """Seconds between rounds: :data:`SHARE` of the way back, within the bounds."""
        bps = self._path_bps()
        if bps is None or bps <= 0 or not self._round_bytes:
            return INTERVAL
        return min(MAX_INTERVAL, max(INTERVAL, self._round_bytes * 8 / (SHARE * bps)))

    def due(self, now: float, last: float) -> bool:
        """Whether a round goes at ``now``, the last one having gone at ``last``."""
        pending = self.arrivals.pending
        if not pending:
            return False
        wait = self.interval()
        return now - last >= wait or (pending >= EARLY and wait <= INTERVAL)

    def flush(self) -> None:
        """Report what arrived since the last report, now."""
        self.state.add(self.arrivals.drain())
        ssrc = self._sender_ssrc()
        if ssrc is None:
            return
        size = 0
        for packet in self.state.packets(ssrc, self.arrivals.media_ssrc):
            self._send(packet)
            self.sent += 1
            size += len(packet) + WIRE_OVERHEAD
        if size:
            self._round_bytes = size  # the next round waits for this one's share

    async def _run(self) -> None:
        last = self._clock()
        delay = POLL
        while True:
            await asyncio.sleep(delay)
            delay = POLL
            try:
                now = self._clock()
                if self.due(now, last):
                    last = now
                    self.flush()
                # Wake when the next round is due, not up to a poll after it: 250 ms is
                # a ceiling (GoogCC counts what is unacknowledged as in flight).
                delay = min(POLL, max(0.001, last + self.interval() - now))
            except Exception:
                # One bad round must not end the feedback for the whole call.
                log.exception("transport feedback failed")

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
