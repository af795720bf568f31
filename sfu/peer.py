"""Peer-connection plumbing shared by publish and subscribe connections."""

from __future__ import annotations

import logging

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from .aiortc_hooks import strip_mdns_candidates
from .errors import MediaError
from .unlink import unlink_later, unlinked

log = logging.getLogger(__name__)

MAX_CANDIDATE_LEN = 512
MAX_SDP_BYTES = 64 * 1024
MAX_MEDIA_SECTIONS = 32  # a counselling room has a handful of participants


def check_sdp(sdp: str, kind: str) -> None:
    """Refuse descriptions aiortc would accept but an SFU should not (empty, huge)."""
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise MediaError("sdp_invalid", f"The {kind} is not a session description.")
    if len(sdp.encode()) > MAX_SDP_BYTES:
        raise MediaError("sdp_invalid", f"The {kind} is larger than {MAX_SDP_BYTES} bytes.")
    sections = sdp.count("\nm=")
    if sections == 0:
        raise MediaError("sdp_invalid", f"The {kind} has no media section.")
    if sections > MAX_MEDIA_SECTIONS:
        raise MediaError(
            "sdp_invalid", f"The {kind} has more than {MAX_MEDIA_SECTIONS} media sections."
        )


def new_peer_connection() -> RTCPeerConnection:
    """A peer connection on one transport, with no STUN/TURN servers.

    No ICE servers: the SFU answers on its configured media address, and aiortc's
    default (a public STUN server) would send packets off the machine. max-bundle: with
    aiortc's default "balanced" policy, an offerer's second video transceiver is born
    bundled onto the first video transport and is not moved when the answer bundles
    everything onto the first m-line, so its sender would keep a stopped transport.
    """
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


async def set_remote(pc: RTCPeerConnection, description: RTCSessionDescription) -> None:
    """Apply a remote description, turning aiortc's many parse errors into one code."""
    check_sdp(description.sdp, description.type)
    description = RTCSessionDescription(
        sdp=strip_mdns_candidates(description.sdp), type=description.type
    )
    try:
        await pc.setRemoteDescription(description)
    except MediaError:
        raise
    except Exception as exc:  # aiortc raises ValueError, KeyError, IndexError, …
        log.info("rejected remote %s: %s", description.type, type(exc).__name__)
        raise MediaError("sdp_invalid", f"The {description.type} could not be applied.") from exc


async def add_candidate(pc: RTCPeerConnection, candidate: dict | None) -> None:
    """Add a trickled browser candidate; mDNS ones and end-of-candidates are dropped.

    End-of-candidates is not passed on: with every ``.local`` candidate dropped, aioice
    would otherwise give up before the browser's checks reveal its address.
    """
    if candidate is None:
        return
    text = candidate.get("candidate")
    if not isinstance(text, str) or len(text) > MAX_CANDIDATE_LEN:
        raise MediaError("invalid_payload", "ICE candidate must be a short string.")
    if not text:
        return  # the browser's own end-of-candidates marker
    try:
        parsed = candidate_from_sdp(
            text.split(":", 1)[1] if text.startswith("candidate:") else text
        )
    except (ValueError, IndexError) as exc:
        raise MediaError("invalid_payload", "ICE candidate could not be parsed.") from exc
    if parsed.ip.lower().endswith(".local"):
        return
    parsed.sdpMid = candidate.get("sdpMid")
    parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
    if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
        parsed.sdpMLineIndex = 0
    try:
        await pc.addIceCandidate(parsed)
    except Exception as exc:
        raise MediaError("invalid_payload", "ICE candidate was not accepted.") from exc


async def close_quietly(pc: RTCPeerConnection) -> None:
    if unlinked(pc):
        return  # closed, and its objects cleared since
    try:
        await pc.close()
    except Exception:  # closing must never raise into cleanup paths
        log.exception("error while closing a peer connection")
    unlink_later(pc)
