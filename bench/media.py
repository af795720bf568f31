"""Pre-encoded synthetic media with a measurement trailer, and the tracks that replay it.

Publishers must be cheap so that the generator is not what a benchmark measures: VP8
and Opus are encoded once at setup (libvpx and libopus through PyAV, from a moving
synthetic pattern and a tone) and packetised once (:func:`packetize_video`, aiortc's own
VP8 packetiser). ``bench.publisher`` sends those payloads as they are; the slower
:class:`ReplayTrack` hands the frames to aiortc's sender, which packetises them again
for every frame (``--aiortc-publisher``).

Every replayed frame ends with an 18-byte :data:`TRAILER`: magic, publisher index,
frame sequence and the send time (``time.monotonic_ns()``, one clock for every process
on a host). The SFU forwards payload bytes untouched, so a subscriber reads the trailer
from the last RTP packet of each frame (the one with the marker bit) without decoding.
Decoders tolerate the extra bytes (they end the last VP8 partition / Opus frame).
"""

from __future__ import annotations

import asyncio
import fractions
import struct
import time
from dataclasses import dataclass

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor
from aiortc.mediastreams import MediaStreamError

TRAILER = struct.Struct("!2sIIQ")  # magic, publisher index, frame sequence, send ns
MAGIC = b"RT"
VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000
FPS = 30
AUDIO_PTIME = 0.020
# The page's camera layers (web/call.js SIMULCAST: ¼, ½ and full size of the 832×624
# capture, capped at 100, 350 and 1000 kbit/s), low → high as the page offers them.
# The bench sends them at its usual 30 fps (the page captures at 20).
SIMULCAST_LAYERS: tuple[tuple[str, tuple[int, int], int], ...] = (
    ("l", (208, 156), 100_000),
    ("m", (416, 312), 350_000),
    ("h", (832, 624), 1_000_000),
)


@dataclass(frozen=True, slots=True)
class EncodedMedia:
    """One loop of pre-encoded frames; video starts with a key frame (index 0)."""

    video: tuple[bytes, ...]
    audio: tuple[bytes, ...]
    video_bitrate: int
    # --simulcast: one loop per layer of SIMULCAST_LAYERS (each starting with a key
    # frame), sent side by side; empty without simulcast.
    layers: tuple[tuple[bytes, ...], ...] = ()

    def packets_per_second(self, kind: str, layer: int | None = None) -> float:
        """RTP packets per second one track of ``kind`` sends (as aiortc packetises it);
        ``layer``: one simulcast layer's."""
        if kind == "audio":
            return 1.0 / AUDIO_PTIME
        frames = self.video if layer is None else self.layers[layer]
        if not frames:
            return 0.0
        packets = sum(len(p) for p in packetize_video(frames))
        return packets * FPS / len(frames)

    def layer_kbps(self) -> list[float]:
        """What each simulcast layer's loop carries, kbit/s."""
        return [
            sum(len(f) for f in frames) * 8 * FPS / len(frames) / 1000 for frames in self.layers
        ]

    @property
    def measured_video_kbps(self) -> float:
        return (
            sum(len(f) for f in self.video) * 8 * FPS / len(self.video) / 1000 if self.video else 0
        )


def encode_media(
    video_bitrate: int = 500_000,
    seconds: float = 3.0,
    size: tuple[int, int] = (640, 360),
    video: bool = True,
) -> EncodedMedia:
    """Encode ``seconds`` of a moving noise pattern (VP8) and a tone (Opus), once."""
    frames: list[bytes] = []
    if video:
        width, height = size
        # Smooth moving shapes plus fresh low-amplitude noise every frame, so that delta
        # frames carry residuals and the encoder's rate control reaches the target.
        frames = _encode_vp8_frames(width, height, int(seconds * FPS), video_bitrate)
    audio = _encode_opus_frames(int(round(1.0 / AUDIO_PTIME)))
    return EncodedMedia(tuple(frames), tuple(audio), video_bitrate)


def with_layers(
    media: EncodedMedia,
    layers: tuple[tuple[str, tuple[int, int], int], ...] = SIMULCAST_LAYERS,
    seconds: float = 3.0,
) -> EncodedMedia:
    """``media`` plus one VP8 loop per simulcast layer (its size and bitrate), encoded
    once like the rest: the same moving pattern at each size, so the SFU reads each
    layer's width and height from its key frames as it does a browser's."""
    count = int(seconds * FPS)
    loops = tuple(tuple(_encode_vp8_frames(w, h, count, rate)) for _, (w, h), rate in layers)
    return EncodedMedia(media.video, media.audio, media.video_bitrate, loops)


class _Pattern:
    """Smooth shapes panned across the frame, plus fresh low-amplitude noise each frame,
    so delta frames carry residuals and the encoder's rate control reaches its target."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        y, x = np.mgrid[0:height, 0 : width * 2].astype(np.float32)
        base = np.empty((height, width * 2, 3), dtype=np.float32)
        base[:, :, 0] = 128 + 100 * np.sin(x / 37.0) * np.cos(y / 23.0)
        base[:, :, 1] = 128 + 100 * np.sin((x + y) / 51.0)
        base[:, :, 2] = 128 + 100 * np.cos(np.hypot(x - width, y - height / 2) / 19.0)
        self.base = base.astype(np.int16)
        rng = np.random.default_rng(7)
        self.noise = rng.integers(-14, 15, (8, height, width, 3), dtype=np.int16)

    def frame(self, i: int) -> np.ndarray:
        shift = (i * 3) % self.width
        img = self.base[:, shift : shift + self.width] + self.noise[i % len(self.noise)]
        return np.clip(img, 0, 255).astype(np.uint8)


def _encode_vp8_frames(width: int, height: int, count: int, bitrate: int) -> list[bytes]:
    """Raw VP8 frames with aiortc's real-time settings; only frame 0 is a key frame."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.bit_rate = bitrate
    codec.pix_fmt = "yuv420p"
    codec.gop_size = 3000
    codec.qmin, codec.qmax = 2, 56
    codec.time_base = fractions.Fraction(1, VIDEO_CLOCK)
    codec.options = {
        "bufsize": str(bitrate),
        "cpu-used": "-6",
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "overshoot-pct": "15",
        "undershoot-pct": "100",
        "static-thresh": "1",
        "partitions": "0",
    }
    out: list[bytes] = []
    pattern = _Pattern(width, height)
    for i in range(count):
        img = pattern.frame(i)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i * (VIDEO_CLOCK // FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        for packet in codec.encode(frame):
            out.append(bytes(packet))
    for packet in codec.encode(None):
        out.append(bytes(packet))
    return out[:count]


def _encode_opus_frames(count: int, bitrate: int = 32000) -> list[bytes]:
    """20 ms Opus frames (48 kHz stereo, 32 kbit/s) of a 440 Hz tone, to be looped."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_CLOCK
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, AUDIO_CLOCK)
    samples = int(AUDIO_CLOCK * AUDIO_PTIME)
    t = np.arange(samples * (count + 4)) / AUDIO_CLOCK
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    out: list[bytes] = []
    for i in range(count + 4):
        chunk = np.repeat(pcm[i * samples : (i + 1) * samples], 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_CLOCK
        frame.pts = i * samples
        frame.time_base = fractions.Fraction(1, AUDIO_CLOCK)
        out.extend(bytes(p) for p in codec.encode(frame))
    return out[:count]


def is_vp8_keyframe(frame: bytes) -> bool:
    """Bit 0 of a raw VP8 frame's first byte is 0 for a key frame."""
    return bool(frame) and not (frame[0] & 0x01)


class ReplayTrack(MediaStreamTrack):
    """Replays pre-encoded frames in real time as ``av.Packet``s with a trailer.

    ``request_keyframe()`` (wired to the sender's PLI handling) restarts the loop at
    its key frame, which is how a real encoder answers a PLI.
    """

    def __init__(self, kind: str, frames: tuple[bytes, ...], publisher_index: int) -> None:
        super().__init__()
        self.kind = kind
        self._frames = tuple(_keep_trailer_whole(f) for f in frames) if kind == "video" else frames
        self._index = 0
        self._seq = 0
        self._pub = publisher_index
        if kind == "video":
            self._clock, self._step = VIDEO_CLOCK, VIDEO_CLOCK // FPS
        else:
            self._clock, self._step = AUDIO_CLOCK, int(AUDIO_CLOCK * AUDIO_PTIME)
        self._time_base = fractions.Fraction(1, self._clock)
        self._start: float | None = None
        self._pts = 0
        self.sent = 0  # frames handed to the sender
        self.keyframes_requested = 0

    def request_keyframe(self) -> None:
        self.keyframes_requested += 1
        self._index = 0

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += self._step
            wait = self._start + self._pts / self._clock - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.1:
                # Fell behind (a loaded generator): carry on from now instead of sending a
                # burst to catch up, as a live camera would.
                self._start -= wait
        data = self._frames[self._index]
        self._index = (self._index + 1) % len(self._frames)
        self._seq += 1
        self.sent += 1
        packet = av.Packet(data + TRAILER.pack(MAGIC, self._pub, self._seq, time.monotonic_ns()))
        packet.pts = self._pts
        packet.time_base = self._time_base
        return packet


# aiortc cuts a VP8 frame into payloads of PACKET_MAX (1300) minus its 4-byte descriptor.
_VP8_CHUNK = 1300 - 4


def _keep_trailer_whole(frame: bytes) -> bytes:
    """Pad a VP8 frame so the trailer after it never straddles two RTP packets.

    Trailing bytes end the last token partition, which the decoder does not read past.
    """
    rest = (len(frame) + TRAILER.size) % _VP8_CHUNK
    if 0 < rest < TRAILER.size:
        frame += b"\x00" * (TRAILER.size - rest)
    return frame


# The payload descriptor aiortc writes (RFC 7741): X=1, S on a frame's first packet,
# partition 0, and a 15-bit picture id (I=1, M=1) that a live encoder bumps per frame.
VP8_DESCRIPTOR = 4
_S_BIT = 0x10


def packetize_video(frames: tuple[bytes, ...]) -> tuple[tuple[bytes, ...], ...]:
    """Each VP8 frame (with room for the trailer) cut into RTP payloads by aiortc's own
    packetiser (``Vp8Encoder._packetize``), once, and returned without their 4-byte
    descriptors: a sender prefixes :func:`vp8_descriptor` of its picture id to each.
    The last payload of a frame ends with :data:`TRAILER`'s room (zeros)."""
    out = []
    blank = bytes(TRAILER.size)
    for frame in frames:
        payloads = Vp8Encoder._packetize(_keep_trailer_whole(frame) + blank, 0)
        bodies = []
        for payload in payloads:
            descriptor, _ = VpxPayloadDescriptor.parse(payload)
            if len(bytes(descriptor)) != VP8_DESCRIPTOR or descriptor.picture_id != 0:
                raise RuntimeError("aiortc's VP8 payload descriptor changed")
            bodies.append(payload[VP8_DESCRIPTOR:])
        if len(bodies[-1]) < TRAILER.size:
            raise RuntimeError("the trailer straddles two RTP packets")
        out.append(tuple(bodies))
    return tuple(out)


def vp8_descriptor(picture_id: int, start: bool) -> bytes:
    """What aiortc's packetiser puts before each payload (see :func:`packetize_video`)."""
    return bytes(
        (0x80 | (_S_BIT if start else 0), 0x80, 0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF)
    )


def read_trailer(payload: bytes) -> tuple[int, int, int] | None:
    """``(publisher index, frame sequence, send ns)`` from a payload's end, if present."""
    if len(payload) < TRAILER.size:
        return None
    magic, pub, seq, sent = TRAILER.unpack_from(payload, len(payload) - TRAILER.size)
    if magic != MAGIC:
        return None
    return pub, seq, sent
