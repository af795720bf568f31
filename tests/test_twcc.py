"""Transport-cc feedback: the packets built by sfu.twcc, checked against bytes worked out
by hand from draft-holmer-rmcat-transport-wide-cc-extensions-01 and against a parser
written here from the draft (not from sfu.twcc), and the C recorder."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
from typing import Any

import pytest
from aiortc import RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, is_rtcp

from sfu import _fastpath
from sfu.aiortc_hooks import TRANSPORT_CC
from sfu.twcc import MAX_BYTES, FeedbackState, build_feedback
from tests.media import Peer, Room, wait_for


def parse_feedback(data: bytes) -> dict:
    """Decode one RTCP transport feedback packet, as the draft describes it."""
    b0, pt, length = struct.unpack_from("!BBH", data)
    assert b0 >> 6 == 2 and pt == 205 and b0 & 0x1F == 15
    assert (length + 1) * 4 == len(data)
    end = len(data) - (data[-1] if b0 & 0x20 else 0)
    sender, media, base, count, ref_fb = struct.unpack_from("!IIHHI", data, 4)
    ref = ref_fb >> 8
    if ref & 0x800000:
        ref -= 1 << 24
    pos = 20
    symbols: list[int] = []
    while len(symbols) < count:
        (chunk,) = struct.unpack_from("!H", data, pos)
        pos += 2
        if not chunk & 0x8000:  # run length
            symbols += [(chunk >> 13) & 3] * (chunk & 0x1FFF)
        elif not chunk & 0x4000:  # one-bit vector, 14 symbols
            symbols += [(chunk >> (13 - k)) & 1 for k in range(14)]
        else:  # two-bit vector, 7 symbols
            symbols += [(chunk >> (12 - 2 * k)) & 3 for k in range(7)]
    symbols = symbols[:count]
    t = ref * 64_000
    arrivals: dict[int, int | None] = {}
    for i, s in enumerate(symbols):
        seq = (base + i) & 0xFFFF
        if s == 0:
            arrivals[seq] = None
            continue
        assert s in (1, 2)
        if s == 1:
            delta = data[pos]
            pos += 1
        else:
            (delta,) = struct.unpack_from("!h", data, pos)
            pos += 2
        t += delta * 250
        arrivals[seq] = t
    assert pos <= end and not any(data[pos:end]), "only padding after the deltas"
    return {
        "sender": sender,
        "media": media,
        "base": base,
        "count": count,
        "ref": ref,
        "fb_count": ref_fb & 0xFF,
        "arrivals": arrivals,
        "padded": bool(b0 & 0x20),
    }


def test_a_gap_in_a_one_bit_vector_by_hand() -> None:
    # seq 100 at 65.0 ms, 101 lost, 102 at 65.5 ms: reference 1 (64 ms), deltas 4 and 2
    # ticks of 250 us, one-bit vector 1 0 1 = 0xA800, 24 bytes, no padding.
    packet, covered = build_feedback(1, 2, 100, 5, [65_000, None, 65_500])
    assert covered == 3
    assert packet == bytes.fromhex("8fcd0005 00000001 00000002 00640003 00000105 a800 0402")


def test_a_run_of_small_deltas_is_one_run_length_chunk_by_hand() -> None:
    arrivals = [64_000 * 3 + 1000 * (i + 1) for i in range(20)]
    packet, covered = build_feedback(7, 8, 65530, 0, arrivals)
    assert covered == 20
    # 20 + 2 (chunk 0x2014: symbol 1, run 20) + 20 deltas of 4 = 42 bytes: 2 of padding
    expected = (
        bytes.fromhex("afcd000a 00000007 00000008 fffa0014 00000300 2014")
        + bytes([4] * 20)
        + b"\x00\x02"
    )
    assert packet == expected
    parsed = parse_feedback(packet)
    assert parsed["padded"] and parsed["count"] == 20
    assert [parsed["arrivals"][(65530 + i) & 0xFFFF] for i in range(20)] == arrivals


def test_negative_and_large_deltas_use_a_two_bit_vector_by_hand() -> None:
    # 128 ms exactly (delta 0), then 1 ms earlier (reordered: -4 ticks), then 101 ms
    # later (404 ticks, too large for one byte): symbols 1 2 2 -> 0xDA00.
    packet, covered = build_feedback(1, 2, 9, 255, [128_000, 127_000, 228_000])
    assert covered == 3
    assert packet == bytes.fromhex(
        "afcd0006 00000001 00000002 00090003 000002ff da00 00fffc0194 01"
    )
    parsed = parse_feedback(packet)
    assert parsed["arrivals"] == {9: 128_000, 10: 127_000, 11: 228_000}


def test_deltas_are_rounded_without_drift() -> None:
    times = [1_000_000 + 333 * i for i in range(300)]
    packet, _ = build_feedback(1, 2, 0, 0, times)
    got = parse_feedback(packet)["arrivals"]
    assert all(abs(got[i] - t) <= 125 for i, t in enumerate(times))


def test_state_unwraps_reports_losses_and_each_packet_once() -> None:
    state = FeedbackState()
    sent = [(65533 + i) & 0xFFFF for i in range(8)]  # 65533 .. 4 across the wrap
    lost = {65535, 2}
    t0 = 5_000_000
    state.add([(s, t0 + 1000 * i) for i, s in enumerate(sent) if s not in lost])
    packets = state.packets(11, 22)
    assert len(packets) == 1
    fb = parse_feedback(packets[0])
    assert fb["sender"] == 11 and fb["media"] == 22 and fb["fb_count"] == 0
    assert fb["base"] == 65533 and fb["count"] == 8
    for i, s in enumerate(sent):
        got = fb["arrivals"][s]
        assert (got is None) == (s in lost)
        if got is not None:
            assert abs(got - (t0 + 1000 * i)) <= 125
    # nothing new: nothing to send; the next window starts after the last one
    assert state.packets(11, 22) == []
    state.add([(5, t0 + 9000), (7, t0 + 10_000)])
    fb2 = parse_feedback(state.packets(11, 22)[0])
    assert fb2["base"] == 5 and fb2["count"] == 3 and fb2["fb_count"] == 1
    assert fb2["arrivals"][6] is None


def test_a_late_packet_is_reported_again_with_its_window() -> None:
    state = FeedbackState()
    state.add([(10, 1_000_000), (12, 1_002_000)])
    first = parse_feedback(state.packets(1, 2)[0])
    assert first["arrivals"][11] is None
    state.add([(11, 1_003_000), (13, 1_004_000)])  # 11 arrives late
    again = parse_feedback(state.packets(1, 2)[0])
    assert again["base"] == 11
    assert again["arrivals"][11] == pytest.approx(1_003_000, abs=125)
    assert again["arrivals"][13] == pytest.approx(1_004_000, abs=125)


def test_a_delta_beyond_16_bits_starts_a_new_packet() -> None:
    state = FeedbackState()
    # 9 s between two packets: more than 8191.75 ms fits no delta
    state.add([(1, 1_000_000), (2, 10_000_000)])
    packets = state.packets(1, 2)
    assert len(packets) == 2
    a, b = (parse_feedback(p) for p in packets)
    assert (a["base"], a["count"], b["base"], b["count"]) == (1, 1, 2, 1)
    assert b["arrivals"][2] == pytest.approx(10_000_000, abs=125)
    assert (a["fb_count"], b["fb_count"]) == (0, 1)


def test_many_packets_are_split_under_the_size_limit() -> None:
    state = FeedbackState()
    # alternating large deltas and losses: the worst case for the packet's size
    state.add([(2 * i, 1_000_000 + 70_000 * i) for i in range(2000)])
    packets = state.packets(1, 2)
    assert len(packets) > 1 and all(len(p) <= MAX_BYTES for p in packets)
    seen: dict[int, int | None] = {}
    for p in packets:
        seen.update({k: v for k, v in parse_feedback(p)["arrivals"].items() if v is not None})
    assert len(seen) == 2000
    assert all(abs(seen[2 * i] - (1_000_000 + 70_000 * i)) <= 125 for i in range(2000))


def _rtp(seq_ext: int | None, ext_id: int, two_byte: bool = False) -> bytes:
    header = struct.pack("!BBHII", 0x80, 96, 1, 0, 0xCAFE)
    if seq_ext is None:
        return header + b"payload"
    if two_byte:
        ext = bytes([5, 1, 9]) + bytes([ext_id, 2]) + struct.pack("!H", seq_ext) + b"\x00"
        return bytes([0x90]) + header[1:] + b"\x10\x00\x00\x02" + ext + b"payload"
    # an abs-send-time element first, then ours
    ext = bytes([0x22, 1, 2, 3]) + bytes([(ext_id << 4) | 1]) + struct.pack("!H", seq_ext) + b"\0"
    return bytes([0x90]) + header[1:] + b"\xbe\xde\x00\x02" + ext + b"payload"


def test_the_c_recorder_reads_one_and_two_byte_extensions() -> None:
    arrivals = _fastpath.Arrivals()
    arrivals.record(_rtp(65535, 3), 3, 7_000_000)
    arrivals.record(_rtp(0, 3, two_byte=True), 3, 8_000_000)
    arrivals.record(_rtp(None, 3), 3, 9_000_000)  # no extension: not recorded
    arrivals.record(_rtp(17, 4), 3, 9_500_000)  # another id: not ours
    assert arrivals.pending == 2 and arrivals.media_ssrc == 0xCAFE
    assert arrivals.drain() == [(65535, 7000), (0, 8000)]
    assert arrivals.pending == 0 and arrivals.recorded == 2


# -- a real aiortc publisher that speaks transport-cc, through the real Router -------

TWCC_ID = 5  # aiortc itself uses 1 (mid), 2 (audio level), 3 (abs-send-time)


def twcc_rtp(seq: int, twcc_seq: int) -> bytes:
    """An RTP header (no payload) with sequence number ``seq`` carrying transport-wide
    sequence number ``twcc_seq`` in a one-byte header extension (id TWCC_ID)."""
    ext = bytes([(TWCC_ID << 4) | 1]) + struct.pack("!H", twcc_seq) + b"\x00"
    return struct.pack("!BBHII", 0x90, 96, seq, 0, 42) + b"\xbe\xde\x00\x01" + ext


REMB_NAME = b"REMB"


def offer_transport_cc(sdp: str) -> str:
    """The offer as Chromium makes it: the extension and ``transport-cc`` feedback."""
    out = []
    for line in sdp.splitlines():
        out.append(line)
        m = re.match(r"a=rtpmap:(\d+) (?!rtx)", line)
        if m:
            out.append(f"a=rtcp-fb:{m.group(1)} transport-cc")
        if line.startswith("a=mid:"):
            out.append(f"a=extmap:{TWCC_ID} {TRANSPORT_CC}")
    return "\r\n".join(out) + "\r\n"


def rtcp_packets(data: bytes) -> list[bytes]:
    out = []
    while len(data) >= 4:
        size = (struct.unpack_from("!H", data, 2)[0] + 1) * 4
        out.append(data[:size])
        data = data[size:]
    return out


class TwccClient:
    """Stamps a transport-wide sequence number on every RTP packet the peer's publish
    transport sends (aiortc cannot), drops every DROP_EVERY-th one on the way, and
    keeps every RTCP packet the SFU sends back."""

    DROP_EVERY = 23

    def __init__(self, dtls: Any) -> None:
        self.seq = 65000  # wraps during the test
        self.sent: dict[int, bool] = {}  # seq -> actually sent
        self.rtcp: list[bytes] = []
        self.ext = HeaderExtensionsMap()
        self.ext.configure(
            RTCRtpParameters(
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(
                        id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"
                    ),
                    RTCRtpHeaderExtensionParameters(
                        id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
                    ),
                    RTCRtpHeaderExtensionParameters(id=TWCC_ID, uri=TRANSPORT_CC),
                ]
            )
        )
        send, handle = dtls._send_rtp, dtls._handle_rtcp_data

        async def send_rtp(data: bytes) -> None:
            if not is_rtcp(data):
                packet = RtpPacket.parse(data, self.ext)
                seq = self.seq & 0xFFFF
                self.seq += 1
                packet.extensions.transport_sequence_number = seq
                drop = self.seq % self.DROP_EVERY == 0
                self.sent[seq] = not drop
                if drop:
                    return
                data = packet.serialize(self.ext)
            await send(data)

        async def handle_rtcp(data: bytes) -> None:
            self.rtcp += rtcp_packets(data)
            await handle(data)

        dtls._send_rtp = send_rtp
        dtls._handle_rtcp_data = handle_rtcp

    def feedback(self) -> list[dict]:
        return [parse_feedback(p) for p in self.rtcp if p[1] == 205 and p[0] & 0x1F == 15]

    def rembs(self) -> int:
        return sum(1 for p in self.rtcp if p[1] == 206 and p[0] & 0x1F == 15 and REMB_NAME in p)


async def test_a_transport_cc_publisher_gets_feedback_for_every_packet_and_no_remb() -> None:
    room = Room()
    try:
        plain = await room.join("plain", (30, 200, 30))  # no transport-cc: REMB as before
        peer = Peer("twcc", room.router, (200, 30, 30))
        room.peers["twcc"] = peer
        await peer.renegotiate()
        peer.pub.addTrack(peer.audio)
        peer.pub.addTrack(peer.video)
        await peer.pub.setLocalDescription(await peer.pub.createOffer())
        client = TwccClient(peer.pub.getTransceivers()[0].sender.transport)
        answer = await room.router.publish(
            "twcc", offer_transport_cc(peer.pub.localDescription.sdp)
        )
        for section in answer.split("\r\nm=")[1:]:
            assert f"a=extmap:{TWCC_ID} {TRANSPORT_CC}" in section
            assert "transport-cc" in section and "goog-remb" not in section
        await peer.pub.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        plain_client = TwccClient.__new__(TwccClient)
        plain_client.rtcp = []
        plain_dtls = plain.pub.getTransceivers()[0].sender.transport
        plain_handle = plain_dtls._handle_rtcp_data

        async def keep(data: bytes) -> None:
            plain_client.rtcp += rtcp_packets(data)
            await plain_handle(data)

        plain_dtls._handle_rtcp_data = keep

        # the other participant decodes what this one publishes, with feedback flowing
        await wait_for(
            lambda: plain.decoded("twcc", "video") >= 20 and client.seq > 65536 + 200,
            timeout=40,
        )
        await wait_for(lambda: plain_client.rembs() > 0, timeout=20)
        await asyncio.sleep(0.5)  # the last feedback round
        received: dict[int, int] = {}
        lost: set[int] = set()
        for fb in client.feedback():
            for seq, t in fb["arrivals"].items():
                if t is None:
                    lost.add(seq)
                else:
                    received[seq] = t
        # everything sent is reported received (sequence numbers across the wrap);
        # what was dropped is reported missing, never received
        last = max(received, key=lambda s: (s - 65000) & 0xFFFF)
        upto = [s for s in client.sent if (s - 65000) & 0xFFFF <= (last - 65000) & 0xFFFF]
        assert len(upto) > 200
        assert {s for s in upto if client.sent[s]} <= set(received)
        dropped = {s for s in upto if not client.sent[s]}
        assert dropped and dropped <= lost and not dropped & set(received)
        assert 0 in received and 65535 in {*received, *lost}
        assert client.rembs() == 0
    finally:
        await room.close()


def test_the_reader_records_when_each_packet_reached_the_host_not_when_it_was_read() -> None:
    """Packets sent 30 ms apart and read together, 200 ms later, in one batch keep their
    spacing (the kernel's receive time): a busy event loop must not look like a link
    that queues, and a probe cluster read at once must keep its spread."""
    from pylibsrtp import Policy, Session

    from sfu.aiortc_hooks import _SRTP_UNPROTECT, _SRTP_UNPROTECT_RTCP, srtp_ffi

    key = bytes(range(30))
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)

    class Dtls:  # aiortc's counters, which the reader keeps
        _RTCDtlsTransport__rx_packets = 0
        _RTCDtlsTransport__rx_bytes = 0

    got: list[int] = []
    reader = _fastpath.Reader(server.fileno(), lambda d, a: None, print)
    ctx = int(srtp_ffi.cast("uintptr_t", rx._srtp[0]))
    reader.set_rtp(
        ctx, _SRTP_UNPROTECT, _SRTP_UNPROTECT_RTCP, rx, Dtls(), _fastpath.Live(True),
        lambda p, ms: got.append(p.sequence_number), print, 0, 0,
    )  # fmt: skip
    arrivals = _fastpath.Arrivals()
    reader.set_twcc(TWCC_ID, arrivals)
    try:
        sent = []
        for i in range(4):
            client.sendto(tx.protect(twcc_rtp(i, 700 + i) + b"x"), server.getsockname())
            sent.append(time.monotonic_ns() // 1000)
            time.sleep(0.03)
        time.sleep(0.2)
        read_at = time.monotonic_ns() // 1000
        reader()  # the event loop's read callback, late: all four in one batch
        assert got == [0, 1, 2, 3]
        recorded = arrivals.drain()
        assert [seq for seq, _ in recorded] == [700, 701, 702, 703]
        for (_, at), t in zip(recorded, sent, strict=True):
            assert at < read_at - 150_000  # long before the read
            assert abs(at - t) < 20_000  # about when it was sent on loopback
        gaps = [b - a for (_, a), (_, b) in zip(recorded, recorded[1:], strict=False)]
        assert all(gap >= 20_000 for gap in gaps), gaps  # the 30 ms spacing survives
    finally:
        server.close()
        client.close()


@pytest.mark.parametrize(
    ("path_bps", "rounds"), [(None, 28), (2_500_000, 28), (120_000, (10, 15)), (40_000, 6)]
)
async def test_feedback_takes_a_twentieth_of_a_narrow_way_back_and_reports_every_arrival(
    path_bps: int | None, rounds: int | tuple[int, int]
) -> None:
    """The feedback goes back on the publisher's downlink, beside what it receives. On a
    wide one (or before it is known) a round every 50 ms; on a narrow one 5 % of it, as
    libwebrtc's receiver, but a round at least every 250 ms: at every 50 ms a simulcast
    publisher's ~13 kbit/s of feedback, the audio and the keep-alive padding filled a
    90 kbit/s link and the voice lost 1-6 % (the weak-link browser test, CI of stop 29).
    Rarer rounds still report every packet, once. On a fake clock: the rounds the
    sender's own schedule (``due``) sends over 1.5 s of a publisher's 200 packets/s."""
    from sfu.twcc import MAX_INTERVAL, POLL, SHARE, WIRE_OVERHEAD, FeedbackSender

    now = 0.0
    arrivals = _fastpath.Arrivals()
    sent: list[tuple[float, bytes]] = []
    sender = FeedbackSender(
        arrivals, lambda: 1, lambda p: sent.append((now, p)), lambda: path_bps, lambda: now
    )
    await sender.close()  # its loop's schedule, driven here
    seconds, rate, step = 1.5, 200, 0.005
    seq, last = 0, 0.0
    while now < seconds - 1e-9:
        now += step
        while seq < now * rate:
            arrivals.record(twcc_rtp(seq, seq), TWCC_ID, int(now * 1e9))
            seq += 1
        if sender.due(now, last):
            last = now
            sender.flush()
    rounds_sent = list(sent)
    times = sorted({t for t, _ in sent})
    sender.flush()  # the rest, for the count below
    reported: dict[int, int | None] = {}
    for _, packet in sent:
        for s, t in parse_feedback(packet)["arrivals"].items():
            assert t is not None and s not in reported, (s, t)
            reported[s] = t
    assert sorted(reported) == list(range(seq))
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) <= MAX_INTERVAL + step + 1e-9, gaps
    low, high = rounds if isinstance(rounds, tuple) else (rounds - 1, rounds + 1)
    assert low <= len(times) <= high, (len(times), gaps)
    if path_bps is not None and path_bps < 1_000_000:
        # after the first round (at 50 ms: its size not known before): 5 %, or a round
        # every 250 ms where that is more
        later = [(t, p) for t, p in rounds_sent if t > times[0]]
        bps = sum(len(p) + WIRE_OVERHEAD for _, p in later) * 8 / (times[-1] - times[0])
        floor = max(len(p) + WIRE_OVERHEAD for _, p in later) * 8 / MAX_INTERVAL
        assert bps <= max(SHARE * path_bps, floor) * 1.1, (bps, gaps)
    assert POLL < 0.05  # the loop looks often enough to keep the 50 ms rounds
