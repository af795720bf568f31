"""RTCP sender and receiver reports of every forwarded track, batched per transport.

aiortc gives each started ``RTCRtpSender`` and ``RTCRtpReceiver`` a task of its own that
wakes every 0.5-1.5 s and sends one report: an SR and an SDES CNAME per sender, an RR
per receiver, each a datagram of its own (issue 16: ~7 % of the SFU's CPU at 10x3). An
SFU has many tracks per connection, so here one job per DTLS transport on the loop's
timer wheel (:mod:`sfu.timers`) sends them all, at aiortc's interval, as one compound
RTCP packet (RFC 3550 6.1, several SSRCs per compound as RFC 8108 5.4.1 allows): every
SR of the transport's senders, every RR of its receivers, then one SDES with each
sender's CNAME, split into datagrams of at most :data:`MAX_COMPOUND` bytes.

The reports carry what aiortc's would, from the same state: an SR the counters and the
NTP/RTP timestamp pair of the last packet sent (``sfu.aiortc_hooks.account_sent`` folds
the C send path's in), and it arms the sender's round-trip estimate from the next RR as
aiortc does; an RR each remote stream's ``StreamStatistics`` (which the C Inbound,
``sfu/fastpath/inbound.c``, updates for the packets it forwards) and the LSR/DLSR of the
last SR heard. A stopped sender still says BYE. NACKs, PLIs and REMB are not reports
and still leave at once (``sfu.aiortc_hooks``).

:func:`batch_sender` and :func:`batch_receiver` must be called before aiortc starts
the sender or receiver; :func:`check` names the aiortc internals this relies on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtp import (
    RtcpByePacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)

from .timers import Timer, wheel

log = logging.getLogger(__name__)

MAX_COMPOUND = 1200  # bytes of RTCP per datagram, below any path MTU with SRTCP's trailer
MAX_REPORT_BLOCKS = 31  # per RR packet: RFC 3550's 5-bit reception report count

# Name-mangled private attributes of aiortc 1.16.0 read here.
_S = "_RTCRtpSender__"
_R = "_RTCRtpReceiver__"
_SENDER_ATTRS = (
    "ntp_timestamp",
    "rtp_timestamp",
    "packet_count",
    "octet_count",
    "lsr",
    "lsr_time",
    "cname",
    "rtcp_started",
    "rtcp_exited",
)
_RECEIVER_ATTRS = ("remote_streams", "lsr", "lsr_time", "rtcp_ssrc", "rtcp_started", "rtcp_exited")
_REPORTS = "_roundtable_reports"  # a DTLS transport's _Reports
_BATCHED = "_roundtable_batched"  # a sender's/receiver's _Reports while it is started

Send = Callable[[RTCDtlsTransport, bytes], None]  # sends one RTCP datagram, never raises


def batch_sender(sender: RTCRtpSender, send: Send) -> None:
    """Send ``sender``'s SR + SDES with its transport's batch instead of its own task;
    ``send(dtls, datagram)`` sends (and SRTCP-protects) a batch."""
    if sender.__dict__.get(_BATCHED, False) is not False:
        return
    sender.__dict__[_BATCHED] = None
    original_stop = sender.stop

    def run_rtcp() -> asyncio.Future[None]:
        return _started(sender, _S, send)

    async def stop() -> None:
        reports = sender.__dict__.get(_BATCHED)
        if reports is not None:
            reports.remove(sender)
            # aiortc's loop says BYE when it is cancelled.
            await sender._send_rtcp([RtcpByePacket(sources=[sender._ssrc])])
        await original_stop()

    sender._run_rtcp = run_rtcp  # type: ignore[method-assign]
    sender.stop = stop  # type: ignore[method-assign]


def batch_receiver(receiver: RTCRtpReceiver, send: Send) -> None:
    """Send ``receiver``'s RR with its transport's batch instead of its own task."""
    if receiver.__dict__.get(_BATCHED, False) is not False:
        return
    receiver.__dict__[_BATCHED] = None
    original_stop = receiver.stop

    def run_rtcp() -> asyncio.Future[None]:
        return _started(receiver, _R, send)

    async def stop() -> None:
        reports = receiver.__dict__.get(_BATCHED)
        if reports is not None:
            reports.remove(receiver)
        await original_stop()

    receiver._run_rtcp = run_rtcp  # type: ignore[method-assign]
    receiver.stop = stop  # type: ignore[method-assign]


def _started(member: Any, prefix: str, send: Send) -> asyncio.Future[None]:
    """In place of aiortc's ``_run_rtcp()`` task: join the transport's batch and hand
    aiortc a finished future, so ``stop()`` (which cancels and awaits the task's events)
    finds nothing left to stop and no task lives per track."""
    d = member.__dict__
    d[prefix + "rtcp_started"].set()
    d[prefix + "rtcp_exited"].set()
    _reports(member.transport, send).add(member)
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


def _reports(dtls: RTCDtlsTransport, send: Send) -> _Reports:
    reports = getattr(dtls, _REPORTS, None)
    if reports is None or reports.closed:
        reports = _Reports(dtls, send)
        setattr(dtls, _REPORTS, reports)
    return reports


class _Reports:
    """The report job of one DTLS transport: its started senders and receivers."""

    __slots__ = ("closed", "dtls", "members", "send", "timer")

    def __init__(self, dtls: RTCDtlsTransport, send: Send) -> None:
        self.dtls = dtls
        self.send = send
        self.members: list[Any] = []
        self.closed = False
        self.timer: Timer | None = None

    def add(self, member: Any) -> None:
        if member not in self.members:
            self.members.append(member)
        member.__dict__[_BATCHED] = self
        if self.timer is None:
            self.schedule()

    def remove(self, member: Any) -> None:
        if member in self.members:
            self.members.remove(member)
        member.__dict__[_BATCHED] = None

    def schedule(self) -> None:
        # RFC 3550 6.2: the interval varied over [0.5, 1.5] of the nominal 1 s, as aiortc.
        self.timer = wheel().call_later(0.5 + random.random(), self.tick)

    def tick(self) -> None:
        self.timer = None
        dtls = self.dtls
        # A transport whose objects sfu.unlink cleared is closed too.
        if getattr(dtls, "_state", State.CLOSED) in (State.CLOSED, State.FAILED):
            self.closed = True
            for member in self.members:
                member.__dict__[_BATCHED] = None
            self.members = []
            return
        # BUNDLE may move a track to another transport while negotiating.
        for member in [m for m in self.members if m.transport is not dtls]:
            self.remove(member)
            if member.transport is not None:
                _reports(member.transport, self.send).add(member)
        if not self.members:
            self.closed = True
            return
        self.schedule()
        if dtls._state is not State.CONNECTED:
            return  # aiortc's send would raise ConnectionError and drop it too
        for datagram in compound(self.members):
            self.send(dtls, datagram)


def compound(members: list[Any]) -> list[bytes]:
    """The RTCP datagrams with the reports of ``members`` (SRs, RRs, one SDES each)."""
    now = time.time()
    items: list[tuple[bytes, RtcpSourceInfo | None]] = []
    mono = time.monotonic()
    for member in members:
        if isinstance(member, RTCRtpSender):
            if member.__dict__.get(SR_HOLD, 0.0) > mono:
                continue  # a probe's SR waits for its answer
            items.append(_sender_report(member, now))
        else:
            items.extend((report, None) for report in _receiver_reports(member, now))
    out: list[bytes] = []
    reports: list[bytes] = []
    chunks: list[RtcpSourceInfo] = []
    size = 0
    for report, chunk in items:
        grown = size + len(report) + (_chunk_size(chunk) if chunk is not None else 0)
        if reports and grown + (4 if chunks or chunk else 0) > MAX_COMPOUND:
            out.append(_join(reports, chunks))
            reports, chunks, size = [], [], 0
        reports.append(report)
        size += len(report)
        if chunk is not None:
            chunks.append(chunk)
            size += _chunk_size(chunk)
    if reports:
        out.append(_join(reports, chunks))
    return out


def _join(reports: list[bytes], chunks: list[RtcpSourceInfo]) -> bytes:
    if chunks:
        return b"".join(reports) + bytes(RtcpSdesPacket(chunks=chunks))
    return b"".join(reports)


def _chunk_size(chunk: RtcpSourceInfo) -> int:
    # SSRC, then type/length/value items, a zero item type, padded to 32 bits.
    n = 4 + sum(2 + len(value) for _, value in chunk.items) + 1
    return (n + 3) // 4 * 4


SR_SENT = "_roundtable_sr_sent"  # on a sender: LSR -> when that SR went out (None: twice)
# On a sender: until when (time.monotonic) its periodic SRs are held back, so that the
# receiver's next report answers the extra SR a probe sent (sfu.downlink.AUDIO_REPORT_WAIT).
SR_HOLD = "_roundtable_sr_hold"


def note_sender_report(sender: RTCRtpSender, ntp: int) -> None:
    """An SR with this NTP time goes out now: when, by the LSR a receiver report will
    quote (sfu.aiortc_hooks.report_rtt). aiortc keeps only the latest SR's, and a
    paused leg's SRs repeat one NTP time: an LSR sent twice is ambiguous and dropped."""
    sent: dict[int, float | None] = sender.__dict__.setdefault(SR_SENT, {})
    lsr = (ntp >> 16) & 0xFFFFFFFF
    sent[lsr] = None if lsr in sent else time.monotonic()
    while len(sent) > 8:
        del sent[next(iter(sent))]


def _sender_report(sender: RTCRtpSender, now: float) -> tuple[bytes, RtcpSourceInfo | None]:
    """aiortc's ``RTCRtpSender._run_rtcp`` body: the SR, and its CNAME."""
    d = sender.__dict__
    ntp = d[_S + "ntp_timestamp"]
    packet = RtcpSrPacket(
        ssrc=sender._ssrc,
        sender_info=RtcpSenderInfo(
            ntp_timestamp=ntp,
            rtp_timestamp=d[_S + "rtp_timestamp"],
            packet_count=d[_S + "packet_count"] & 0xFFFFFFFF,
            octet_count=d[_S + "octet_count"] & 0xFFFFFFFF,
        ),
    )
    # What the next RR's LSR/DLSR is measured against (aiortc's round-trip estimate,
    # and the downlink estimate's queue on the subscriber's link: sfu.downlink).
    d[_S + "lsr"] = (ntp >> 16) & 0xFFFFFFFF
    d[_S + "lsr_time"] = now
    note_sender_report(sender, ntp)
    cname = d[_S + "cname"]
    chunk = None
    if cname is not None:
        chunk = RtcpSourceInfo(ssrc=sender._ssrc, items=[(1, cname.encode("utf8"))])
    return bytes(packet), chunk


def _receiver_reports(receiver: RTCRtpReceiver, now: float) -> list[bytes]:
    """aiortc's ``RTCRtpReceiver._run_rtcp`` body: the RR, if there is anything to say;
    more than one past :data:`MAX_REPORT_BLOCKS` streams (the header's count has 5 bits:
    aiortc's packer writes a corrupt header for more, and a publisher's transport that
    learnt many SSRCs would send it)."""
    d = receiver.__dict__
    rtcp_ssrc = d[_R + "rtcp_ssrc"]
    lsrs, lsr_times = d[_R + "lsr"], d[_R + "lsr_time"]
    reports = []
    for ssrc, stream in d[_R + "remote_streams"].items():
        lsr = dlsr = 0
        if ssrc in lsrs:
            lsr = lsrs[ssrc]
            delay = now - lsr_times[ssrc]
            if 0 < delay < 65536:
                dlsr = int(delay * 65536)
        reports.append(
            RtcpReceiverInfo(
                ssrc=ssrc,
                fraction_lost=stream.fraction_lost,
                packets_lost=stream.packets_lost,
                highest_sequence=stream.max_seq,
                jitter=stream.jitter,
                lsr=lsr,
                dlsr=dlsr,
            )
        )
    if rtcp_ssrc is None:
        return []
    return [
        bytes(RtcpRrPacket(ssrc=rtcp_ssrc, reports=reports[i : i + MAX_REPORT_BLOCKS]))
        for i in range(0, len(reports), MAX_REPORT_BLOCKS)
    ]


def check() -> list[str]:
    """Names of aiortc internals this module relies on that are missing."""
    problems = []
    for cls, prefix, attrs in (
        (RTCRtpSender, _S, _SENDER_ATTRS),
        (RTCRtpReceiver, _R, _RECEIVER_ATTRS),
    ):
        names = cls.__init__.__code__.co_names
        problems += [f"{cls.__name__}.{prefix}{a}" for a in attrs if prefix + a not in names]
        for method in ("_run_rtcp", "_send_rtcp", "stop"):
            if not callable(getattr(cls, method, None)):
                problems.append(f"{cls.__name__}.{method}")
        # Both start their report loop as `ensure_future(self._run_rtcp())`.
        start = cls.send if cls is RTCRtpSender else cls.receive
        if "_run_rtcp" not in start.__code__.co_names:
            problems.append(f"{cls.__name__} starts _run_rtcp")
    if "_ssrc" not in RTCRtpSender.__init__.__code__.co_names:
        problems.append("RTCRtpSender._ssrc")
    return problems


__all__ = ["MAX_COMPOUND", "batch_receiver", "batch_sender", "check", "compound"]
