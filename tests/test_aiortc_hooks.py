"""Guards for what sfu/ relies on below aiortc's public API, and the codec helpers."""

from __future__ import annotations

import fractions
import os

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu import aiortc_hooks
from sfu.codecs import h264_keyframe_start, vp8_keyframe_start


def test_aiortc_internals_still_exist() -> None:
    # Fails loudly when an aiortc upgrade renames what the forwarder hooks into.
    aiortc_hooks.check_compatible()


def test_media_host_restricts_gathering() -> None:
    import aioice.ice

    aiortc_hooks.use_media_host("127.0.0.1")
    assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1"]
    aiortc_hooks.use_media_host(os.environ.get("ROUNDTABLE_MEDIA_HOST", "127.0.0.1"))


def test_mdns_candidates_are_stripped() -> None:
    sdp = (
        "v=0\r\na=candidate:1 1 udp 2122260223 4f0c8a1e-1111-2222-3333-444455556666.local 54321 typ host\r\n"
        "a=candidate:2 1 udp 2122260223 127.0.0.1 5000 typ host\r\n"
    )
    out = aiortc_hooks.strip_mdns_candidates(sdp)
    assert ".local" not in out and "127.0.0.1 5000" in out


def _frames(n: int) -> list[av.VideoFrame]:
    out = []
    for i in range(n):
        img = np.full((240, 320, 3), (i * 20) % 255, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        out.append(frame)
    return out


@pytest.mark.parametrize(
    ("codec", "detector"),
    [
        (
            RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
            vp8_keyframe_start,
        ),
        (
            RTCRtpCodecParameters(
                mimeType="video/H264",
                clockRate=90000,
                payloadType=102,
                parameters={
                    "packetization-mode": "1",
                    "level-asymmetry-allowed": "1",
                    "profile-level-id": "42e01f",
                },
            ),
            h264_keyframe_start,
        ),
    ],
)
def test_keyframe_detection_on_real_encoder_output(codec, detector) -> None:
    encoder = get_encoder(codec)
    first, *rest = _frames(4)
    payloads, _ = encoder.encode(first, force_keyframe=True)
    assert detector(payloads[0])
    assert not any(detector(p) for p in payloads[1:])
    for frame in rest:
        payloads, _ = encoder.encode(frame)
        assert not any(detector(p) for p in payloads)


def test_keyframe_detectors_survive_garbage() -> None:
    rng = np.random.default_rng(1)
    for n in range(0, 40):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        vp8_keyframe_start(data)
        h264_keyframe_start(data)


async def test_a_subscriber_video_leg_costs_no_receive_estimator() -> None:
    # aiortc builds a receive-side bandwidth estimator (a 1,000-bucket rate counter) for
    # every video receiver, also that of a send-only subscriber leg, which never gets a
    # packet: ~95 KB of a participant's memory per video leg (issue 16: <= 2 MB each).
    import gc
    import tracemalloc

    from aiortc import RTCPeerConnection

    from sfu.forwarder import Leg
    from sfu.stats import RoomStats

    pc = RTCPeerConnection()
    stats = RoomStats()
    legs = []
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.take_snapshot()
        for _ in range(4):
            transceiver = pc.addTransceiver(aiortc_hooks.SilentTrack("video"), "sendonly")
            legs.append(Leg("video", transceiver, stats, 100))
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
        for leg in legs:
            await leg.close()
        await pc.close()
    per_leg = sum(s.size_diff for s in after.compare_to(before, "filename")) / 4
    rate = sum(
        s.size_diff for s in after.compare_to(before, "filename") if "aiortc/rate.py" in str(s)
    )
    print(f"{per_leg / 1024:.0f} KB per video leg, {rate} B of rate counters")
    assert rate <= 0
    assert per_leg < 60 * 1024
