"""Every place where roundtable reaches below aiortc's public API, in one module.

aiortc is a full WebRTC endpoint: its ``RTCRtpReceiver`` always hands complete frames to
a decoder thread and its ``RTCRtpSender`` always runs an encoder, and its maintainers
say there is no switch to skip either (aiortc issues #449, #544, #1155). An SFU must
forward encoded media, so we keep SDP, ICE and DTLS on the public API and step in at
the two points where RTP enters and leaves:

* **in**: a receiver's ``_handle_rtp_packet`` is called by the DTLS transport's
  ``RtpRouter`` with every decrypted RTP packet. We wrap it so the forwarder sees the
  packet first; aiortc's own handling still runs afterwards for receiver reports,
  NACKs and REMB, but its decoder thread is stopped right after ``receive()`` starts
  it, before any frame can reach it, so no decoder is ever created.
* **out**: a sender is given a :class:`SilentTrack` that never yields, so its encoder
  loop waits forever and no encoder is created. We write RTP ourselves through the
  DTLS transport's ``_send_rtp`` (SRTP protect + ICE send) with the sender's SSRC,
  keep its RTCP sender-report counters true, and take over its key-frame request and
  NACK handlers.

``check_compatible()`` asserts that every name used here still exists; it runs when
the SFU starts and in ``tests/test_aiortc_hooks.py`` so that an aiortc upgrade that
moves any of this fails loudly instead of silently decoding or dropping media.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aioice.ice
from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import RtpPacket

__all__ = [
    "SilentTrack",
    "check_compatible",
    "ntp_now",
    "strip_mdns_candidates",
    "tap_receiver",
    "take_over_sender",
    "update_sender_report",
    "use_media_host",
    "send_rtp",
    "negotiated",
    "request_keyframe",
    "decoder_running",
]

# Name-mangled private attributes of aiortc 1.16.0 that we read or write.
_RECEIVER_STOP_DECODER = "_RTCRtpReceiver__stop_decoder"
_RECEIVER_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
_SENDER_NTP = "_RTCRtpSender__ntp_timestamp"
_SENDER_RTP_TS = "_RTCRtpSender__rtp_timestamp"
_SENDER_OCTETS = "_RTCRtpSender__octet_count"
_SENDER_PACKETS = "_RTCRtpSender__packet_count"

_original_get_host_addresses = aioice.ice.get_host_addresses


def check_compatible() -> None:
    """Fail loudly if the installed aiortc no longer has what this module relies on."""
    problems = []
    for cls, methods in (
        (
            RTCRtpReceiver,
            ["_handle_rtp_packet", "receive", _RECEIVER_STOP_DECODER, "_send_rtcp_pli"],
        ),
        (RTCRtpSender, ["_send_keyframe", "_retransmit", "_handle_rtcp_packet", "send"]),
        (RTCDtlsTransport, ["_send_rtp", "_handle_rtp_data"]),
    ):
        problems += [f"{cls.__name__}.{m}" for m in methods if not callable(getattr(cls, m, None))]
    for cls, attrs in (
        (RTCRtpSender, [_SENDER_NTP, _SENDER_RTP_TS, _SENDER_OCTETS, _SENDER_PACKETS]),
        (RTCRtpReceiver, [_RECEIVER_DECODER_THREAD]),
    ):
        problems += [f"{cls.__name__}.{a}" for a in attrs if not _init_assigns(cls, a)]
    if not callable(getattr(aioice.ice, "get_host_addresses", None)):
        problems.append("aioice.ice.get_host_addresses")
    if problems:
        raise RuntimeError(
            "aiortc internals used by sfu/aiortc_hooks.py changed: " + ", ".join(problems)
        )


def _init_assigns(cls: type, mangled: str) -> bool:
    # ``self.__x = ...`` in __init__ compiles to a STORE_ATTR of the mangled name.
    return mangled in cls.__init__.__code__.co_names


def use_media_host(host: str | None) -> None:
    """Gather ICE host candidates on ``host`` only (``None``: aioice's default).

    aioice offers every non-loopback interface and has no option to choose one; an
    operator needs one address (like mediasoup's listen IP) and the loopback-only test
    namespace needs 127.0.0.1, which aioice would skip. This is process-wide.
    """
    if host is None:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return

    def only_media_host(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [host]

    aioice.ice.get_host_addresses = only_media_host


_MDNS_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ \S+\.local \d+ .*$", re.I | re.M)


def strip_mdns_candidates(sdp: str) -> str:
    """Drop remote mDNS ``.local`` candidates: we never resolve them by multicast.

    The browser's own connectivity checks then reveal its address as a peer-reflexive
    candidate, as ICE-lite SFUs rely on.
    """
    return _MDNS_CANDIDATE.sub("", sdp).replace("\r\n\r\n", "\r\n")


class SilentTrack(MediaStreamTrack):
    """A track whose ``recv()`` never yields: it parks a sender's encoder loop for good."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Any:
        await self._never
        raise MediaStreamError

    def stop(self) -> None:
        if not self._never.done():
            self._never.cancel()
        super().stop()


PacketTap = Callable[[RtpPacket, dict[int, Any]], None]


def tap_receiver(
    receiver: RTCRtpReceiver, tap: PacketTap, on_receive: Callable[[list[Any]], None]
) -> None:
    """Route a receiver's RTP through ``tap`` and keep aiortc from ever decoding it.

    ``tap(packet, codecs)`` is called synchronously with each packet and the receiver's
    payload-type → codec map; aiortc's own handling (RTCP statistics, NACK, REMB)
    follows. ``on_receive(codecs)`` is called once the negotiated codecs are known
    (media is about to flow). Must be called before the receiver's ``receive()`` runs, i.e. from the
    peer connection's ``track`` event.
    """
    original_handle = receiver._handle_rtp_packet
    original_receive = receiver.receive
    codecs: dict[int, Any] = {}

    async def receive(parameters: Any) -> None:
        for codec in parameters.codecs:
            codecs[codec.payloadType] = codec
        await original_receive(parameters)
        # receive() started the decoder thread; stop it before the event loop can
        # feed it a frame (no await lies between), so no decoder is ever created.
        getattr(receiver, _RECEIVER_STOP_DECODER)()
        on_receive(list(parameters.codecs))

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        tap(packet, codecs)
        await original_handle(packet, arrival_time_ms)

    receiver.receive = receive  # type: ignore[method-assign]
    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]


def decoder_running(receiver: RTCRtpReceiver) -> bool:
    """Whether aiortc's decoder thread exists for this receiver (used by tests)."""
    return getattr(receiver, _RECEIVER_DECODER_THREAD) is not None


def request_keyframe(receiver: RTCRtpReceiver, media_ssrc: int) -> Awaitable[None]:
    """Send a PLI for ``media_ssrc`` to the publisher behind ``receiver``."""
    return receiver._send_rtcp_pli(media_ssrc)


def take_over_sender(
    sender: RTCRtpSender,
    on_keyframe_request: Callable[[], None],
    on_nack: Callable[[int], Awaitable[None]],
) -> None:
    """Answer a subscriber's PLI/FIR and NACKs ourselves instead of aiortc's encoder."""
    sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]
    sender._retransmit = on_nack  # type: ignore[method-assign]


def update_sender_report(sender: RTCRtpSender, rtp_timestamp: int, octets: int) -> None:
    """Keep the sender's RTCP SR truthful (counts, NTP↔RTP mapping) for packets we wrote."""
    d = sender.__dict__
    d[_SENDER_NTP] = ntp_now()
    d[_SENDER_RTP_TS] = rtp_timestamp
    d[_SENDER_OCTETS] += octets
    d[_SENDER_PACKETS] += 1


_NTP_EPOCH = 2208988800


def ntp_now() -> int:
    """The current time as a 64-bit NTP timestamp (cheaper than aiortc.clock's)."""
    t = time.time() + _NTP_EPOCH
    secs = int(t)
    return (secs << 32) | int((t - secs) * 4294967296.0)


def send_rtp(sender: RTCRtpSender, data: bytes) -> Awaitable[None]:
    """SRTP-protect and send one RTP packet on the sender's current DTLS transport.

    Looked up per packet: BUNDLE may swap a sender's transport during negotiation.
    Raises ``ConnectionError`` while the transport is not connected.
    """
    return sender.transport._send_rtp(data)


def negotiated(transceiver: Any) -> tuple[Any | None, int | None]:
    """A transceiver's negotiated primary codec and its ``sdes:mid`` extension id."""
    codec = next((c for c in transceiver._codecs if c.name.lower() != "rtx"), None)
    mid_id = next(
        (
            e.id
            for e in transceiver._headerExtensions
            if e.uri == "urn:ietf:params:rtp-hdrext:sdes:mid"
        ),
        None,
    )
    return codec, mid_id
