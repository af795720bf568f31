"""Simulcast: a browser sends one camera as several RTP streams (layers), one per ``rid``.

aiortc 1.16 does not negotiate simulcast (no ``a=rid``/``a=simulcast``), so this module
does it on the SDP text: :func:`offered_layers` reads what the browser offers,
:func:`answer_layers` adds the receive side to aiortc's answer. The layers arrive with
SSRCs no SDP line names; the browser marks the first packets of each with the
``rtp-stream-id`` header extension (RTX with ``repaired-rtp-stream-id``) until our
receiver reports acknowledge them, and :class:`Layers` learns SSRC → layer from them.

Each layer is a :class:`~sfu.forwarder.Forwarder` of its own (own SSRC, own key frames,
own RTX), all under the one track id subscribers know. A subscriber's
:class:`~sfu.forwarder.Leg` follows one layer at a time and switches at a key frame of
the target layer (see ``Leg.set_view`` / ``Leg.set_cap``). Nothing is decoded: the only
look into a payload is the VP8 key frame's header, for the layer's width and height.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from . import aiortc_hooks as hooks
from .forwarder import Forwarder
from .stats import RoomStats

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
RRID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
MAX_LAYERS = 4  # a browser sends at most three; more is someone playing games
_RID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


@dataclass(frozen=True, slots=True)
class OfferedSimulcast:
    """One m-section's simulcast offer: its mid, the rids low → high, the extension ids."""

    mid: str
    rids: tuple[str, ...]
    rid_ext: int
    rrid_ext: int | None
    mid_ext: int | None


def _sections(sdp: str) -> list[list[str]]:
    lines = sdp.replace("\r\n", "\n").split("\n")
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def offered_layers(offer_sdp: str) -> dict[str, OfferedSimulcast]:
    """The video m-sections of a browser's offer that send simulcast, by mid.

    The page lists its encodings low → high resolution (``l``, ``m``, ``h``), and the
    browser keeps that order in ``a=simulcast:send``; a section is taken as simulcast
    only with at least two send rids and the ``rtp-stream-id`` extension, else the
    browser sends one stream and nothing here applies.
    """
    found: dict[str, OfferedSimulcast] = {}
    for section in _sections(offer_sdp)[1:]:
        if not section[0].startswith("m=video"):
            continue
        mid = None
        ext: dict[str, int] = {}
        send_rids: list[str] = []
        order: list[str] = []
        for line in section:
            if line.startswith("a=mid:"):
                mid = line[6:].strip()
            elif line.startswith("a=extmap:"):
                parts = line[9:].split()
                if len(parts) >= 2:
                    try:
                        ext[parts[1]] = int(parts[0].split("/")[0])
                    except ValueError:
                        continue
            elif line.startswith("a=rid:"):
                parts = line[6:].split()
                if len(parts) >= 2 and parts[1] == "send" and _RID.match(parts[0]):
                    send_rids.append(parts[0])
            elif line.startswith("a=simulcast:"):
                parts = line[12:].split()
                if len(parts) >= 2 and parts[0] == "send":
                    # alternatives "a,b": the first; "~a": paused at first, still a layer
                    order = [alt.split(",")[0].lstrip("~") for alt in parts[1].split(";")]
        rids = tuple(r for r in (order or send_rids) if r in send_rids)
        if mid is None or len(rids) < 2 or RID_URI not in ext or len(rids) > MAX_LAYERS:
            continue
        found[mid] = OfferedSimulcast(
            mid=mid,
            rids=rids,
            rid_ext=ext[RID_URI],
            rrid_ext=ext.get(RRID_URI),
            mid_ext=ext.get(MID_URI),
        )
    return found


def answer_layers(answer_sdp: str, offered: dict[str, OfferedSimulcast]) -> str:
    """aiortc's answer with the receive side of each offered simulcast added.

    Per section: ``a=rid:<rid> recv`` for each layer, ``a=simulcast:recv l;m;h``, and the
    ``rtp-stream-id`` / ``repaired-rtp-stream-id`` (and ``mid``) extensions with the
    offer's ids, which aiortc does not answer on its own. A section aiortc answered
    inactive (kind not granted) stays as it is.
    """
    if not offered:
        return answer_sdp
    sections = _sections(answer_sdp)
    out: list[str] = list(sections[0])
    for section in sections[1:]:
        mid = next((line[6:].strip() for line in section if line.startswith("a=mid:")), None)
        sim = offered.get(mid) if mid is not None else None
        if (
            sim is None
            or any(line == "a=inactive" for line in section)
            or section[0].endswith(" 0")
        ):
            out += section
            continue
        body = [line for line in section if line]
        have = {line.split()[1] for line in body if line.startswith("a=extmap:") and " " in line}
        extra = []
        for uri, ext_id in (
            (MID_URI, sim.mid_ext),
            (RID_URI, sim.rid_ext),
            (RRID_URI, sim.rrid_ext),
        ):
            if ext_id is not None and uri not in have:
                extra.append(f"a=extmap:{ext_id} {uri}")
        extra += [f"a=rid:{rid} recv" for rid in sim.rids]
        extra.append("a=simulcast:recv " + ";".join(sim.rids))
        out += body + extra
        if section[-1] == "":
            out.append("")
    text = "\r\n".join(out)
    return text if text.endswith("\r\n") else text + "\r\n"


class Layers:
    """A simulcast track: one :class:`Forwarder` per layer, fed by one receiver.

    Quacks like a :class:`Forwarder` where subscribers and the router look (track id,
    kind, codec, ``paused``, ``legs``, ``layers``), so a subscriber's leg can follow any
    of its layers. :meth:`tap` sends each packet to its layer by SSRC; an SSRC seen for
    the first time is placed by its ``rtp-stream-id`` (media) or
    ``repaired-rtp-stream-id`` (RTX) extension, and packets of an SSRC that carries
    neither yet are dropped (the browser marks the first packets of every stream).
    """

    def __init__(
        self,
        track_id: str,
        publisher_id: str,
        receiver: RTCRtpReceiver,
        rids: tuple[str, ...],
        stats: RoomStats,
        keyframe_interval: float,
    ) -> None:
        self.track_id = track_id
        self.publisher_id = publisher_id
        self.kind = "video"
        self.layers: list[Forwarder] = [
            Forwarder(track_id, publisher_id, "video", receiver, stats, keyframe_interval, rid=rid)
            for rid in rids
        ]
        self._by_rid = {f.rid: f for f in self.layers}
        for f in self.layers:
            f.on_restart = self._reconsider
        self._by_ssrc: dict[int, Forwarder] = {}
        # Each layer's current media and RTX SSRC: a new one replaces the old in _by_ssrc,
        # so a publisher inventing SSRCs does not grow it.
        self._ssrc_of: dict[tuple[str | None, bool], int] = {}
        self._rtx_waiting: dict[int, Forwarder] = {}  # RTX ssrc -> layer whose ssrc is unknown
        self._receiver = receiver
        self._paused = False

    @property
    def rids(self) -> tuple[str, ...]:
        return tuple(f.rid or "" for f in self.layers)

    @property
    def codec(self) -> RTCRtpCodecParameters | None:
        return self.layers[0].codec

    @property
    def ready(self) -> bool:
        return self.layers[0].ready

    @property
    def ssrc(self) -> int | None:
        return next((f.ssrc for f in reversed(self.layers) if f.ssrc is not None), None)

    @property
    def paused(self) -> bool:
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused = value
        for f in self.layers:
            f.paused = value

    @property
    def legs(self) -> list:
        return [leg for f in self.layers for leg in f.legs]

    def set_codecs(self, codecs: list[RTCRtpCodecParameters]) -> None:
        for f in self.layers:
            f.set_codecs(codecs)

    def tap(self, packet: RtpPacket, codecs: dict[int, RTCRtpCodecParameters]) -> None:
        layer = self._by_ssrc.get(packet.ssrc)
        if layer is None:
            layer = self._learn(packet)
            if layer is None:
                return
        layer.tap(packet, codecs)
        if self._rtx_waiting and layer.ssrc is not None:
            self._map_waiting_rtx()

    def _learn(self, packet: RtpPacket) -> Forwarder | None:
        ext = packet.extensions
        rid = ext.rtp_stream_id
        if rid is not None:
            layer = self._by_rid.get(rid)
            if layer is not None:
                self._map(packet.ssrc, layer, rtx=False)
            return layer
        rrid = ext.repaired_rtp_stream_id
        if rrid is not None:
            layer = self._by_rid.get(rrid)
            if layer is not None:
                self._map(packet.ssrc, layer, rtx=True)
                # aiortc's receiver unwraps RTX (for its NACK bookkeeping) by a map from
                # the RTX SSRC to the media SSRC, which the SDP would have given it.
                self._rtx_waiting[packet.ssrc] = layer
                self._map_waiting_rtx()
            return layer
        return None

    def _map(self, ssrc: int, layer: Forwarder, rtx: bool) -> None:
        old = self._ssrc_of.get((layer.rid, rtx))
        if old is not None and old != ssrc:
            self._by_ssrc.pop(old, None)
            self._rtx_waiting.pop(old, None)
        self._ssrc_of[(layer.rid, rtx)] = ssrc
        self._by_ssrc[ssrc] = layer

    def _map_waiting_rtx(self) -> None:
        for rtx_ssrc, layer in list(self._rtx_waiting.items()):
            if layer.ssrc is not None:
                hooks.map_rtx(self._receiver, rtx_ssrc, layer.ssrc)
                del self._rtx_waiting[rtx_ssrc]

    def _reconsider(self) -> None:
        for leg in self.legs:
            leg.update_layer()

    def request_keyframe(self) -> None:
        for f in self.layers:
            if f.legs:
                f.request_keyframe()

    async def close(self) -> None:
        for f in self.layers:
            await f.close()
