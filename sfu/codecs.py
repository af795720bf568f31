"""Codec knowledge the forwarder needs without decoding: where a key frame starts.

A subscriber that joins, or whose queue overflowed, can only start decoding at a key
frame, so its leg holds video back until the first packet of one passes.
"""

from __future__ import annotations

from collections.abc import Callable

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters


def vp8_keyframe_start(payload: bytes) -> bool:
    """True if this VP8 RTP payload (RFC 7741) is the first packet of a key frame."""
    n = len(payload)
    if n < 1:
        return False
    b0 = payload[0]
    # S bit set and partition index 0: the packet starts a frame.
    if not (b0 & 0x10) or (b0 & 0x07):
        return False
    i = 1
    if b0 & 0x80:  # X: extension byte follows
        if n < 2:
            return False
        ext = payload[1]
        i = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if i >= n:
                return False
            i += 2 if payload[i] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            i += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            i += 1
    # P bit of the VP8 frame header: 0 means key frame.
    return i < n and not (payload[i] & 0x01)


def vp8_keyframe_size(payload: bytes) -> tuple[int, int] | None:
    """Width and height from the first packet of a VP8 key frame (RFC 6386 9.1), else None.

    Read only on key frames, which carry the frame size right after the start code.
    """
    n = len(payload)
    if n < 1:
        return None
    i = 1
    if payload[0] & 0x80:
        if n < 2:
            return None
        x = payload[1]
        i = 2
        if x & 0x80:
            if i >= n:
                return None
            i += 2 if payload[i] & 0x80 else 1
        if x & 0x40:
            i += 1
        if x & 0x30:
            i += 1
    # 3-byte frame tag, then the start code 9d 01 2a, then 14-bit width and height.
    if n < i + 10 or payload[i + 3 : i + 6] != b"\x9d\x01\x2a":
        return None
    width = (payload[i + 6] | payload[i + 7] << 8) & 0x3FFF
    height = (payload[i + 8] | payload[i + 9] << 8) & 0x3FFF
    return width, height


_H264_KEY_NALS = frozenset((5, 7))  # IDR slice, sequence parameter set


def h264_keyframe_start(payload: bytes) -> bool:
    """True if this H.264 RTP payload (RFC 6184) starts an IDR access unit."""
    n = len(payload)
    if n < 1:
        return False
    nal = payload[0] & 0x1F
    if nal in _H264_KEY_NALS:
        return True
    if nal == 24:  # STAP-A: aggregated NAL units, each with a 16-bit size
        i = 1
        while i + 2 < n:
            size = (payload[i] << 8) | payload[i + 1]
            if payload[i + 2] & 0x1F in _H264_KEY_NALS:
                return True
            i += 2 + size
        return False
    if nal == 28 and n > 1:  # FU-A: start bit and the fragmented NAL's type
        fu = payload[1]
        return bool(fu & 0x80) and (fu & 0x1F) in _H264_KEY_NALS
    return False


def keyframe_detector(mime_type: str) -> Callable[[bytes], bool] | None:
    """The key-frame test for a video codec, or ``None`` for audio/unknown codecs."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        return vp8_keyframe_start
    if mime == "video/h264":
        return h264_keyframe_start
    return None


def forwardable(codec: RTCRtpCodecParameters) -> bool:
    """Codecs we forward: Opus, VP8 and H.264 (never RTX or FEC, which are repairs)."""
    return codec.mimeType.lower() in ("audio/opus", "video/vp8", "video/h264")


def preference_for(kind: str, codec: RTCRtpCodecParameters) -> list[RTCRtpCodecCapability]:
    """Codec preferences that make a subscriber leg negotiate exactly ``codec`` (+ RTX).

    The leg forwards the publisher's encoded bytes, so it must speak the same codec with
    the same format parameters (H.264 profile and packetization mode).
    """
    caps = RTCRtpReceiver.getCapabilities(kind).codecs
    chosen = [
        c
        for c in caps
        if c.mimeType.lower() == codec.mimeType.lower() and c.parameters == codec.parameters
    ]
    if not chosen:
        raise ValueError(f"codec {codec.mimeType} cannot be offered to subscribers")
    rtx = [c for c in caps if c.mimeType.lower() == f"{kind}/rtx"]
    return chosen[:1] + rtx[:1]
