"""sfu._fastpath, the C rewrite/protect/send path, against what the Leg docstring promises.

The forwarding tests (test_sfu_forwarding.py) show real aiortc peers decoding what it
sends; these pin the rewriting rules and the send path's SRTP against pylibsrtp.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters as Ext
from aiortc.rtcrtpparameters import RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from pylibsrtp import Policy, Session

from sfu import _fastpath
from sfu.aiortc_hooks import _SRTP_PROTECT, srtp_ffi
from sfu.stats import LATENCY_BUCKETS_NS, RoomStats

KEY = bytes(range(30))  # AES_CM_128_HMAC_SHA1_80: 16-byte key + 14-byte salt


def aiortc_extensions() -> HeaderExtensionsMap:
    """aiortc's extension map with abs-send-time as id 3 and the MID as id 1."""
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(
            headerExtensions=[
                Ext(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
                Ext(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
            ]
        )
    )
    return extensions


def header(data: bytes) -> tuple[int, int, int, int, int]:
    """(first byte, marker|pt byte, seq, ts, ssrc)"""
    return struct.unpack("!BBHII", data[:12])


def make_leg(seq: int = 1000, ts: int = 5000) -> tuple[_fastpath.Leg, RoomStats]:
    stats = RoomStats()
    leg = _fastpath.Leg(stats.meter, seq, ts)
    leg.configure(96, 0xCAFE, 90000, b"")
    return leg, stats


def test_sequence_continues_from_the_random_start_and_keeps_upstream_gaps() -> None:
    leg, _ = make_leg(seq=1000)
    out = [header(leg.rewrite(b"x", False, s, 0, 1)[0])[2] for s in (50, 51, 53, 52)]
    assert out == [1001, 1002, 1004, 1003]  # a gap stays a gap, reordering stays


def test_rebase_hides_our_own_drops() -> None:
    leg, _ = make_leg(seq=1000)
    leg.rewrite(b"x", False, 50, 0, 1)
    leg.rebase()  # e.g. we dropped 51..59 for a slow subscriber
    assert header(leg.rewrite(b"x", False, 60, 0, 1)[0])[2] == 1002


def test_a_late_packet_never_reuses_a_number_sent_before_a_rebase() -> None:
    # Reusing an output sequence number would reuse its SRTP index (same keystream,
    # other plaintext) and hand a NACK the wrong packet.
    leg, _ = make_leg(seq=1000)
    assert header(leg.rewrite(b"a", False, 50, 0, 1)[0])[2] == 1001
    leg.rebase()
    assert header(leg.rewrite(b"b", False, 60, 0, 1)[0])[2] == 1002
    assert leg.rewrite(b"late", False, 59, 0, 1) is None  # would be 1001 again: dropped
    assert leg.history(1001)[12:] == b"a"
    assert header(leg.rewrite(b"c", False, 62, 0, 1)[0])[2] == 1004  # a gap stays a gap
    assert header(leg.rewrite(b"d", False, 61, 0, 1)[0])[2] == 1003  # reordering after it too
    assert leg.take_counters()[7] == 1
    for seq in range(63, 63 + 70_000):  # the rule holds across wraparounds
        assert leg.rewrite(b"x", False, seq & 0xFFFF, 0, 1) is not None


def test_new_source_continues_timestamps_and_wraps() -> None:
    leg, _ = make_leg(seq=0xFFFF, ts=0xFFFFFFF0)
    data, ts1 = leg.rewrite(b"x", True, 7, 100, 1)
    first, pt, seq, ts, ssrc = header(data)
    assert (first, pt, seq, ssrc) == (0x80, 0x80 | 96, 0, 0xCAFE)
    assert ts == ts1 and ts1 != 0xFFFFFFF0
    _, ts2 = leg.rewrite(b"x", False, 9000, 3000, 2)  # another publisher
    assert 0 < (ts2 - ts1) & 0xFFFFFFFF < 90000  # moves on by the time since (~0 s)
    _, ts3 = leg.rewrite(b"x", False, 9001, 6000, 2)
    assert (ts3 - ts2) & 0xFFFFFFFF == 3000


def test_mid_extension_and_history() -> None:
    leg, _ = make_leg()
    ext = b"\xbe\xde\x00\x01" + bytes([(4 << 4) | 0]) + b"1\x00\x00"
    leg.configure(111, 0xBEEF, 48000, ext)
    data, _ = leg.rewrite(b"payload", False, 1, 1, 1)
    assert data[0] == 0x90 and data[12:20] == ext and data[20:] == b"payload"
    seq = header(data)[2]
    assert leg.history(seq) == data
    assert leg.history((seq + 1) & 0xFFFF) is None
    with pytest.raises(ValueError):
        leg.configure(111, 1, 48000, b"\xbe\xde\x00")  # not whole words
    with pytest.raises(ValueError):
        leg.rewrite(b"x" * 4000, False, 1, 1, 1)


def test_history_keeps_a_packet_for_nacks_only_for_its_horizon() -> None:
    # Memory per participant is mostly this history (one copy per packet per leg): it
    # holds the last 2 s (libwebrtc keeps max(1 s, 3 RTT)), not 512 packets of any age.
    leg, _ = make_leg(seq=1000)
    assert leg.keep_ms == 2000
    leg.keep_ms = 150
    old = [leg.rewrite(b"old%d" % i, False, i, 0, 1)[0] for i in range(1, 4)]
    assert [leg.history(1000 + i) for i in range(1, 4)] == old
    time.sleep(0.3)
    new = leg.rewrite(b"new", False, 4, 0, 1)[0]
    assert [leg.history(1000 + i) for i in range(1, 4)] == [None] * 3
    assert leg.history(1004) == new  # a NACK for a young packet is answered as before
    time.sleep(0.3)
    leg.take_counters()  # a leg that stopped sending lets its history go too
    assert leg.history(1004) is None
    leg.keep_ms = 60_000  # within the horizon the 512 slots still bound it
    sent = [leg.rewrite(b"p", False, s & 0xFFFF, 0, 1)[0] for s in range(5, 5 + 600)]
    assert leg.history(header(sent[-1])[2]) == sent[-1]
    assert leg.history(header(sent[-512])[2]) == sent[-512]
    assert leg.history(header(sent[-513])[2]) is None


def test_a_late_packet_behind_the_history_tail_leaves_it_after_its_horizon_too() -> None:
    """REVIEW #10. Culling walks forward from the oldest held sequence number; a late
    (reordered) packet whose number that walk had already passed, because the number's
    slot was empty, was kept until its slot was reused 512 packets later, whatever its
    age. And one late by more than 512 must not push a newer packet out of its slot."""
    leg, _ = make_leg(seq=1000)
    leg.keep_ms = 150
    leg.rewrite(b"a", False, 1, 0, 1)  # out 1001
    time.sleep(0.3)
    leg.rewrite(b"c", False, 3, 0, 1)  # out 1003: 1001 is gone, and 1002's slot is empty
    assert leg.history(1001) is None
    late = leg.rewrite(b"b", False, 2, 0, 1)[0]  # out 1002, behind the walk
    assert header(late)[2] == 1002 and leg.history(1002) == late  # a NACK now: answered
    time.sleep(0.3)
    leg.rewrite(b"d", False, 4, 0, 1)
    assert leg.history(1003) is None and leg.history(1002) is None
    time.sleep(0.3)
    leg.rewrite(b"f", False, 6, 0, 1)  # out 1006: 1004 is gone, 1005's slot empty
    late = leg.rewrite(b"e", False, 5, 0, 1)[0]  # out 1005, behind the walk
    assert header(late)[2] == 1005 and leg.history(1005) == late
    time.sleep(0.3)
    leg.take_counters()  # the walk of a leg that stopped sending sees it as well
    assert leg.history(1006) is None and leg.history(1005) is None
    leg.keep_ms = 60_000
    sent = [leg.rewrite(b"p%d" % s, False, s, 0, 1)[0] for s in range(7, 7 + 600)]
    newest = header(sent[-1])[2]
    very_late = leg.rewrite(b"very late", False, 7 + 600 - 1 - 512, 0, 1)[0]
    assert header(very_late)[2] == (newest - 512) & 0xFFFF  # forwarded: its slot is newest's
    assert leg.history(newest) == sent[-1]
    assert leg.history(header(very_late)[2]) is None


def test_send_protects_with_the_given_session_and_counts() -> None:
    tx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND))
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)

    live = _fastpath.Live(True)  # the DTLS transport's state, checked before each send
    leg, stats = make_leg()
    assert leg.send(b"x", False, 1, 1, 1, 0) is False  # no route: nothing happens
    assert stats.packets_out == 0
    ctx = int(srtp_ffi.cast("uintptr_t", tx._srtp[0]))
    port = receiver.getsockname()[1]
    leg.set_route(ctx, _SRTP_PROTECT, tx, sender, "127.0.0.1", port, live)
    try:
        assert leg.send(b"hello", True, 10, 900, 7, time.perf_counter_ns()) is None
        plain = rx.unprotect(receiver.recv(2048))
        assert plain[12:] == b"hello" and header(plain)[4] == 0xCAFE
        assert plain == leg.history(header(plain)[2])
        assert stats.packets_out == 1 and stats.bytes_out == len(plain)
        assert stats.latency.n == 1 and stats.latency.counts[-1] == 0
        packets, octets, ntp, rtp_ts, tx_packets, tx_bytes, errors, stale, thinned = (
            leg.take_counters()
        )
        assert (packets, octets, rtp_ts, tx_packets, errors, stale) == (
            1,
            5,
            header(plain)[3],
            1,
            0,
            0,
        )
        assert tx_bytes == len(plain) + 10 and ntp >> 32 > 3_900_000_000
        # the NTP time of the send (kept as monotonic time, converted when asked)
        assert abs(ntp / (1 << 32) - (time.time() + 2208988800)) < 0.5
        assert leg.take_counters()[0] == 0

        live.connected = False  # the transport went away: the route is dropped
        assert leg.send(b"x", False, 11, 900, 7, 0) is False
        assert not leg.routed

        class Transport:  # asyncio's, on the socket: it may hold earlier writes
            _buffer_size = 1

        live.connected = True
        leg.set_route(ctx, _SRTP_PROTECT, tx, sender, "127.0.0.1", port, live, Transport())
        queued = leg.send(b"late", False, 12, 900, 7, 0)  # must not overtake them: queue it
        assert isinstance(queued, bytes) and queued[12:] == b"late"
        Transport._buffer_size = 0
        assert leg.send(b"x", False, 13, 900, 7, 0) is None
        assert rx.unprotect(receiver.recv(2048))[12:] == b"x"
        sender.close()  # a closed socket (fileno -1) is never written to
        assert leg.send(b"x", False, 14, 900, 7, 0) is False
    finally:
        receiver.close()
        sender.close()


def test_meter_histogram_is_cumulative_with_sub_50us_buckets() -> None:
    stats = RoomStats()
    for ns in (5_000, 25_000, 80_000, 10**12):
        stats.latency.observe(ns)
    cumulative = dict(stats.latency.cumulative())
    assert LATENCY_BUCKETS_NS[0] <= 10_000
    assert cumulative[10e-6] == 1 and cumulative[30e-6] == 2 and cumulative[100e-6] == 3
    assert cumulative[float("inf")] == 4 == stats.latency.n
    with pytest.raises(ValueError):
        _fastpath.Meter((2, 1))


def test_parse_rtp_reads_what_aiortc_writes() -> None:
    extensions = aiortc_extensions()
    sent = RtpPacket(96, 1, 0xFFFF, 0xFFFFFFFF, 0xDEADBEEF, b"\x01" * 300)
    sent.extensions.abs_send_time = 0x123456
    sent.extensions.mid = "7"
    sent.csrc = [1, 2]
    data = sent.serialize(extensions)
    got = _fastpath.parse_rtp(data, 3, 1)
    for name in ("marker", "payload_type", "sequence_number", "timestamp", "ssrc", "payload"):
        assert getattr(got, name) == getattr(sent, name), name
    assert got.extensions.abs_send_time == 0x123456 and got.extensions.mid == "7"
    assert got.csrc == [1, 2] and got.padding_size == 0
    assert _fastpath.parse_rtp(data, 0, 0).extensions.mid is None  # ids not negotiated
    # malformed: truncated, wrong version, padding longer than the packet
    for bad in (data[:14], b"\x00" * 40, b"\xa0" + data[1:12] + b"\xff"):
        assert _fastpath.parse_rtp(bad, 3, 1) is None


async def test_reader_drains_the_socket_decrypts_rtp_and_hands_on_the_rest() -> None:
    import asyncio

    from sfu.aiortc_hooks import _SRTP_UNPROTECT, _SRTP_UNPROTECT_RTCP

    tx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND))
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    client.bind(("127.0.0.1", 0))

    class Dtls:  # aiortc's counters, which the reader keeps
        _RTCDtlsTransport__rx_packets = 0
        _RTCDtlsTransport__rx_bytes = 0

    other: list[tuple[bytes, tuple[str, int]]] = []
    rtp: list[tuple[object, int]] = []
    rtcp: list[bytes] = []
    reader = _fastpath.Reader(server.fileno(), lambda d, a: other.append((d, a)), print)
    dtls, live = Dtls(), _fastpath.Live(True)
    ctx = int(srtp_ffi.cast("uintptr_t", rx._srtp[0]))
    reader.set_rtp(
        ctx,
        _SRTP_UNPROTECT,
        _SRTP_UNPROTECT_RTCP,
        rx,
        dtls,
        live,
        lambda p, ms: rtp.append((p, ms)),
        rtcp.append,
        0,
        0,
    )
    loop = asyncio.get_running_loop()
    loop.add_reader(server.fileno(), reader)
    try:
        plain = [struct.pack("!BBHII", 0x80, 96, seq, 1000, 42) + b"media" for seq in range(5)]
        for p in plain:
            client.sendto(tx.protect(p), server.getsockname())
        client.sendto(b"\x00\x01stun-ish", server.getsockname())
        client.sendto(struct.pack("!BBHII", 0x80, 96, 9, 1, 42) + b"forged", server.getsockname())
        receiver_report = struct.pack("!BBHI", 0x80, 201, 1, 42)  # RR, no report blocks
        client.sendto(tx.protect_rtcp(receiver_report), server.getsockname())
        for _ in range(100):
            if len(rtp) == 5 and other and rtcp:
                break
            await asyncio.sleep(0.01)
        assert [p.sequence_number for p, _ in rtp] == [0, 1, 2, 3, 4]  # the forgery is dropped
        assert all(p.payload == b"media" and p.arrival_ns > 0 for p, _ in rtp)
        assert abs(rtp[0][1] / 1000 - 2208988800 - time.time()) < 5  # NTP-epoch ms, like aiortc
        assert other == [(b"\x00\x01stun-ish", client.getsockname())]
        assert rtcp == [receiver_report]
        datagrams, wakeups = reader.stats
        assert datagrams == 8 and wakeups < 8  # several datagrams per event-loop callback
        assert dtls._RTCDtlsTransport__rx_packets == 7 == reader.rx[0]  # aiortc's counters

        live.connected = False  # no longer ours to decrypt: handed to the protocol as is
        client.sendto(tx.protect(struct.pack("!BBHII", 0x80, 96, 5, 1, 42)), server.getsockname())
        for _ in range(100):
            if len(other) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(other) == 2 and not reader.rtp and len(rtp) == 5
    finally:
        loop.remove_reader(server.fileno())
        server.close()
        client.close()


def test_reader_takes_a_burst_in_few_system_calls_and_drops_an_oversized_datagram() -> None:
    """recvmmsg: 40 queued datagrams are read in one callback, in order; one larger than
    any WebRTC datagram (truncated by the kernel) is dropped, not handed on cut short."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    server.setblocking(False)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    got: list[bytes] = []
    reader = _fastpath.Reader(server.fileno(), lambda d, a: got.append(d), print)
    try:
        sent = [b"\x00\x01" + bytes([i]) * (100 + i) for i in range(40)]
        for i, d in enumerate(sent):
            client.sendto(d, server.getsockname())
            if i == 20:
                client.sendto(b"\x00\x01" + bytes(9000), server.getsockname())
        time.sleep(0.05)
        reader()  # one read callback
        assert got == sent
        assert reader.stats == (40, 1)  # the oversized one is not counted as read
    finally:
        server.close()
        client.close()


def test_one_read_callback_takes_a_full_batch_of_what_queued() -> None:
    """What queued while the loop ran timers is read in one callback, up to READ_BATCH
    (256): the rest would wait for the loop's next iteration, behind the wheel's next go.
    With 64 the SFU p99 at 75 rooms x 3 was 21-47 ms instead of 9-10 (docs/bench.md)."""
    assert _fastpath.READ_BATCH == 256
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    server.setblocking(False)
    got: list[bytes] = []
    reader = _fastpath.Reader(server.fileno(), lambda d, a: got.append(d), print)
    try:
        sent = [b"\x00\x01" + i.to_bytes(2, "big") * 50 for i in range(300)]
        for d in sent:
            client.sendto(d, server.getsockname())
        time.sleep(0.05)
        reader()
        assert got == sent[:256]
        reader()
        assert got == sent
        assert reader.stats == (300, 2)
    finally:
        server.close()
        client.close()


def _reader_with_rtp(fd: int, rtp: list, other: list | None = None, on_rtp=None) -> tuple:
    """A Reader on fd that decrypts SRTP with KEY and hands packets to rtp (or on_rtp)."""
    from sfu.aiortc_hooks import _SRTP_UNPROTECT, _SRTP_UNPROTECT_RTCP

    class Dtls:  # aiortc's counters, which the reader keeps
        _RTCDtlsTransport__rx_packets = 0
        _RTCDtlsTransport__rx_bytes = 0

    rx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND))
    reader = _fastpath.Reader(
        fd, lambda d, a: (other if other is not None else []).append(d), print
    )
    ctx = int(srtp_ffi.cast("uintptr_t", rx._srtp[0]))
    reader.set_rtp(
        ctx,
        _SRTP_UNPROTECT,
        _SRTP_UNPROTECT_RTCP,
        rx,
        Dtls(),
        _fastpath.Live(True),
        on_rtp or (lambda p, ms: rtp.append(p)),
        print,
        0,
        0,
    )
    return reader, rx


def test_a_packets_arrival_is_when_the_kernel_received_it_not_when_it_was_read() -> None:
    """The SFU's forwarding latency is measured from Packet.arrival_ns: a datagram that
    waited 50 ms in the socket (for the event loop, or a coalescing window) counts
    those 50 ms."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    tx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rtp: list = []
    reader, _rx = _reader_with_rtp(server.fileno(), rtp)
    try:
        sent = time.perf_counter_ns()
        client.sendto(
            tx.protect(struct.pack("!BBHII", 0x80, 96, 1, 1000, 42) + b"media"),
            server.getsockname(),
        )
        time.sleep(0.05)
        read = time.perf_counter_ns()
        reader()
        (p,) = rtp
        assert sent <= p.arrival_ns  # the kernel's time, on the perf_counter clock
        assert read - p.arrival_ns >= 40_000_000
    finally:
        server.close()
        client.close()


def test_the_generators_e2e_latency_ends_when_its_kernel_received_the_frame() -> None:
    """The bench's subscribers (an RxTally as the C Reader's on_rtp) measure end-to-end
    latency up to the kernel's receive time on their socket: a frame that waited 50 ms
    for a busy generator to read it does not count those 50 ms (docs/bench.md)."""
    from types import SimpleNamespace

    from bench.media import MAGIC, TRAILER

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    tx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    e2e: list[int] = []
    flows: dict[int, _fastpath.RxFlow] = {}

    def learn(packet):
        flows[packet.ssrc] = _fastpath.RxFlow("p_a", "video")
        return flows[packet.ssrc]

    tally = _fastpath.RxTally(SimpleNamespace(active=True), e2e, {}, learn)
    arrivals: list[int] = []

    def on_rtp(packet, ntp_ms):
        arrivals.append(packet.arrival_ns)  # the kernel's receive time (test above)
        return tally(packet, ntp_ms)

    reader, _rx = _reader_with_rtp(server.fileno(), [], on_rtp=on_rtp)
    try:
        sent = time.perf_counter_ns()
        frame = struct.pack("!BBHII", 0x80, 0x80 | 96, 1, 1000, 42) + b"v" * 40
        client.sendto(tx.protect(frame + TRAILER.pack(MAGIC, 0, 7, sent)), server.getsockname())
        time.sleep(0.05)
        read = time.perf_counter_ns()
        reader()
        assert flows[42].frames == 1 and len(e2e) == 1
        # From the stamp the frame carries to the kernel's receive time, to the ns; that
        # lies before the read began, so the 50 ms in the socket are not in it (whatever
        # the machine's load: no bound on wall time).
        assert e2e == [arrivals[0] - sent]
        assert sent <= arrivals[0] < read
    finally:
        server.close()
        client.close()


async def test_read_coalescing_reads_once_per_window_in_order_and_bytes_unchanged() -> None:
    """Reader.coalesce(loop, window): the first datagram after a quiet spell is read at
    once; what follows within the window waits for the window's poll and is read in one
    batch, in order and unchanged; a poll that finds nothing hands the socket back to
    the loop; stop() cancels the next poll."""
    import asyncio

    from tests.media import wait_for

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    tx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rtp: list = []
    other: list[bytes] = []
    reader, _rx = _reader_with_rtp(server.fileno(), rtp, other)
    loop = asyncio.get_running_loop()
    loop.add_reader(server.fileno(), reader)
    reader.coalesce(loop, 0.2)  # a long window, so that a loaded machine cannot blur it
    plain = [
        struct.pack("!BBHII", 0x80, 96, seq, 1000 + seq, 42) + bytes([seq]) * (50 + seq)
        for seq in range(12)
    ]

    def until(cond, within: float = 3.0):  # polls every 2 ms: the window is 200
        return wait_for(cond, timeout=within, interval=0.002)

    try:
        t0 = time.monotonic()
        client.sendto(tx.protect(plain[0]), server.getsockname())
        await until(lambda: len(rtp) == 1)
        # read at once, by the loop's own callback, not a poll
        assert len(rtp) == 1 and reader.stats == (1, 1) and reader.polls == 0
        assert reader.paused  # ... and the socket is unwatched for the window
        for p in plain[1:6]:
            client.sendto(tx.protect(p), server.getsockname())
        client.sendto(b"\x00\x01not-srtp", server.getsockname())
        await until(lambda: len(rtp) == 6)
        waited = time.monotonic() - t0
        assert waited > 0.18  # the window (0.2 s) from the first read
        assert other == [b"\x00\x01not-srtp"]
        datagrams, wakeups = reader.stats
        assert (datagrams, wakeups) == (7, 2) and reader.polls == 1  # one batch
        # Media keeps flowing: poll after poll, in order, bytes as sent.
        for p in plain[6:]:
            client.sendto(tx.protect(p), server.getsockname())
        await until(lambda: len(rtp) == 12)
        assert [
            struct.pack("!BBHII", 0x80, 96, p.sequence_number, p.timestamp, p.ssrc) + p.payload
            for p in rtp
        ] == plain
        # A poll that finds nothing gives the socket back to the loop.
        await until(lambda: not reader.paused)
        assert not reader.paused
        polls = reader.polls
        client.sendto(
            tx.protect(struct.pack("!BBHII", 0x80, 96, 12, 1, 42) + b"x"), server.getsockname()
        )
        await until(lambda: len(rtp) == 13)
        assert reader.polls == polls  # read at once again, by the loop's callback
        assert reader.paused
        reader.stop()
        assert not reader.paused
        client.sendto(
            tx.protect(struct.pack("!BBHII", 0x80, 96, 13, 1, 42) + b"y"), server.getsockname()
        )
        await asyncio.sleep(0.5)
        assert len(rtp) == 13  # stopped: no poll reads the socket any more
    finally:
        loop.remove_reader(server.fileno())
        server.close()
        client.close()


def test_a_publishing_leg_stamps_abs_send_time() -> None:
    leg, _ = make_leg()
    # mid (id 1, "0") then abs-send-time (id 3, 3 bytes), padded to whole words
    ext = b"\xbe\xde\x00\x02" + b"\x10" + b"0" + b"\x32" + b"\x00\x00\x00" + b"\x00\x00"
    leg.configure(96, 1, 90000, ext, 7)
    data, _ = leg.rewrite(b"x", False, 1, 1, 1)
    got = _fastpath.parse_rtp(data, 3, 1)
    now = int((time.time() + 2208988800) * (1 << 18)) & 0xFFFFFF
    assert got.mid == "0" and abs(got.abs_send_time - now) < (1 << 18)  # within a second
    with pytest.raises(ValueError):
        leg.configure(96, 1, 90000, ext, 10)  # would write past the block


def test_fanout_sends_to_ready_legs_and_returns_the_rest() -> None:
    tx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)

    try:
        routed, waiting, unrouted = (make_leg()[0] for _ in range(3))
        ctx = int(srtp_ffi.cast("uintptr_t", tx._srtp[0]))
        port = receiver.getsockname()[1]
        routed.set_route(ctx, _SRTP_PROTECT, tx, sender, "127.0.0.1", port, _fastpath.Live(True))
        routed.ready = unrouted.ready = True  # `waiting` stays not ready (e.g. a key frame)
        legs = [routed, waiting, unrouted]
        slow = _fastpath.fanout(legs, b"x", False, 1, 1, 1, time.perf_counter_ns())
        assert slow == [(1, None), (2, False)]
        assert receiver.recv(2048)  # the ready, routed leg sent at once
        assert routed.ready and not unrouted.ready  # a leg that could not send waits now
        assert _fastpath.fanout([routed], b"x", False, 2, 1, 1, 0) is None
        with pytest.raises(TypeError):
            _fastpath.fanout([object()], b"x", False, 2, 1, 1, 0)
    finally:
        receiver.close()
        sender.close()


def test_oversized_payloads_are_dropped_on_the_way_in() -> None:
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from sfu.forwarder import MAX_PAYLOAD, Forwarder

    opus = RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111
    )
    stats = RoomStats()
    forwarder = Forwarder("t", "p", "audio", None, stats, 0.3)  # type: ignore[arg-type]
    forwarder.set_codecs([opus])
    for size in (MAX_PAYLOAD, MAX_PAYLOAD + 1, 4000):
        data = struct.pack("!BBHII", 0x80, 111, size, 0, 7) + b"\x01" * size
        forwarder.tap(_fastpath.parse_rtp(data, 0, 0), {111: opus})
    assert stats.packets_in == 1 and stats.bytes_in == MAX_PAYLOAD


def test_parse_rtp_agrees_with_aiortc_on_random_and_mangled_packets() -> None:
    """The C parser reads what authenticated participants send: it must never read out of
    bounds, and must accept and decode exactly what aiortc's parser does."""
    import random

    extensions = aiortc_extensions()
    rng = random.Random(7)
    agreed = 0
    for i in range(20_000):
        packet = RtpPacket(96, rng.randint(0, 1), rng.getrandbits(16), rng.getrandbits(32), 5)
        packet.payload = rng.randbytes(rng.randint(0, 40))
        packet.csrc = [rng.getrandbits(32) for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.7:
            packet.extensions.abs_send_time = rng.getrandbits(24)
        if rng.random() < 0.7:
            packet.extensions.mid = str(rng.randint(0, 99))
        data = bytearray(packet.serialize(extensions))
        if rng.random() < 0.3:
            data[0] |= 0x20  # claim padding: the last byte says how much
        for _ in range(rng.choice((0, 0, 1, 3))):  # then mangle some bytes
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        data = bytes(data[: rng.randint(0, len(data))] if i % 5 == 0 else data)
        try:
            want = RtpPacket.parse(data, extensions)
        except (ValueError, struct.error):  # struct: an abs-send-time not 3 bytes long
            want = None
        got = _fastpath.parse_rtp(data, 3, 1)
        if want is None or got is None:
            assert want is None and got is None, data.hex()
            continue
        for name in ("marker", "payload_type", "sequence_number", "timestamp", "ssrc"):
            assert getattr(got, name) == getattr(want, name), (name, data.hex())
        assert (got.payload, got.padding_size, got.csrc) == (
            want.payload,
            want.padding_size,
            want.csrc,
        ), data.hex()
        assert got.abs_send_time == want.extensions.abs_send_time, data.hex()
        assert got.mid == want.extensions.mid, data.hex()
        agreed += 1
    assert agreed > 10_000


def test_objects_created_without_init_refuse_instead_of_crashing() -> None:
    leg = _fastpath.Leg.__new__(_fastpath.Leg)
    leg.configure(96, 1, 90000, b"")
    assert leg.send(b"x", False, 1, 1, 1, 0) is False
    assert _fastpath.fanout([leg], b"x", False, 1, 1, 1, 0) == [(0, None)]
    with pytest.raises(RuntimeError):
        _fastpath.Reader.__new__(_fastpath.Reader)()
    with pytest.raises(RuntimeError):
        _fastpath.Inbound.__new__(_fastpath.Inbound)(_fastpath.parse_rtp(bytes(12), 0, 0), 0)
    track = _fastpath.Track.__new__(_fastpath.Track)
    inbound = _fastpath.Inbound(lambda p, ms: None)
    inbound.tracks[0] = track  # a Track without init takes nothing
    inbound(_fastpath.parse_rtp(struct.pack("!BBHII", 0x80, 96, 1, 1, 0) + b"x", 0, 0), 0)
    assert track.counts == (0, 1)


def test_inbound_forwards_and_accounts_exactly_as_the_python_path() -> None:
    """The C Inbound takes in-order packets of a registered track; what it sends and how
    it leaves aiortc's receive statistics and NACK state must equal the Python path
    (Forwarder.tap's fan-out, then StreamStatistics.add and NackGenerator.add) for the
    same packets: gaps, reordering, duplicates, a sequence wrap, and another payload
    type (RTX) that only Python handles."""
    from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics

    from sfu.forwarder import MAX_PAYLOAD

    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for s in sinks:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)

    class Receiver:
        _enabled = True

    def path(sink: socket.socket) -> tuple[list, RoomStats, dict, NackGenerator]:
        stats = RoomStats()
        tx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))  # one per path
        sessions.append(tx)
        ctx = int(srtp_ffi.cast("uintptr_t", tx._srtp[0]))
        leg = _fastpath.Leg(stats.meter, 4000, 77)
        leg.configure(96, 0xCAFE, 90000, b"")
        leg.set_route(
            ctx, _SRTP_PROTECT, tx, sender, "127.0.0.1", sink.getsockname()[1], _fastpath.Live(True)
        )
        leg.ready = True
        return [leg], stats, {}, NackGenerator()

    def python_path(legs, stats, streams, nack, packet) -> None:
        if packet.payload_type == 96 and 0 < len(packet.payload) <= MAX_PAYLOAD:
            stats.meter.received(len(packet.payload))
            assert (
                _fastpath.fanout(
                    legs,
                    packet.payload,
                    packet.marker,
                    packet.sequence_number,
                    packet.timestamp,
                    packet.ssrc,
                    packet.arrival_ns,
                )
                is None
            )
        stream = streams.setdefault(packet.ssrc, StreamStatistics(90000))
        stream.add(packet)
        if packet.payload_type == 96:
            nack.add(packet)

    sessions: list[Session] = []
    py_legs, py_stats, py_streams, py_nack = path(sinks[0])
    c_legs, c_stats, c_streams, c_nack = path(sinks[1])
    fallback_calls = []

    def fallback(packet, ms) -> None:
        fallback_calls.append(packet.sequence_number)
        python_path(c_legs, c_stats, c_streams, c_nack, packet)

    track = _fastpath.Track(c_stats.meter, c_legs, lambda p, slow: pytest.fail("slow"), MAX_PAYLOAD)
    track.payload_type = 96
    active: dict = {}
    track.account(Receiver(), c_streams, c_nack, active, lambda: "now", None, print)
    inbound = _fastpath.Inbound(fallback)
    inbound.tracks[0x1234] = track

    # ... then 12 lost and never repaired: the in-order packets after a loss go the C
    # way too, and both paths age 3 and 4 out of the NACK state (128 behind the newest)
    seqs = [65530, 65531, 65532, 65534, 65533, 65535, 0, 0, 1, 5, 2, 6, 7, 8, 9, 10, 11]
    seqs += list(range(13, 136))
    for n, seq in enumerate(seqs):
        pt = 97 if n == 12 else 96  # one retransmission-like packet of another type
        data = struct.pack(
            "!BBHII", 0x80, (0x80 if n % 3 == 0 else 0) | pt, seq, 1000 + 3000 * (n // 2), 0x1234
        )
        data += bytes([n]) * (100 + n)
        for legs, stats, streams, nack, call in (
            (py_legs, py_stats, py_streams, py_nack, None),
            (c_legs, c_stats, c_streams, c_nack, inbound),
        ):
            packet = _fastpath.parse_rtp(data, 0, 0)
            packet.arrival_ns = time.perf_counter_ns()
            if call is None:
                python_path(legs, stats, streams, nack, packet)
            else:
                call(packet, 3_900_000_000_000 + n)
    try:
        fast, slow = track.counts
        assert slow == len(fallback_calls) == len(seqs) - fast
        # in C: 65531, 65532, 65535, 0, 1, 6 (3 and 4 still missing), 9, 10, 11 (8 came
        # after the other payload type's 7), 14..135; the rest through Python
        assert fast == 9 + 122
        assert active == {0x1234: "now"}
        sent: list[list[bytes]] = []
        for s in sinks:
            rx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND))
            s.settimeout(0.2)
            got = []
            with pytest.raises(TimeoutError):
                while True:
                    got.append(rx.unprotect(s.recv(2048)))
            sent.append(got)
        # the same bytes: SSRC, sequence numbers, timestamps, payloads (the duplicate is
        # refused by SRTP on both paths)
        assert len(sent[0]) >= len(seqs) - 2 and sent[0] == sent[1]
        a, b = py_streams[0x1234], c_streams[0x1234]
        fields = (
            "base_seq",
            "max_seq",
            "cycles",
            "packets_received",
            "_last_timestamp",
            "packets_expected",
            "packets_lost",
        )
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
        # jitter comes from each path's own arrival clock (time.time() × clock rate), so
        # it cannot be compared exactly on a busy machine: both must have moved it on
        assert b._last_arrival == pytest.approx(time.time() * 90000, abs=5 * 90000)
        assert a.jitter >= 0 and b.jitter >= 0
        assert (py_nack.max_seq, py_nack.missing) == (c_nack.max_seq, c_nack.missing)
        assert py_nack.missing == {7, 12}  # 3 and 4 aged out on both paths
        assert (py_stats.packets_in, py_stats.bytes_in, py_stats.packets_out) == (
            c_stats.packets_in,
            c_stats.bytes_in,
            c_stats.packets_out,
        )
    finally:
        sender.close()
        for s in sinks:
            s.close()


def test_inbound_walks_the_missing_set_only_when_a_loss_can_age_out() -> None:
    """On a lossy uplink that is never repaired, the C Inbound ages lost packets out of
    aiortc's NACK state as NackGenerator does, but walks the set (a list, an iterator
    and a PyLong per entry) only when the oldest one can age out, not for every packet
    it takes; what it forwards and the NACK state stay what Python makes of them."""
    from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics

    from sfu.forwarder import MAX_PAYLOAD

    class CountingSet(set):
        walks = 0

        def __iter__(self):  # noqa: ANN204
            self.walks += 1
            return super().__iter__()

    class Receiver:
        _enabled = True

    stats = RoomStats()
    nack, reference = NackGenerator(), NackGenerator()
    nack.missing = CountingSet()
    streams: dict = {}

    def fallback(packet, ms) -> None:  # the Python path: what tap_receiver does
        streams.setdefault(packet.ssrc, StreamStatistics(90000)).add(packet)
        nack.add(packet)

    track = _fastpath.Track(stats.meter, [], lambda p, slow: pytest.fail("slow"), MAX_PAYLOAD)
    track.payload_type = 96
    track.account(Receiver(), streams, nack, {}, lambda: "now", None, print)
    inbound = _fastpath.Inbound(fallback)
    inbound.tracks[0x1234] = track
    walks = 0
    for n, seq in enumerate([0, 1, 2, 4, *range(5, 300)]):  # 3 is lost for good
        data = struct.pack("!BBHII", 0x80, 96, seq, 3000 * n, 0x1234) + bytes(100)
        packet = _fastpath.parse_rtp(data, 0, 0)
        packet.arrival_ns = time.perf_counter_ns()
        if seq == 5:
            walks = nack.missing.walks  # from here on C takes every packet
        inbound(packet, 3_900_000_000_000 + n)
        reference.add(_fastpath.parse_rtp(data, 0, 0))
        assert (nack.max_seq, set(nack.missing)) == (reference.max_seq, reference.missing), seq
    # all in C but the first (no statistics yet) and the one after the loss
    assert track.counts == (297, 2) and stats.packets_in == 297
    assert nack.missing.walks - walks <= 3  # not one per packet while 3 was missing


def vp8_descriptor(pid: int | None, tl0: int | None = None, wide: bool = True) -> bytes:
    """A VP8 payload descriptor (RFC 7741) starting a frame, then one byte of frame."""
    x = (0x80 if pid is not None else 0) | (0x40 if tl0 is not None else 0)
    out = bytes([0x90 if x else 0x10])
    if x:
        out += bytes([x])
    if pid is not None:
        out += bytes([0x80 | pid >> 8, pid & 0xFF]) if wide else bytes([pid & 0x7F])
    if tl0 is not None:
        out += bytes([tl0])
    return out + b"\x01"


def picture(data: bytes) -> tuple[int | None, int | None]:
    """(PictureID, TL0PICIDX) of a rewritten packet's descriptor (no header extension)."""
    p = data[12:]
    if not p[0] & 0x80 or not p[1] & 0x80:
        return None, None
    wide = bool(p[2] & 0x80)
    pid = ((p[2] & 0x7F) << 8 | p[3]) if wide else p[2]
    at = 4 if wide else 3
    return pid, (p[at] if p[1] & 0x40 else None)


def test_vp8_picture_ids_continue_across_sources_and_keep_gaps_within_one() -> None:
    leg, _ = make_leg()
    leg.vp8 = True
    out = []
    for ssrc, pid, tl0, wide in [
        (1, 32766, 254, True),  # the first source keeps its numbers ...
        (1, 32767, 255, True),
        (1, 1, 1, True),  # ... and its gaps (0 was lost upstream): wraps on 15 bits
        (2, 5000, 40, True),  # a switch: the next picture id and TL0PICIDX
        (2, 4999, 39, True),  # a late packet of the new source: shifted the same way
        (2, 5001, 41, True),
        (3, None, None, True),  # no picture id yet: nothing to shift
        (3, 126, None, False),  # 7 bits stay 7 bits, continuing from 5001's output (3)
        (3, 127, None, False),
        (3, 0, None, False),  # and wrap at 128
        (4, 7, 9, True),  # TL0PICIDX again after a source without it: continues
    ]:
        data, _ = leg.rewrite(vp8_descriptor(pid, tl0, wide), False, len(out), 0, ssrc)
        # a NACK gets the packet as it was sent, with the rewritten picture id
        assert leg.history(struct.unpack("!H", data[2:4])[0]) == data
        out.append(picture(data))
    assert out == [
        (32766, 254),
        (32767, 255),
        (1, 1),
        (2, 2),
        (1, 1),
        (3, 3),
        (None, None),
        (4, None),
        (5, None),
        (6, None),
        (7, 4),
    ]
    # Without Leg.vp8 (another codec, or a publishing leg) the payload is untouched.
    plain, _ = make_leg()
    payload = vp8_descriptor(300, 9)
    assert plain.rewrite(payload, False, 1, 0, 1)[0][12:] == payload
    assert plain.rewrite(payload, False, 2, 0, 2)[0][12:] == payload


class Wire:
    """A leg's route to a loopback receiver: SRTP out with KEY, and what arrives
    unprotected again, so a test reads the exact bytes the subscriber gets."""

    def __init__(self) -> None:
        self.tx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        self.rx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND))
        self.receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiver.bind(("127.0.0.1", 0))
        self.receiver.settimeout(2)

    def route(self, leg: object, *transport: object) -> None:
        ctx = int(srtp_ffi.cast("uintptr_t", self.tx._srtp[0]))
        port = self.receiver.getsockname()[1]
        args = (ctx, _SRTP_PROTECT, self.tx, self.sender, "127.0.0.1", port, _fastpath.Live(True))
        leg.set_route(*args, *transport)  # type: ignore[attr-defined]

    def recv(self) -> bytes:
        return self.rx.unprotect(self.receiver.recv(2048))

    def close(self) -> None:
        self.receiver.close()
        self.sender.close()


def test_vp8_picture_ids_continue_across_a_pause_and_resume_of_the_same_layer() -> None:
    """A park (hidden tile, allocator pause) and resume on the same layer rebases the
    leg; the resume starts at a key frame, where the picture ids are re-synced too, so the
    subscriber sees no jump by the pictures skipped meanwhile (as mediasoup's and
    LiveKit's mungers do). A rebase that resumes within a picture keeps the offset. The
    C send path and the Python path (``rewrite``) give the same bytes."""
    wire = Wire()

    def key(pid: int, tl0: int) -> bytes:
        return vp8_descriptor(pid, tl0)[:-1] + b"\x00"  # frame tag P bit clear

    try:
        c_leg, py_leg = make_leg()[0], make_leg()[0]
        c_leg.vp8 = py_leg.vp8 = True
        wire.route(c_leg)
        stream = [(key(100, 10), 50)] + [
            (vp8_descriptor(p, 10 + p - 100), p - 50) for p in (101, 102)
        ]
        stream += ["park"]
        # 20 s later, the same SSRC: picture 700 is the key frame the resume asks for
        stream += [(key(700, 60), 650)] + [(vp8_descriptor(p, p - 640), p - 50) for p in (701, 702)]
        # a rebase resuming within a picture (S bit clear: not a key frame's first packet)
        middle = bytes([0x80]) + vp8_descriptor(710, 70)[1:]
        stream += ["park", (middle, 660)]
        c_out, py_out = [], []
        for item in stream:
            if item == "park":
                c_leg.rebase()
                py_leg.rebase()
                continue
            payload, seq = item
            assert c_leg.send(payload, False, seq, seq * 3000, 1, time.perf_counter_ns()) is None
            c_out.append(wire.recv())
            py_out.append(py_leg.rewrite(payload, False, seq, seq * 3000, 1)[0])
        assert c_out == py_out
        assert [picture(p) for p in c_out] == [
            (100, 10),
            (101, 11),
            (102, 12),
            (103, 13),  # was (700, 60): a jump by the 597 pictures skipped while parked
            (104, 14),
            (105, 15),
            (113, 23),  # within a picture: the offset of before (+ upstream's gap)
        ]
        seqs = [header(p)[2] for p in c_out]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # and no sequence gap
    finally:
        wire.close()


def test_a_layers_key_frames_go_to_python_exactly_where_python_sees_one() -> None:
    """Track.keys: the first packet of a VP8 key frame is handed to Python (which moves
    legs to the layer), every other packet stays in C; C's key-frame test must agree
    with sfu.codecs.vp8_keyframe_start on any payload, mangled or short."""
    import random

    from sfu.codecs import vp8_keyframe_start
    from sfu.forwarder import MAX_PAYLOAD

    stats = RoomStats()
    handed: list[bytes] = []
    inbound = _fastpath.Inbound(lambda p, ms: handed.append(p.payload))
    track = _fastpath.Track(stats.meter, [], lambda p, slow: None, MAX_PAYLOAD)
    track.payload_type = 96
    track.keys = True
    inbound.tracks[5] = track
    rng = random.Random(3)
    want = []
    for i in range(5000):
        payload = vp8_descriptor(
            rng.choice((None, rng.getrandbits(15))), rng.choice((None, rng.getrandbits(8)))
        )[:-1] + bytes([rng.getrandbits(8) & rng.choice((0xFE, 0xFF))])
        payload = bytearray(payload + rng.randbytes(rng.randint(0, 3)))
        if rng.random() < 0.3:
            payload[rng.randrange(len(payload))] = rng.getrandbits(8)
        payload = bytes(payload[: rng.randint(1, len(payload))] if i % 4 == 0 else payload)
        packet = _fastpath.parse_rtp(struct.pack("!BBHII", 0x80, 96, i, 0, 5) + payload, 0, 0)
        packet.arrival_ns = 1000 + i
        before = len(handed)
        inbound(packet, 0)
        assert (len(handed) > before) == vp8_keyframe_start(payload), payload.hex()
        want.append(vp8_keyframe_start(payload))
    assert 300 < sum(want) < 4700  # both kinds were tried
    assert track.last_ns == 1000 + max(i for i, key in enumerate(want) if not key)


def test_the_nack_history_answers_with_the_bytes_that_went_out_without_copying() -> None:
    """The history keeps a reference to the received payload and what the leg wrote
    around it (header, abs-send-time, a VP8 descriptor renumbered at a switch of
    source); a NACK is answered with exactly the bytes the subscriber got, and a send
    that cannot go out now hands back exactly the packet it would have sent."""
    wire = Wire()
    leg, _ = make_leg()
    ext = b"\xbe\xde\x00\x02" + b"\x10" + b"0" + b"\x32" + b"\x00\x00\x00" + b"\x00\x00"
    leg.configure(96, 0xCAFE, 90000, ext, 7)
    leg.vp8 = True
    wire.route(leg)
    payloads = []
    try:
        for i, (ssrc, pid) in enumerate([(1, 100), (1, 101), (2, 7000), (2, 7001)]):
            payload = vp8_descriptor(pid, 3) + bytes([i]) * 300
            payloads.append(payload)
            before = sys.getrefcount(payload)
            assert leg.send(payload, i % 2 == 1, 50 + i, 9000 * i, ssrc, 0) is None
            assert sys.getrefcount(payload) == before + 1  # kept by reference, not copied
            plain = wire.recv()
            assert leg.history(header(plain)[2]) == plain
            time.sleep(0.002)  # a new abs-send-time for each
        # The second source was renumbered (VP8 picture ids continue): the history has
        # the renumbered bytes, not the publisher's.
        sent = leg.history(header(plain)[2])
        assert picture(sent[:12] + sent[24:]) == (103, 4)  # 12 bytes of extension block

        # Earlier writes queued in asyncio's transport: the packet comes back
        # unprotected, to queue behind them, exactly as the history has it (a send that
        # would block rebuilds it from the history the same way).
        class Buffered:
            _buffer_size = 1

        wire.route(leg, Buffered())
        queued = leg.send(payloads[-1], False, 60, 0, 2, 0)
        assert isinstance(queued, bytes) and queued == leg.history(header(queued)[2])
        assert queued[24:] != payloads[-1] and queued[29:] == payloads[-1][5:]
    finally:
        wire.close()
    # A new negotiation may change the header: what was sent before is not answered.
    seq = header(plain)[2]
    leg.configure(96, 0xCAFE, 90000, ext, 7)
    assert leg.history(seq) is None


def l1t3(pid: int, tl0: int, tid: int, start: bool, sync: bool = False) -> bytes:
    """One packet of a VP8 L1T3 stream (Chromium's simulcast layers): descriptor with
    PictureID (15 bits), TL0PICIDX and TID, starting a picture or continuing one."""
    tk = tid << 6 | (0x20 if sync else 0)
    return bytes([0x90 if start else 0x80, 0xE0, 0x80 | pid >> 8, pid & 0xFF, tl0, tk, 0x01])


def l1t3_fields(data: bytes) -> tuple[int, int, int, int]:
    """(seq, PictureID, TL0PICIDX, TID) of a packet a leg rewrote (no extension)."""
    p = data[12:]
    return header(data)[2], (p[2] & 0x7F) << 8 | p[3], p[4], p[5] >> 6


def l1t3_stream(pictures: int, first_pid: int = 32760, per_picture: int = 2) -> list:
    """(seq, payload, tid, pid) of ``pictures`` pictures as Chromium's VP8 L1T3 sends
    them: layers 0-2-1-2, and the T2 and T1 after every other T0 refer only to it (Y
    set; its encoded frames' dependencies show this 8-picture cycle). The picture ids
    wrap on 15 bits."""
    out, tl0, seq = [], 17, 40000
    for i in range(pictures):
        tid = (0, 2, 1, 2)[i % 4]
        tl0 += tid == 0
        pid = (first_pid + i) & 0x7FFF
        for k in range(per_picture):
            out.append((seq, l1t3(pid, tl0 & 0xFF, tid, k == 0, i % 8 in (1, 2)), tid, pid))
            seq += 1
    return out


def test_temporal_thinning_leaves_no_holes_and_changes_at_picture_boundaries() -> None:
    """Leg.temporal forwards temporal layers up to a limit (a link filling up: the frame
    rate falls, no key frame needed). What goes out is a stream without holes, as if the
    publisher had sent only those layers: sequence numbers and picture ids run on, the
    TL0PICIDX is untouched. A lower limit starts at the next picture, a higher one at the
    next picture with the Y bit (nothing after it refers to a picture left out); a
    picture is never cut in half."""
    leg, _ = make_leg(seq=65530)
    leg.vp8 = True
    stream = l1t3_stream(24)  # 48 packets
    sent = []
    for i, (seq, payload, _tid, _pid) in enumerate(stream):
        if i == 9:  # the second packet of picture 4 (layer 0): thin from picture 5 on
            leg.temporal = 0
            assert leg.temporal == 0 and leg.temporal_now is None
        if i == 29:  # the second packet of picture 14 (layer 1): all from picture 17 (Y) on
            leg.temporal = None
        if i in (30, 33):  # pictures 15 and 16 come before the next Y: still thinned
            assert leg.temporal_now == 0
        r = leg.rewrite(payload, False, seq, 0, 1)
        if r is not None:
            sent.append((i, l1t3_fields(r[0])))
    assert leg.temporal_now is None
    forwarded = [i for i, _ in sent]
    want = list(range(10)) + [i for i in range(10, 34) if stream[i][2] == 0] + list(range(34, 48))
    assert forwarded == want
    seqs = [f[0] for _, f in sent]
    assert seqs == [(65531 + k) & 0xFFFF for k in range(len(sent))]  # wraps, no hole
    pids = [f[1] for _, f in sent]
    pictures = sorted(set(pids), key=pids.index)
    assert pictures == [(32760 + k) & 0x7FFF for k in range(len(pictures))]
    assert [f[2] for _, f in sent] == [stream[i][1][4] for i in forwarded]  # TL0PICIDX as is
    assert leg.take_counters()[8] == 48 - len(sent)


def test_a_late_packet_finds_its_place_among_what_temporal_thinning_left_out() -> None:
    """A packet that comes late (reordered, or repaired upstream) gets the sequence
    number and picture id it would have had in order; a repeat of a packet thinned out
    is left out too; an upstream gap stays a gap."""
    stream = l1t3_stream(16)  # layer 0: pictures 0, 4, 8, 12 = packets 0-1, 8-9, 16-17, 24-25
    late = {9: 14, 16: 24}  # packet -> arrives after this one
    lost = 25  # lost upstream for good
    order = [i for i in range(32) if i not in late and i != lost]
    for i, after in late.items():
        order.insert(order.index(after) + 1, i)
    order.insert(order.index(20) + 1, 6)  # a repeat of a thinned packet (picture 3, TID 2)
    leg, _ = make_leg(seq=100)
    leg.vp8 = True
    leg.temporal = 0
    out = {}
    for i in order:
        r = leg.rewrite(stream[i][1], False, stream[i][0], 0, 1)
        if r is not None:
            out[i] = l1t3_fields(r[0])
    # As if only layer 0 had been sent, in order: numbered by rank, the loss a gap.
    ideal = [i for i in range(32) if stream[i][2] == 0]
    assert sorted(out) == [i for i in ideal if i != lost]
    for i, (seq, pid, _, tid) in out.items():
        assert (seq, pid, tid) == (101 + ideal.index(i), 32760 + ideal.index(i) // 2, 0), i


def test_temporal_thinning_under_reordering_never_reuses_a_number_or_splits_a_picture() -> None:
    """Packets reordered upstream (a few places, as a repair or a jittery path brings
    them) while the limit changes: no sequence number goes out twice (an SRTP index
    reused), no picture goes out under two ids, no two pictures under one. A packet older
    than the one a rebase resumed at (a key frame) is dropped, not counted as thinned.
    (A hole may stay where a late packet of a thinned picture had a number: Leg_thin.)"""
    import random

    for seed in range(200):
        rnd = random.Random(seed)
        stream = l1t3_stream(300)
        order = list(range(len(stream)))
        for _ in range(30):
            i = rnd.randrange(2, len(order) - 4)
            j = i + rnd.randrange(1, 4)
            order[i], order[j] = order[j], order[i]
        leg, _ = make_leg()
        leg.vp8 = True
        leg.temporal = 0
        seqs: set[int] = set()
        ids: dict[int, int] = {}  # picture -> id sent
        for i in order:
            if rnd.random() < 0.02:
                leg.temporal = rnd.choice([0, 1, 2, None])
            seq, payload, _, pid = stream[i]
            r = leg.rewrite(payload, False, seq, 0, 1)
            if r is None:
                continue
            out_seq, out_pid, _, _ = l1t3_fields(r[0])
            assert out_seq not in seqs, (seed, i)
            seqs.add(out_seq)
            assert ids.setdefault(pid, out_pid) == out_pid, (seed, i)
        assert len(set(ids.values())) == len(ids), seed
    # After a rebase (resumed at a key frame), an older packet of a thinned layer.
    leg, _ = make_leg(seq=1000)
    leg.vp8 = True
    leg.temporal = 0
    key = l1t3(16, 7, 0, True)[:-1] + b"\x00"
    sent = [leg.rewrite(l1t3(10, 5, 0, True)[:-1] + b"\x00", False, 100, 0, 1)]
    sent.append(leg.rewrite(l1t3(11, 5, 2, True), False, 101, 0, 1))  # thinned
    sent.append(leg.rewrite(l1t3(12, 6, 0, True), False, 102, 0, 1))
    leg.rebase()
    sent.append(leg.rewrite(key, False, 110, 0, 1))
    sent.append(leg.rewrite(l1t3(15, 6, 2, True), False, 109, 0, 1))  # older than the rebase
    sent.append(leg.rewrite(l1t3(16, 7, 0, False), False, 111, 0, 1))
    out = [None if r is None else l1t3_fields(r[0])[:2] for r in sent]
    assert out == [(1001, 10), None, (1002, 11), (1003, 12), None, (1004, 12)]
