"""The publisher-facing receive path: what RTCP feedback a publisher hears from us."""

from __future__ import annotations

import itertools
import random

import pytest
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCRtpReceiver
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtp import RTCP_PSFB_APP, RtpPacket, unpack_remb_fci

from sfu import aiortc_hooks
from sfu.remb import RembThrottle

SSRC = 0x1234
RTCP_SSRC = 0x5678


def test_throttle_sends_once_a_second_or_early_on_a_drop() -> None:
    throttle = RembThrottle()
    assert throttle.should_send(1_000_000, 0)  # the first estimate goes out
    assert not throttle.should_send(1_000_000, 500)
    assert not throttle.should_send(1_100_000, 999)  # rises wait for the second
    assert throttle.should_send(1_100_000, 1000)
    assert not throttle.should_send(500_000, 1100)  # a drop, but only 100 ms later
    assert throttle.should_send(500_000, 1200)  # a drop below 97 %: at once
    assert not throttle.should_send(490_000, 1500)  # only 2 % lower: wait
    assert throttle.should_send(400_000, 1500)
    assert throttle.should_send(400_000, 1000)  # the wall clock stepped back


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> tuple[RTCRtpReceiver, list[bytes]]:
    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    rx = RTCRtpReceiver("video", dtls)
    rx._set_rtcp_ssrc(RTCP_SSRC)
    sent: list[bytes] = []
    monkeypatch.setattr(aiortc_hooks, "_send_rtcp", lambda r, packet: sent.append(bytes(packet)))
    return rx, sent


def _packet(seq: int, send_ms: int) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq * 90, ssrc=SSRC)
    packet.payload = b"\x00" * 1000
    # abs-send-time: 6.18 fixed-point seconds, 24 bits
    packet.extensions.abs_send_time = (send_ms * (1 << 18) // 1000) & 0xFFFFFF
    return packet


def test_remb_is_paced_while_the_estimator_reports_overuse(receiver) -> None:
    rx, sent = receiver
    account = aiortc_hooks._account_rtp(rx)
    sends = []  # (arrival ms, bitrate) of each REMB
    # 5 s of packets sent every 5 ms whose queueing delay grows from 2 s on: sustained
    # overuse, during which aiortc's estimator returns an estimate on every packet.
    for i in range(1000):
        send_ms = 5 * i
        arrival_ms = 10_000 + send_ms + (i - 400) // 2 * (i > 400)
        account(_packet(i, send_ms), arrival_ms)
        if len(sent) > len(sends):
            bitrate, ssrcs = _remb(sent[-1])
            assert ssrcs == [SSRC]
            sends.append((arrival_ms, bitrate))
    assert len(sends) >= 3
    for (t0, b0), (t1, b1) in itertools.pairwise(sends):
        assert t1 - t0 >= 200
        assert t1 - t0 >= 1000 or b1 < 0.97 * b0
    assert any(t1 - t0 < 1000 for (t0, _), (t1, _) in itertools.pairwise(sends))


def _remb(data: bytes) -> tuple[int, list[int]]:
    assert data[1] == 206 and data[0] & 0x1F == RTCP_PSFB_APP  # PSFB, application layer
    return unpack_remb_fci(data[12:])


@pytest.mark.parametrize("seed", range(3))
def test_our_estimator_estimates_exactly_what_aiortcs_does(seed: int) -> None:
    # A jittery trace: bursts within a millisecond, frame gaps, a queue that fills and
    # drains, rare long stalls, two SSRCs; the estimator overuses and recovers.
    rng = random.Random(seed)
    ours, theirs = aiortc_hooks._bitrate_estimator(), RemoteBitrateEstimator()
    send_ms, arrival_ms, queue_ms = 0, 10_000, 0.0
    for i in range(20_000):
        send_ms += rng.choice([0, 0, 0, 1, 5, 33])
        queue_ms = max(0.0, queue_ms + rng.uniform(-1.5, 1.6))
        stall = rng.randrange(3000) if rng.random() < 0.001 else 0
        arrival_ms = max(arrival_ms, 10_000 + send_ms + int(queue_ms) + stall)
        clock_step = -rng.randrange(1, 2500) if rng.random() < 0.002 else 0  # wall clock
        packet = {
            "arrival_time_ms": arrival_ms + clock_step,
            "abs_send_time": (send_ms * (1 << 18) // 1000) & 0xFFFFFF,
            "payload_size": rng.randrange(100, 1200),
            "ssrc": SSRC + i % 2,
        }
        assert ours.add(**packet) == theirs.add(**packet), i
