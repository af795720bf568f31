"""Every place where roundtable reaches below aiortc's public API, in one module.

aiortc is a full WebRTC endpoint: its ``RTCRtpReceiver`` always hands complete frames to
a decoder thread and its ``RTCRtpSender`` always runs an encoder, and its maintainers
say there is no switch to skip either (aiortc issues #449, #544, #1155). An SFU must
forward encoded media, so we keep SDP, ICE and DTLS on the public API and step in at
the two points where RTP enters and leaves:

* **in**: once a connection's DTLS is up, a C reader (``sfu._fastpath.Reader``,
  :func:`_install_c_reader`) takes over its sockets, decrypts SRTP with aiortc's own
  session, and hands each packet through aiortc's ``RtpRouter`` to the receiver's
  handler, which we replace so the forwarder sees it first; receiver reports, NACKs
  and REMB are kept (:func:`_account_rtp`). The decoder thread is stopped right after
  ``receive()`` starts it, before any frame can reach it, so no decoder is created.
* **out**: a sender is given a :class:`SilentTrack` that never yields, so its encoder
  loop waits forever and no encoder is created. We write RTP ourselves with the
  sender's SSRC — in C on the nominated pair's socket with aiortc's tx session
  (:func:`fast_route`), else through the DTLS transport's ``_send_rtp`` — keep its
  RTCP sender-report counters true, and take over its key-frame and NACK handlers.
* **reports**: the SR/RR loops aiortc runs per sender and receiver are replaced by one
  batch per transport on the timer wheel (:mod:`sfu.rtcp`).

``check_compatible()`` asserts that every name used here still exists; it runs when
the SFU starts and in ``tests/test_aiortc_hooks.py`` so that an aiortc upgrade that
moves any of this fails loudly instead of silently decoding or dropping media.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aioice.ice
import pylibsrtp
from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCRtpSender, clock
from aiortc import codecs as aiortc_codecs
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamError
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcdtlstransport import RTCDtlsTransport, RtpRouter, State
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpHeaderExtensionParameters
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_RTPFB_NACK,
    RTP_HISTORY_SIZE,
    HeaderExtensions,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    RtpPacket,
    is_rtcp,
    pack_remb_fci,
    unwrap_rtx,
)
from pylibsrtp._binding import ffi as srtp_ffi
from pylibsrtp._binding import lib as srtp_lib

from . import _bwe, _fastpath, ice, ports, rtcp
from .remb import RembThrottle

__all__ = [
    "SilentTrack",
    "check_compatible",
    "ntp_now",
    "strip_mdns_candidates",
    "tap_receiver",
    "report_rtt",
    "send_sender_report",
    "take_over_sender",
    "update_sender_report",
    "drop_receive_estimator",
    "use_media_host",
    "arrival_ns",
    "send_rtp",
    "send_rtp_now",
    "negotiated",
    "negotiated_feedback",
    "negotiate_opus_fec_dtx",
    "route_rtx_feedback",
    "request_keyframe",
    "decoder_running",
    "fast_route",
    "account_sent",
    "read_in_c",
    "map_rtx",
    "use_stream_id_extensions",
    "transport_cc_offered",
    "answer_transport_cc",
    "arrivals",
    "send_rtcp",
    "rtcp_ssrc",
]

# Name-mangled private attributes of aiortc 1.16.0 that we read or write.
_RECEIVER_STOP_DECODER = "_RTCRtpReceiver__stop_decoder"
_RECEIVER_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
_SENDER_NTP = "_RTCRtpSender__ntp_timestamp"
_SENDER_RTP_TS = "_RTCRtpSender__rtp_timestamp"
_SENDER_OCTETS = "_RTCRtpSender__octet_count"
_SENDER_PACKETS = "_RTCRtpSender__packet_count"
_RX_REMB = "_RTCRtpReceiver__remote_bitrate_estimator"
_RX_RTCP_SSRC = "_RTCRtpReceiver__rtcp_ssrc"
_RX_ACTIVE_SSRC = "_RTCRtpReceiver__active_ssrc"
_RX_CODECS = "_RTCRtpReceiver__codecs"
_RX_REMOTE_STREAMS = "_RTCRtpReceiver__remote_streams"
_RX_RTX_SSRC = "_RTCRtpReceiver__rtx_ssrc"
_RX_NACK = "_RTCRtpReceiver__nack_generator"
_DTLS_TX_BYTES = "_RTCDtlsTransport__tx_bytes"
_DTLS_TX_PACKETS = "_RTCDtlsTransport__tx_packets"
_DTLS_RX_BYTES = "_RTCDtlsTransport__rx_bytes"
_DTLS_RX_PACKETS = "_RTCDtlsTransport__rx_packets"
_ACTIVE_SSRC_REFRESH_MS = 100  # see _account_rtp
_EXT_IDS = "_HeaderExtensionsMap__ids"
_RTP_HANDLER = "_roundtable_rtp"  # a receiver's synchronous RTP handler
# What _account_rtp updates, for an Inbound's Track (sfu/fastpath/inbound.c)
_ACCOUNT = "_roundtable_account"
_NACKS = "_roundtable_nacks"  # a receiver's media SSRC -> NackGenerator (_account_rtp)
_REMB_STATE = "_roundtable_remb"  # a receiver's RembState (_account_rtp)
_INBOUND = "_roundtable_inbound"  # a DTLS transport's sfu._fastpath.Inbound
_ARRIVALS = "_roundtable_arrivals"  # a DTLS transport's sfu._fastpath.Arrivals (transport-cc)
_LIVE = "_roundtable_live"  # a DTLS transport's sfu._fastpath.Live (see live())
TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
_ICE_CONNECTION_SEND = aioice.ice.Connection.send

_original_get_host_addresses = aioice.ice.get_host_addresses
log = logging.getLogger(__name__)


def check_compatible() -> None:
    """Fail loudly if the installed aiortc no longer has what this module relies on."""
    problems = []
    for cls, methods in (
        (
            RTCRtpReceiver,
            [
                "_handle_rtp_packet",
                "receive",
                _RECEIVER_STOP_DECODER,
                "_send_rtcp_pli",
                "_send_rtcp",
                "_send_rtcp_nack",
            ],
        ),
        (
            RTCRtpSender,
            ["_send_keyframe", "_retransmit", "_handle_rtcp_packet", "_send_rtcp", "send"],
        ),
        (RTCDtlsTransport, ["_send_rtp", "_handle_rtp_data", "_set_state"]),
    ):
        problems += [f"{cls.__name__}.{m}" for m in methods if not callable(getattr(cls, m, None))]
    for cls, attrs in (
        (
            RTCRtpSender,
            [_SENDER_NTP, _SENDER_RTP_TS, _SENDER_OCTETS, _SENDER_PACKETS, "_rtx_ssrc"],
        ),
        (
            RTCRtpReceiver,
            [
                _RECEIVER_DECODER_THREAD,
                _RX_REMB,
                _RX_ACTIVE_SSRC,
                _RX_CODECS,
                _RX_REMOTE_STREAMS,
                _RX_RTX_SSRC,
                _RX_NACK,
                _RX_RTCP_SSRC,
                "_enabled",
            ],
        ),
        (
            RTCDtlsTransport,
            [
                _DTLS_TX_BYTES,
                _DTLS_TX_PACKETS,
                _DTLS_RX_BYTES,
                _DTLS_RX_PACKETS,
                "_tx_srtp",
                "_rx_srtp",
                "_state",
                "_rtp_router",
                "_rtp_header_extensions_map",
            ],
        ),
        (aioice.ice.Connection, ["_nominated", "_protocols"]),
        (RTCRtpTransceiver, ["_codecs", "_headerExtensions"]),
        # what sfu/fastpath/inbound.c updates as StreamStatistics.add/NackGenerator.add do
        (
            StreamStatistics,
            [
                "base_seq",
                "max_seq",
                "cycles",
                "packets_received",
                "_clockrate",
                "_jitter_q4",
                "_last_arrival",
                "_last_timestamp",
            ],
        ),
        (NackGenerator, ["max_seq", "missing"]),
    ):
        problems += [f"{cls.__name__}.{a}" for a in attrs if not _init_assigns(cls, a)]
    if RTP_HISTORY_SIZE != _fastpath.NACK_HISTORY:
        problems.append("aiortc RTP_HISTORY_SIZE (NackGenerator.truncate)")
    if "transport_sequence_number" not in HeaderExtensionsMap.configure.__code__.co_names:
        problems.append("aiortc HeaderExtensionsMap transport-cc")
    if not callable(getattr(RemoteBitrateEstimator, "add", None)) or not callable(
        getattr(StreamStatistics, "add", None)
    ):
        problems.append("aiortc receiver statistics")
    if "transport" not in aioice.ice.StunProtocol.connection_made.__code__.co_names:
        problems.append("aioice.ice.StunProtocol.transport")
    if not callable(getattr(aioice.ice.StunProtocol, "datagram_received", None)):
        problems.append("aioice receive path")
    if not callable(getattr(aioice.ice, "get_host_addresses", None)):
        problems.append("aioice.ice.get_host_addresses")
    problems += _check_simulcast()
    problems += _check_fast_route() + _check_c_reader() + ports.check() + ice.check()
    problems += rtcp.check()
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


class RembState:
    """A receive-side estimator, the pace of its REMBs and its latest figure. By default
    each receiver has its own (aiortc's way); a client that models a browser shares one
    among all receivers of a connection (libwebrtc has one per transport, and its REMB
    is the whole link's figure listing every SSRC): two per-stream estimates, each
    capped at 1.5x its own stream, reach the SFU as alternating REMBs that look like a
    falling link (:meth:`sfu.downlink.DownlinkEstimate.on_remb`)."""

    __slots__ = ("estimator", "latest", "throttle")

    def __init__(self) -> None:
        self.estimator: Any = _bitrate_estimator()
        self.throttle = RembThrottle()
        self.latest: tuple[int, list[int]] | None = None


def tap_receiver(
    receiver: RTCRtpReceiver,
    tap: PacketTap,
    on_receive: Callable[[list[Any]], None],
    account: bool = True,
    remb: bool = True,
    shared_remb: RembState | None = None,
) -> None:
    """Route a receiver's RTP through ``tap`` and keep aiortc from ever decoding it.

    ``tap(packet, codecs)`` is called synchronously with each packet and the receiver's
    payload-type → codec map; aiortc's receive-side bookkeeping (REMB, RTCP statistics,
    NACKs; see :func:`_account_rtp`) follows unless ``account`` is false (a measuring
    client that only counts). ``on_receive(codecs)`` is called once the negotiated
    codecs are known (media is about to flow). Must be called before the receiver's
    ``receive()`` runs, i.e. from the peer connection's ``track`` event.

    Once the receiver runs, RTP reaches it through :func:`_install_c_reader`, straight
    from the socket callback, instead of through aioice's queue and the DTLS
    transport's task.
    """
    original_receive = receiver.receive
    codecs: dict[int, Any] = {}

    async def receive(parameters: Any) -> None:
        for codec in parameters.codecs:
            codecs[codec.payloadType] = codec
        await original_receive(parameters)
        # receive() started the decoder thread; stop it before the event loop can
        # feed it a frame (no await lies between), so no decoder is ever created.
        getattr(receiver, _RECEIVER_STOP_DECODER)()
        _install_c_reader(receiver.transport)
        on_receive(list(parameters.codecs))

    if account:
        account_rtp = _account_rtp(receiver, remb, shared_remb)

        def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
            tap(packet, codecs)
            account_rtp(packet, arrival_time_ms)
    else:

        def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
            tap(packet, codecs)

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        handle(packet, arrival_time_ms)

    setattr(receiver, _RTP_HANDLER, handle)
    rtcp.batch_receiver(receiver, _send_rtcp_on)
    receiver.receive = receive  # type: ignore[method-assign]
    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]


def _account_rtp(
    receiver: RTCRtpReceiver, remb: bool = True, shared_remb: RembState | None = None
) -> Callable[[RtpPacket, int], None]:
    """aiortc's ``RTCRtpReceiver._handle_rtp_packet`` without what only a decoder needs.

    Returns the per-packet function for ``receiver``. Kept: REMB bandwidth estimation
    (the publisher's encoder ramps up on it), the synchronisation-source list, RTCP
    receiver statistics and NACKs for missing packets (after unwrapping RTX, as aiortc
    does). Dropped: depayloading and the jitter buffer, whose frames would only feed
    the decoder we stopped. With ``remb`` false (the publisher negotiated transport-cc
    and estimates its uplink itself, :mod:`sfu.twcc`) there is no estimator and no
    REMB at all: Chromium would take a REMB as a cap on its own estimate. Cheaper than aiortc's on purpose, where nothing observable
    changes: the estimator sees every packet but its estimates go out as REMB at
    libwebrtc's pace (:class:`~sfu.remb.RembThrottle`) instead of once per packet while
    it reports overuse, and the synchronisation-source time (only read by
    ``getSynchronizationSources``, to a 10 s cutoff) is refreshed every
    :data:`_ACTIVE_SSRC_REFRESH_MS` per SSRC rather than on every packet.
    """
    d = receiver.__dict__
    estimator = d[_RX_REMB]
    state = d[_REMB_STATE] = shared_remb or RembState()
    if not remb:
        estimator = d[_RX_REMB] = None
    elif estimator is not None:
        # Called before any packet arrives, so the estimator has no state to lose.
        estimator = d[_RX_REMB] = state.estimator
    # aiortc fills these containers in place and never replaces them.
    active_ssrc = d[_RX_ACTIVE_SSRC]
    codecs = d[_RX_CODECS]
    streams = d[_RX_REMOTE_STREAMS]
    rtx_ssrc = d[_RX_RTX_SSRC]
    # aiortc keeps one NACK generator per receiver, which assumes one stream: simulcast
    # layers interleave several sequence spaces, so each further SSRC gets its own. The
    # first keeps aiortc's. The C Inbound updates the one of the SSRC it takes.
    nack = d[_RX_NACK]
    nacks: dict[int, NackGenerator] | None = {} if nack is not None else None

    setattr(receiver, _NACKS, nacks)

    def nack_for(ssrc: int) -> NackGenerator | None:
        if nacks is None:
            return None
        generator = nacks.get(ssrc)
        if generator is None:
            generator = nacks[ssrc] = nack if not nacks else NackGenerator()
        return generator

    throttle = state.throttle
    active_until: dict[int, int] = {}  # ssrc -> arrival ms until which its time is fresh
    now_datetime = clock.current_datetime

    def send_remb(remb: tuple[int, list[int]], arrival_time_ms: int) -> None:
        state.latest = remb  # for send_latest_remb
        if throttle.should_send(remb[0], arrival_time_ms):
            rtcp_ssrc = d[_RX_RTCP_SSRC]
            if rtcp_ssrc is not None:
                _send_rtcp(
                    receiver,
                    RtcpPsfbPacket(
                        fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(*remb)
                    ),
                )

    # The same updates, for packets an Inbound takes in C (take_inbound).
    setattr(
        receiver,
        _ACCOUNT,
        (
            streams,
            nack_for,
            active_ssrc,
            now_datetime,
            estimator.add if estimator is not None else None,
            send_remb,
        ),
    )

    def account(packet: RtpPacket, arrival_time_ms: int) -> None:
        if not receiver._enabled:
            return
        ssrc = packet.ssrc
        if estimator is not None:
            abs_send_time = packet.extensions.abs_send_time
            if abs_send_time is not None:
                remb = estimator.add(
                    abs_send_time=abs_send_time,
                    arrival_time_ms=arrival_time_ms,
                    payload_size=len(packet.payload) + packet.padding_size,
                    ssrc=ssrc,
                )
                if remb is not None:
                    send_remb(remb, arrival_time_ms)
        if arrival_time_ms >= active_until.get(ssrc, 0):
            active_ssrc[ssrc] = now_datetime()
            active_until[ssrc] = arrival_time_ms + _ACTIVE_SSRC_REFRESH_MS
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        stream = streams.get(ssrc)
        if stream is None:
            stream = streams[ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)
        if is_rtx(codec):
            original_ssrc = rtx_ssrc.get(ssrc)
            apt = codec.parameters.get("apt")
            if (
                original_ssrc is None
                or len(packet.payload) < 2
                or not isinstance(apt, int)
                or apt not in codecs
            ):
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
        generator = nack_for(packet.ssrc)
        if generator is None:
            return
        if generator.add(packet):
            rtcp_ssrc = d[_RX_RTCP_SSRC]
            if rtcp_ssrc is not None:
                fb = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=rtcp_ssrc, media_ssrc=packet.ssrc)
                fb.lost = sorted(generator.missing)
                _send_rtcp(receiver, fb)

    return account


def send_latest_remb(receiver: RTCRtpReceiver) -> bool:
    """Send ``receiver``'s latest estimate as REMB again, now; False if it has none yet.

    libwebrtc puts its latest REMB into every regular RTCP report (``RTCPSender::SetRemb``
    sets a non-volatile flag), about once a second for video, whether or not packets
    arrived since. aiortc (and :func:`_account_rtp`) sends one only when a packet with
    abs-send-time makes the estimator produce a figure: with every video paused only
    the SFU's padding does, and between probes (no keep-alive padding while a leg is
    capped) the SFU hears nothing and :mod:`sfu.downlink` counts a probe without a REMB
    after it as failed. A client that models a browser (the bench's shaped subscriber)
    calls this on its report timer."""
    state = receiver.__dict__.get(_REMB_STATE)
    remb = state.latest if state is not None else None
    rtcp_ssrc = receiver.__dict__.get(_RX_RTCP_SSRC)
    if remb is None or rtcp_ssrc is None:
        return False
    _send_rtcp(
        receiver,
        RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(*remb)),
    )
    return True


def repairs_loss(receiver: RTCRtpReceiver | None, media_ssrc: int, rtx_payload: bytes) -> bool:
    """Whether an RTX packet (its payload: the original sequence number, then the
    original payload) carries a packet of ``media_ssrc`` that is missing here, i.e. one
    our NACKs ask for. True where this cannot be told (no receive accounting, no NACK
    state for the stream yet)."""
    nacks = getattr(receiver, _NACKS, None) if receiver is not None else None
    generator = nacks.get(media_ssrc) if nacks is not None else None
    if generator is None:
        return True
    return int.from_bytes(rtx_payload[:2], "big") in generator.missing


def take_inbound(
    receiver: RTCRtpReceiver, ssrc: int, track: _fastpath.Track, media_ssrc: int | None = None
) -> None:
    """Let the C Inbound of ``receiver``'s transport take the packets of ``ssrc`` that
    need no decision (:mod:`sfu/fastpath/inbound.c`): forwarded through ``track``'s legs
    and accounted as :func:`_account_rtp` would. For an RTX track (``Track.rtx``),
    ``media_ssrc`` is the stream it repairs, whose NACK state tells repairs from
    padding. Without a C reader on the transport, nothing changes."""
    inbound = getattr(receiver.transport, _INBOUND, None)
    if inbound is None:
        return
    account = getattr(receiver, _ACCOUNT, None)
    if account is not None:
        streams, nack_for, *rest = account
        # each SSRC its own NACK state (simulcast layers): the one Python uses for it
        nack = nack_for(ssrc if media_ssrc is None else media_ssrc)
        track.account(receiver, streams, nack, *rest)
    inbound.tracks[ssrc] = track


def drop_inbound(receiver: RTCRtpReceiver, ssrc: int, track: _fastpath.Track) -> None:
    """Undo :func:`take_inbound` (the track is closing)."""
    inbound = getattr(receiver.transport, _INBOUND, None)
    if inbound is not None and inbound.tracks.get(ssrc) is track:
        del inbound.tracks[ssrc]


def inbound_ssrcs(receiver: RTCRtpReceiver) -> set[int]:
    """The SSRCs whose packets the C Inbound of ``receiver``'s transport takes (for
    metrics and tests: one per live stream, none left behind)."""
    inbound = getattr(receiver.transport, _INBOUND, None)
    return set() if inbound is None else set(inbound.tracks)


def _bitrate_estimator() -> _bwe.RemoteBitrateEstimator:
    """aiortc's receive-side bandwidth estimator (``aiortc.rate.RemoteBitrateEstimator``
    of aiortc 1.16.0) ported to C: the same estimates for the same packets, call by
    call (``tests/test_bwe.py``), at a fraction of the per-packet cost."""
    return _bwe.RemoteBitrateEstimator()


# Tasks for work that had to go through aiortc's coroutines (an RTCP send on an unusual
# transport, a packet for a receiver that decodes, an RTCP handler that suspended); held
# here until done so none is collected mid-flight.
_in_flight: set[asyncio.Future[None]] = set()


def _send_rtcp(receiver: RTCRtpReceiver, packet: Any) -> None:
    try:
        if _send_now(receiver.transport, bytes(packet)):
            return
    except ConnectionError:
        return
    task = asyncio.ensure_future(receiver._send_rtcp(packet))
    _in_flight.add(task)
    task.add_done_callback(_in_flight.discard)


def _send_rtcp_on(dtls: RTCDtlsTransport, data: bytes) -> None:
    """Send one RTCP datagram on ``dtls`` now, else behind what aiortc has queued."""
    try:
        if _send_now(dtls, data):
            return
    except ConnectionError:
        return
    task = asyncio.ensure_future(_send_rtp_quietly(dtls, data))
    _in_flight.add(task)
    task.add_done_callback(_in_flight.discard)


async def _send_rtp_quietly(dtls: RTCDtlsTransport, data: bytes) -> None:
    try:
        await dtls._send_rtp(data)
    except ConnectionError:
        pass  # as aiortc's own report loops: a report for a closed transport is dropped


def arrival_ns(packet: RtpPacket) -> int:
    """When the packet's datagram reached us (``perf_counter_ns``), before SRTP and
    parsing when the C reader read it (:func:`_install_c_reader`); else now."""
    return getattr(packet, "arrival_ns", 0) or time.perf_counter_ns()


def map_rtx(receiver: RTCRtpReceiver, rtx_ssrc: int, media_ssrc: int) -> None:
    """Tell ``receiver`` that ``rtx_ssrc`` repairs ``media_ssrc`` (what an SDP ``a=ssrc-group:FID``
    would have said; simulcast layers are learnt from their packets instead)."""
    receiver.__dict__[_RX_RTX_SSRC][rtx_ssrc] = media_ssrc


def use_stream_id_extensions(dtls: RTCDtlsTransport, rid_id: int, rrid_id: int | None) -> None:
    """Read the ``rtp-stream-id`` / ``repaired-rtp-stream-id`` extensions on ``dtls``.

    aiortc parses them once it knows their ids, but never negotiates them; the ids come
    from the browser's offer (``sfu.simulcast``). The C reader picks them up when it is
    (re)installed on the receiver's start.
    """
    ids = dtls._rtp_header_extensions_map.__dict__[_EXT_IDS]
    ids.rtp_stream_id = rid_id
    ids.repaired_rtp_stream_id = rrid_id


def _check_simulcast() -> list[str]:
    problems = []
    if not {"mid_table", "ssrc_table"} <= set(RtpRouter.__init__.__code__.co_names):
        problems.append("aiortc RtpRouter.mid_table/ssrc_table")
    fields = set(getattr(HeaderExtensions, "__dataclass_fields__", {}))
    if not {"rtp_stream_id", "repaired_rtp_stream_id", "mid"} <= fields:
        problems.append("aiortc HeaderExtensions stream ids")
    if not callable(getattr(NackGenerator, "add", None)):
        problems.append("aiortc NackGenerator.add")
    return problems


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
    on_rtcp: Callable[[Any], None] | None = None,
) -> None:
    """Answer a subscriber's PLI/FIR and NACKs ourselves instead of aiortc's encoder;
    ``on_rtcp(packet)`` sees every RTCP packet aiortc routes to the sender (receiver
    reports, REMB) before aiortc's own handling (its statistics) runs. Its sender
    reports go out with its transport's other reports (:mod:`sfu.rtcp`)."""
    rtcp.batch_sender(sender, _send_rtcp_on)
    sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]
    sender._retransmit = on_nack  # type: ignore[method-assign]
    if on_rtcp is not None:
        original = sender._handle_rtcp_packet
        send_rtcp = sender._send_rtcp

        async def note_and_send(packets: list[Any]) -> None:
            _note_sender_reports(sender, packets)
            await send_rtcp(packets)

        sender._send_rtcp = note_and_send  # type: ignore[method-assign]

        async def handle_rtcp_packet(packet: Any) -> None:
            try:
                on_rtcp(packet)
            except Exception:
                log.exception("sender RTCP tap failed")
            await original(packet)

        sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


def drop_receive_estimator(receiver: RTCRtpReceiver) -> None:
    """Free the receive-side bandwidth estimator aiortc builds for every video receiver
    (its rate counter alone is 1,000 bucket objects, ~95 KB), for a receiver that never
    receives: that of a send-only subscriber leg (issue 16: memory per participant).
    aiortc's receiver skips estimation when it is ``None``, as for audio."""
    receiver.__dict__[_RX_REMB] = None


def update_sender_report(sender: RTCRtpSender, rtp_timestamp: int, octets: int) -> None:
    """Keep the sender's RTCP SR truthful (counts, NTP↔RTP mapping) for packets we wrote."""
    d = sender.__dict__
    d[_SENDER_NTP] = ntp_now()
    d[_SENDER_RTP_TS] = rtp_timestamp
    d[_SENDER_OCTETS] += octets
    d[_SENDER_PACKETS] += 1


def _note_sender_reports(sender: RTCRtpSender, packets: list[Any]) -> None:
    """Remember when each SR went out, by the LSR a receiver report will quote. aiortc
    keeps only the latest SR's, and a paused leg's SRs repeat one NTP time: an LSR sent
    twice is ambiguous and dropped."""
    for packet in packets:
        if isinstance(packet, RtcpSrPacket):
            rtcp.note_sender_report(sender, packet.sender_info.ntp_timestamp)


_REPORTS: set[asyncio.Task[None]] = set()  # SRs on their way out (kept referenced)


def send_sender_report(sender: RTCRtpSender, clock_rate: int, hold: float = 0.0) -> None:
    """Send one SR now, besides aiortc's own every 0.5-1.5 s: a bandwidth probe wants
    one crossing the subscriber's link while it runs (its round trip shows the queue).
    NTP now, with the RTP time carried forward from the last packet's. ``hold``: the
    periodic ones wait that many seconds, so the receiver's next report answers this
    one (Chromium answers a stream's latest SR, and reports on audio every 2.5-7.5 s)."""
    d = sender.__dict__
    if hold:
        hold_sender_reports(sender, hold)
    last_ntp = d.get(_SENDER_NTP)
    if not last_ntp or sender._ssrc is None:
        return  # nothing sent yet: no RTP time to map
    now = ntp_now()
    rtp = d[_SENDER_RTP_TS] + round((now - last_ntp) / 2**32 * clock_rate)
    report = RtcpSrPacket(
        ssrc=sender._ssrc,
        sender_info=RtcpSenderInfo(
            ntp_timestamp=now,
            rtp_timestamp=rtp & 0xFFFFFFFF,
            packet_count=d[_SENDER_PACKETS] & 0xFFFFFFFF,
            octet_count=d[_SENDER_OCTETS] & 0xFFFFFFFF,
        ),
    )
    task = asyncio.ensure_future(sender._send_rtcp([report]))
    _REPORTS.add(task)
    task.add_done_callback(_REPORTS.discard)


def hold_sender_reports(sender: RTCRtpSender, hold: float) -> None:
    """The periodic SRs wait ``hold`` seconds from now (0: no longer): replaces the
    ``hold`` of :func:`send_sender_report` (a probe judged sooner or later than that)."""
    if hold > 0:
        sender.__dict__[rtcp.SR_HOLD] = time.monotonic() + hold
    else:
        sender.__dict__.pop(rtcp.SR_HOLD, None)


def report_rtt(sender: RTCRtpSender, report: Any) -> tuple[float, float] | None:
    """The round trip (s) a receiver report block gives, and how long ago (s) the SR it
    answers was sent: that SR went down the subscriber's link, so a queue there shows
    here. ``None`` when the block answers no SR we know."""
    sent_at = sender.__dict__.get(rtcp.SR_SENT, {}).get(report.lsr)
    if sent_at is None or not report.dlsr:
        return None
    age = time.monotonic() - sent_at
    rtt = age - report.dlsr / 65536
    return (rtt, age) if rtt >= 0 else None


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


def send_rtp_now(sender: RTCRtpSender, data: bytes) -> bool:
    """Protect and send one RTP packet synchronously; ``False``: use :func:`send_rtp`.

    ``_send_rtp`` → ``Connection.send`` → ``sendto`` → ``StunProtocol.send_data`` are
    coroutines that never suspend; walking them costs four coroutine frames and, for
    the forwarder, a task switch per packet. This does the same work in place, but only
    on the chain it knows (a host pair through aioice's own ``Connection.send``) and
    only while the socket takes data at once (nothing buffered in the asyncio
    transport); otherwise the caller queues the packet and awaits :func:`send_rtp`.
    Raises ``ConnectionError`` while the transport is not connected.
    """
    return _send_now(sender.transport, data)


def _send_now(dtls: RTCDtlsTransport, data: bytes) -> bool:
    if dtls._state is not State.CONNECTED:
        raise ConnectionError("Cannot send encrypted RTP, not connected")
    send = dtls.transport._send
    if getattr(send, "__func__", None) is not _ICE_CONNECTION_SEND:
        return False
    connection = send.__self__
    pair = connection._nominated.get(1)
    if pair is None:
        raise ConnectionError("Cannot send data, not connected")
    if not ice.consented(connection):
        raise ConnectionError("Consent expired, nothing may be sent (RFC 7675)")
    protocol = pair.protocol
    if type(protocol) is not aioice.ice.StunProtocol:
        return False
    udp = protocol.transport
    # A relayed pair's transport is aioice's TurnTransport (no socket, no write buffer):
    # it goes through aiortc's own chain, which wraps the data for the TURN server.
    if udp is None or getattr(udp, "_sock", None) is None or udp.get_write_buffer_size():
        return False
    if is_rtcp(data):
        protected = dtls._tx_srtp.protect_rtcp(data)
    else:
        protected = dtls._tx_srtp.protect(data)
    udp.sendto(protected, pair.remote_addr)
    d = dtls.__dict__
    d[_DTLS_TX_BYTES] += len(protected)
    d[_DTLS_TX_PACKETS] += 1
    return True


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


def negotiated_feedback(transceiver: Any) -> tuple[int | None, int | None]:
    """A transceiver's ``abs-send-time`` extension id and RTX payload type (for its
    primary codec), each ``None`` if the subscriber did not take it."""
    abs_id = next(
        (
            e.id
            for e in transceiver._headerExtensions
            if e.uri == "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
        ),
        None,
    )
    codec, _ = negotiated(transceiver)
    rtx_pt = next(
        (
            c.payloadType
            for c in transceiver._codecs
            if codec is not None
            and c.name.lower() == "rtx"
            and c.parameters.get("apt") == codec.payloadType
        ),
        None,
    )
    return abs_id, rtx_pt


def route_rtx_feedback(sender: RTCRtpSender) -> None:
    """Let RTCP that names only the sender's RTX SSRC reach it too.

    aiortc routes a REMB to the senders whose SSRCs its FCI lists, and registers a
    sender under its media SSRC only. A subscriber whose video is paused receives only
    the SFU's RTX padding, so Chromium's REMB then lists just the RTX SSRC.
    """
    dtls = sender.transport
    router = getattr(dtls, "_rtp_router", None)
    if router is not None and router.senders.get(sender._rtx_ssrc) is not sender:
        router.register_sender(sender, sender._rtx_ssrc)


OPUS_FMTP = {"minptime": 10, "useinbandfec": 1, "usedtx": 1}


def negotiate_opus_fec_dtx() -> None:
    """Offer and answer Opus with in-band FEC and DTX (RFC 7587 fmtp).

    aiortc's Opus codec carries no fmtp, so its answer to a browser's publish offer
    says nothing and Chromium encodes without FEC or DTX; the receiver's fmtp is what
    tells a sender to use them. Process-wide, like :func:`use_media_host`: every leg
    (publish answers, subscribe offers) then says ``useinbandfec=1;usedtx=1``, and a
    subscriber leg still matches its publisher's codec exactly (``sfu.codecs``).
    """
    for codec in aiortc_codecs.CODECS["audio"]:
        if codec.mimeType.lower() == "audio/opus":
            codec.parameters = dict(OPUS_FMTP)


def transport_cc_offered(offer_sdp: str) -> dict[str, tuple[int, frozenset[int]]]:
    """Per mid of an offer that asks for transport-wide congestion control: the
    extension id and the payload types offered with ``a=rtcp-fb:<pt> transport-cc``.

    Read before the offer is applied: the publish leg's receivers are tapped (with or
    without REMB) from the ``track`` event inside ``setRemoteDescription``. An offer
    aiortc cannot parse yields nothing here and fails in ``set_remote`` as before.
    """
    try:
        parsed = aiortc_sdp.SessionDescription.parse(offer_sdp)
    except Exception:
        return {}
    offered = {}
    for media in parsed.media:
        mid = media.rtp.muxId
        ext = next((e.id for e in media.rtp.headerExtensions if e.uri == TRANSPORT_CC), None)
        pts = frozenset(
            c.payloadType
            for c in media.rtp.codecs
            if any(f.type == "transport-cc" for f in c.rtcpFeedback)
        )
        if mid and ext is not None and pts:
            offered[mid] = (ext, pts)
    return offered


def answer_transport_cc(pc: Any, offered: dict[str, tuple[int, frozenset[int]]]) -> None:
    """Answer transport-cc where the browser offered it, on a publish connection.

    aiortc knows the extension (it parses it) but never negotiates it. Called after the
    offer is applied and before ``createAnswer``: the answer then carries the extmap
    and ``a=rtcp-fb:<pt> transport-cc`` (and no ``goog-remb``, which we no longer send
    there), and the receivers' extension map, which the C reader reads, gets its id.
    Audio too: Chromium counts every packet of the transport into one estimate, and
    audio packets the report leaves out would look like unexplained queueing.
    """
    for transceiver in pc.getTransceivers():
        entry = offered.get(transceiver.mid) if transceiver.mid else None
        if entry is None:
            continue
        ext_id, pts = entry
        if not any(e.uri == TRANSPORT_CC for e in transceiver._headerExtensions):
            transceiver._headerExtensions.append(
                RTCRtpHeaderExtensionParameters(id=ext_id, uri=TRANSPORT_CC)
            )
        for codec in transceiver._codecs:
            if codec.payloadType in pts and not is_rtx(codec):
                codec.rtcpFeedback = [
                    f for f in codec.rtcpFeedback if f.type not in ("goog-remb", "transport-cc")
                ] + [RTCRtcpFeedback(type="transport-cc")]


def arrivals(receiver: RTCRtpReceiver) -> Any | None:
    """The ``sfu._fastpath.Arrivals`` the C reader fills for ``receiver``'s transport, if
    transport-cc was negotiated there (set once the receiver runs)."""
    return getattr(receiver.transport, _ARRIVALS, None)


def rtcp_ssrc(receiver: RTCRtpReceiver) -> int | None:
    """The SSRC ``receiver``'s RTCP goes out with (known once it runs)."""
    return receiver.__dict__[_RX_RTCP_SSRC]


def send_rtcp(receiver: RTCRtpReceiver, data: bytes) -> None:
    """Send one RTCP packet on ``receiver``'s transport now (or queued behind aiortc)."""
    _send_rtcp(receiver, data)


# -- the C send path (sfu._fastpath.Leg) ------------------------------------------------

_SRTP_PROTECT = int(srtp_ffi.cast("uintptr_t", srtp_ffi.addressof(srtp_lib, "srtp_protect")))
_SRTP_UNPROTECT = int(srtp_ffi.cast("uintptr_t", srtp_ffi.addressof(srtp_lib, "srtp_unprotect")))
_SRTP_UNPROTECT_RTCP = int(
    srtp_ffi.cast("uintptr_t", srtp_ffi.addressof(srtp_lib, "srtp_unprotect_rtcp"))
)


def live(dtls: RTCDtlsTransport) -> _fastpath.Live:
    """``dtls``'s state as the C path reads it before each packet: a flag, not an
    attribute read and comparison per packet and leg.

    Made once per transport. From then on the transport's own ``_set_state`` (where
    aiortc makes every change of state after ``__init__``) sets the flag first, then
    stores and announces the state, so no handler of the change, and no packet after
    it, sees the flag disagree with ``dtls._state``."""
    flag = dtls.__dict__.get(_LIVE)
    if flag is not None:
        return flag
    flag = dtls.__dict__[_LIVE] = _fastpath.Live(dtls._state is State.CONNECTED)
    set_state = dtls._set_state

    def _set_state(state: State) -> None:
        flag.connected = state is State.CONNECTED
        set_state(state)

    dtls._set_state = _set_state  # type: ignore[method-assign]
    return flag


def fast_route(dtls: RTCDtlsTransport) -> tuple[Any, ...] | None:
    """What ``sfu._fastpath.Leg.set_route`` needs to send on ``dtls`` by itself.

    ``(srtp_ctx, srtp_protect, session, socket, host, port, live(dtls), transport)``:
    the libsrtp context of aiortc's own tx session (so SRTP indexes and keys stay
    aiortc's), the function that protects with it, the UDP socket and remote
    address of the nominated ICE pair, and asyncio's transport on that socket. ``None``
    unless the transport is connected over the chain :func:`_send_now` knows (a host
    pair through aioice's own ``Connection.send``). Before each send the C side checks
    that the DTLS transport is still connected, that the socket is open, and that
    asyncio holds no earlier writes to it; a caller compares a fresh route with the one
    it set now and then (the nominated pair or BUNDLE transport could change).
    """
    if dtls._state is not State.CONNECTED or dtls._tx_srtp is None:
        return None
    send = dtls.transport._send
    if getattr(send, "__func__", None) is not _ICE_CONNECTION_SEND:
        return None
    if not ice.consented(send.__self__):
        return None  # RFC 7675: nothing goes out until a restart wins consent back
    pair = send.__self__._nominated.get(1)
    if pair is None or type(pair.protocol) is not aioice.ice.StunProtocol:
        return None
    udp = pair.protocol.transport
    sock = getattr(udp, "_sock", None)
    if sock is None or udp.is_closing() or udp.get_write_buffer_size():
        return None
    session = dtls._tx_srtp
    ctx = int(srtp_ffi.cast("uintptr_t", session._srtp[0]))
    host, port = pair.remote_addr[:2]
    # On a shared media port (sfu.udpmux) the writes that a send must not overtake wait
    # in the shared socket's own transport: hand the C side that one.
    buffered = getattr(udp, "socket_transport", udp)
    return (ctx, _SRTP_PROTECT, session, sock, host, port, live(dtls), buffered)


def account_sent(sender: RTCRtpSender, counters: tuple[int, ...]) -> None:
    """Fold what the C path sent (``Leg.take_counters()``) into aiortc's own counters,
    so RTCP sender reports and getStats stay true."""
    packets, octets, ntp, rtp_ts, tx_packets, tx_bytes = counters[:6]
    if packets:
        d = sender.__dict__
        d[_SENDER_NTP] = ntp
        d[_SENDER_RTP_TS] = rtp_ts
        d[_SENDER_OCTETS] += octets
        d[_SENDER_PACKETS] += packets
    dtls = sender.transport
    if tx_packets and dtls is not None:
        t = dtls.__dict__
        t[_DTLS_TX_BYTES] += tx_bytes
        t[_DTLS_TX_PACKETS] += tx_packets


def _check_fast_route() -> list[str]:
    problems = []
    # A packet the C path rewrote and protected, but could not send (full socket), is
    # protected again by pylibsrtp when the queue drains: the tx policy must allow it.
    if "allow_repeat_tx" not in RTCDtlsTransport._setup_srtp.__code__.co_names:
        problems.append("aiortc RTCDtlsTransport._setup_srtp allow_repeat_tx")
    if (
        "_buffer_size"
        not in asyncio.selector_events._SelectorDatagramTransport.__init__.__code__.co_names
    ):
        problems.append("asyncio _SelectorDatagramTransport._buffer_size")
    if "_sock" not in asyncio.selector_events._SelectorTransport.__init__.__code__.co_names:
        problems.append("asyncio _SelectorTransport._sock")
    if not _init_assigns(pylibsrtp.Session, "_srtp"):
        problems.append("pylibsrtp.Session._srtp")
    for fn in (srtp_lib.srtp_protect, srtp_lib.srtp_unprotect, srtp_lib.srtp_unprotect_rtcp):
        if srtp_ffi.typeof(fn).cname != "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)":
            problems.append("libsrtp srtp_protect/unprotect signatures")
    return problems


# -- the C receive path (sfu._fastpath.Reader) ----------------------------------------

_C_READER = "_roundtable_reader"  # the sfu._fastpath.Reader reading a StunProtocol's socket
_ON_RTP = "_roundtable_on_rtp"  # a DTLS transport's own RTP handler, given to read_in_c


def _install_c_reader(dtls: RTCDtlsTransport) -> None:
    """Read ``dtls``'s ICE sockets with a C :class:`sfu._fastpath.Reader`.

    asyncio reads one datagram per event-loop pass, then aioice, the DTLS transport and
    pylibsrtp each add Python around the decryption. The reader replaces asyncio's read
    callback on each socket of the ICE connection: per pass it drains up to 64
    datagrams; SRTP packets (while the DTLS transport stays connected) are decrypted
    with aiortc's own rx session, parsed in C, routed by aiortc's RTP router and handed
    to the receiver's synchronous handler (``tap_receiver``); SRTCP is decrypted there
    too and handed to aiortc's RTCP routing (:func:`_drive`, no task per packet); every
    other datagram (STUN, DTLS) goes to the protocol's ``datagram_received`` exactly
    as asyncio would hand it. Closing the transport removes the reader with it.
    Called on every receiver start (it refreshes the extension ids and the session)
    and by :func:`read_in_c` for the SFU's send-only connections.
    """
    connection = getattr(dtls.transport, "_connection", None)
    loop = asyncio.get_running_loop()
    if connection is None or dtls._state is not State.CONNECTED or dtls._rx_srtp is None:
        return
    # A socket of its own (ROUNDTABLE_MEDIA_PORT=0, a port range) is read by the loop's
    # transport; only asyncio's selector loop lets us swap its read callback. The shared
    # media port's sockets have their C Reader from sfu.udpmux on any loop (uvloop too).
    selector = isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
    router = dtls._rtp_router
    ids = dtls._rtp_header_extensions_map.__dict__[_EXT_IDS]
    session = dtls._rx_srtp
    ctx = int(srtp_ffi.cast("uintptr_t", session._srtp[0]))

    ssrc_table, mid_table = router.ssrc_table, router.mid_table

    def on_rtp(packet: Any, arrival_time_ms: int) -> None:
        mid = packet.mid
        if mid is not None and packet.ssrc not in ssrc_table:
            # An SSRC no SDP line named (a simulcast layer, its RTX): BUNDLE says the
            # MID extension, which the browser sends until we acknowledge the SSRC,
            # decides its receiver; aiortc 1.16 only guesses from the payload type.
            by_mid = mid_table.get(mid)
            if by_mid is not None:
                ssrc_table[packet.ssrc] = by_mid
        receiver = router.route_rtp(packet)
        if receiver is None:
            return
        handle = getattr(receiver, _RTP_HANDLER, None)
        if handle is None:  # a receiver that decodes: give it aiortc's own packet type
            rtp = RtpPacket(
                packet.payload_type,
                packet.marker,
                packet.sequence_number,
                packet.timestamp,
                packet.ssrc,
                packet.payload,
            )
            rtp.extensions.abs_send_time = packet.abs_send_time
            rtp.extensions.mid = packet.mid
            rtp.extensions.rtp_stream_id = packet.rtp_stream_id
            rtp.extensions.repaired_rtp_stream_id = packet.repaired_rtp_stream_id
            task = asyncio.ensure_future(receiver._handle_rtp_packet(rtp, arrival_time_ms))
            _in_flight.add(task)
            task.add_done_callback(_in_flight.discard)
            return
        try:
            handle(packet, arrival_time_ms)
        except Exception:
            # One packet's failure must not end the batch the reader is draining;
            # aiortc's own task logs and carries on the same way.
            log.exception("RTP handler failed")

    def on_rtcp(data: bytes) -> None:
        _drive(dtls._handle_rtcp_data(data))

    # transport-cc: every RTP packet's arrival is recorded in C for sfu.twcc.
    twcc_id = ids.transport_sequence_number or 0
    recorder = getattr(dtls, _ARRIVALS, None)
    if twcc_id and recorder is None:
        recorder = _fastpath.Arrivals()
        setattr(dtls, _ARRIVALS, recorder)
    if not twcc_id:
        recorder = None
    rtp_handler = getattr(dtls, _ON_RTP, None)
    if rtp_handler is None:
        # Packets of tracks registered by take_inbound are taken in C; the rest, and
        # every packet until then, go to on_rtp.
        inbound = getattr(dtls, _INBOUND, None)
        if inbound is None:
            inbound = _fastpath.Inbound(on_rtp)
            setattr(dtls, _INBOUND, inbound)
        else:
            inbound.set_fallback(on_rtp)
        rtp_handler = inbound
    for protocol in list(connection._protocols):
        udp = protocol.transport
        sock = getattr(udp, "_sock", None)
        if type(protocol) is not aioice.ice.StunProtocol or sock is None or udp.is_closing():
            continue
        reader = getattr(protocol, _C_READER, None)
        if reader is None:
            if not selector:
                continue
            fd = sock.fileno()
            reader = _fastpath.Reader(fd, protocol.datagram_received, protocol.error_received)
            # The public add_reader refuses a transport's fd; the transport's close()
            # removes whichever reader is registered for it.
            loop._remove_reader(fd)
            loop._add_reader(fd, reader)
            setattr(protocol, _C_READER, reader)
        reader.set_rtp(
            ctx,
            _SRTP_UNPROTECT,
            _SRTP_UNPROTECT_RTCP,
            session,
            dtls,
            live(dtls),
            rtp_handler,
            on_rtcp,
            ids.abs_send_time or 0,
            ids.mid or 0,
            ids.rtp_stream_id or 0,
            ids.repaired_rtp_stream_id or 0,
        )
        reader.set_twcc(twcc_id, recorder)


def read_in_c(pc: Any, on_rtp: Callable[[Any, int], None] | None = None) -> None:
    """Read a connected peer connection's sockets in C (:func:`_install_c_reader`).

    For the SFU's send-only subscribe connections, where only RTCP arrives (receiver
    reports, NACKs, PLIs, REMB); publish connections get it from ``tap_receiver``.
    With ``on_rtp(packet, arrival_time_ms)`` (the load generator's subscribers, which
    only count), every RTP packet of the connection's transports goes straight there
    instead of through aiortc's router to a receiver's handler; it stays with the
    transport, so receivers started later keep it. RTCP is handled as without it.
    ``on_rtp`` must not raise: an exception ends the reader's batch and reaches asyncio.
    """
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        if dtls is not None:
            if on_rtp is not None:
                setattr(dtls, _ON_RTP, on_rtp)
            _install_c_reader(dtls)


def _drive(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine of aiortc's RTCP handling now, in the caller's callback.

    aiortc's RTCP handlers are coroutines that in practice never suspend (their awaits
    are non-blocking sends); a task per RTCP packet would cost more than the handling.
    Should one suspend, it is resumed when what it awaits is done, as a task would.
    """
    done, awaited = _step(coro)
    if done:
        return
    task = asyncio.ensure_future(_finish(coro, awaited))
    _in_flight.add(task)
    task.add_done_callback(_in_flight.discard)


async def _finish(coro: Coroutine[Any, Any, None], awaited: Any) -> None:
    try:
        while True:
            if isinstance(awaited, asyncio.Future):
                await asyncio.wait([awaited])  # the coroutine reads its outcome itself
            else:
                await asyncio.sleep(0)  # a bare yield
            done, awaited = _step(coro)
            if done:
                return
    finally:
        coro.close()


def _step(coro: Coroutine[Any, Any, None]) -> tuple[bool, Any]:
    """Resume ``coro`` once: (whether it is finished, what it awaits now)."""
    try:
        return False, coro.send(None)
    except StopIteration:
        return True, None
    except Exception:
        log.exception("RTCP handler failed")
        return True, None


def _check_c_reader() -> list[str]:
    problems = []
    loop_cls = asyncio.selector_events.BaseSelectorEventLoop
    if not all(callable(getattr(loop_cls, m, None)) for m in ("_add_reader", "_remove_reader")):
        problems.append("asyncio BaseSelectorEventLoop._add_reader/_remove_reader")
    if not _init_assigns(HeaderExtensionsMap, _EXT_IDS):
        problems.append("aiortc HeaderExtensionsMap ids")
    return problems
