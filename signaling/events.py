"""Validation of client → server Socket.IO events (docs/protocol.md, "Client → server").

Every payload is checked for shape, types, allowed fields and size before anything acts
on it; a failure is an ``invalid_payload`` (or ``payload_too_large``) refusal, never an
exception escaping into python-socketio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from signaling.errors import InvalidPayload, PayloadTooLarge

MAX_SDP_BYTES = 64 * 1024
MAX_CANDIDATE_CHARS = 1024
CANDIDATE_FIELDS = {"candidate", "sdpMid", "sdpMLineIndex", "usernameFragment"}


def _object(args: tuple[Any, ...], fields: set[str], *, optional: bool = False) -> dict[str, Any]:
    if optional and len(args) == 0:
        return {}
    if len(args) != 1 or not isinstance(args[0], dict):
        raise InvalidPayload("invalid_payload", "The payload must be one JSON object.")
    payload: dict[str, Any] = args[0]
    unknown = set(payload) - fields
    if unknown:
        # Field names are client-chosen: report how many, not what, to keep logs clean.
        raise InvalidPayload("invalid_payload", f"{len(unknown)} unknown field(s) in the payload.")
    return payload


def _sdp(payload: dict[str, Any], expected_type: str) -> dict[str, Any]:
    if payload.get("type") != expected_type:
        raise InvalidPayload("invalid_payload", f"'type' must be {expected_type!r}.")
    sdp = payload.get("sdp")
    if not isinstance(sdp, str) or not sdp:
        raise InvalidPayload("invalid_payload", "'sdp' must be a non-empty string.")
    if len(sdp.encode()) > MAX_SDP_BYTES:
        raise PayloadTooLarge("payload_too_large", f"'sdp' is larger than {MAX_SDP_BYTES} bytes.")
    if not sdp.startswith("v=0"):
        raise InvalidPayload("invalid_payload", "'sdp' is not a session description.")
    return {"type": expected_type, "sdp": sdp}


def parse_publish(args: tuple[Any, ...]) -> dict[str, Any]:
    return _sdp(_object(args, {"type", "sdp"}), "offer")


def parse_subscribe_answer(args: tuple[Any, ...]) -> dict[str, Any]:
    return _sdp(_object(args, {"type", "sdp"}), "answer")


def parse_ice(args: tuple[Any, ...]) -> dict[str, Any]:
    payload = _object(args, {"pc", "candidate"})
    pc = payload.get("pc")
    if pc not in ("publish", "subscribe"):
        raise InvalidPayload("invalid_payload", "'pc' must be 'publish' or 'subscribe'.")
    if "candidate" not in payload:
        raise InvalidPayload("invalid_payload", "'candidate' is required (null ends gathering).")
    raw = payload["candidate"]
    if raw is None:
        return {"pc": pc, "candidate": None}
    if not isinstance(raw, dict) or set(raw) - CANDIDATE_FIELDS:
        raise InvalidPayload("invalid_payload", "'candidate' must be an RTCIceCandidateInit.")
    text = raw.get("candidate")
    mid = raw.get("sdpMid")
    index = raw.get("sdpMLineIndex")
    ufrag = raw.get("usernameFragment")
    if not isinstance(text, str) or len(text) > MAX_CANDIDATE_CHARS:
        raise InvalidPayload("invalid_payload", "'candidate.candidate' must be a short string.")
    if mid is not None and (not isinstance(mid, str) or len(mid) > 64):
        raise InvalidPayload("invalid_payload", "'candidate.sdpMid' must be a short string.")
    if index is not None and (
        isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1024
    ):
        raise InvalidPayload(
            "invalid_payload", "'candidate.sdpMLineIndex' must be a small integer."
        )
    if mid is None and index is None:
        raise InvalidPayload("invalid_payload", "'candidate' needs sdpMid or sdpMLineIndex.")
    if ufrag is not None and (not isinstance(ufrag, str) or len(ufrag) > 256):
        raise InvalidPayload("invalid_payload", "'candidate.usernameFragment' must be a string.")
    candidate: dict[str, Any] = {"candidate": text, "sdpMid": mid, "sdpMLineIndex": index}
    return {"pc": pc, "candidate": candidate}


def parse_leave(args: tuple[Any, ...]) -> dict[str, Any]:
    return _object(args, set(), optional=True)


_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
KINDS = ("audio", "video")


def _participant(payload: dict[str, Any]) -> str:
    pid = payload.get("participant")
    if not isinstance(pid, str) or not 0 < len(pid) <= 64 or not set(pid) <= _ID_CHARS:
        raise InvalidPayload("invalid_payload", "'participant' must be a participant id.")
    return pid


def _kind(payload: dict[str, Any]) -> str:
    kind = payload.get("kind")
    if kind not in KINDS:
        raise InvalidPayload("invalid_payload", "'kind' must be 'audio' or 'video'.")
    return kind


def parse_target(args: tuple[Any, ...]) -> dict[str, Any]:
    """``lobby.admit``, ``lobby.deny``, ``moderate.remove``: ``{"participant": id}``."""
    return {"participant": _participant(_object(args, {"participant"}))}


def parse_mute(args: tuple[Any, ...]) -> dict[str, Any]:
    payload = _object(args, {"participant", "kind"})
    return {"participant": _participant(payload), "kind": _kind(payload)}


def parse_unmute(args: tuple[Any, ...]) -> dict[str, Any]:
    return {"kind": _kind(_object(args, {"kind"}))}


def parse_lock(args: tuple[Any, ...]) -> dict[str, Any]:
    locked = _object(args, {"locked"}).get("locked")
    if not isinstance(locked, bool):
        raise InvalidPayload("invalid_payload", "'locked' must be true or false.")
    return {"locked": locked}


MAX_EXTEND_MINUTES = 24 * 60


def parse_extend(args: tuple[Any, ...]) -> dict[str, Any]:
    minutes = _object(args, {"minutes"}).get("minutes")
    if (
        isinstance(minutes, bool)
        or not isinstance(minutes, int)
        or not 1 <= minutes <= MAX_EXTEND_MINUTES
    ):
        raise InvalidPayload("invalid_payload", "'minutes' must be an integer from 1 to 1440.")
    return {"minutes": minutes}


def parse_end(args: tuple[Any, ...]) -> dict[str, Any]:
    return _object(args, set(), optional=True)


MAX_CHAT_CHARS = 1000
# Control characters would let a message rewrite how the page or a log viewer shows it;
# line breaks and tabs are text people type.
_CHAT_DROP = {c: None for c in range(32) if c not in (9, 10)} | {127: None}


def parse_chat_send(args: tuple[Any, ...]) -> dict[str, Any]:
    text = _object(args, {"text"}).get("text")
    if not isinstance(text, str):
        raise InvalidPayload("invalid_payload", "'text' must be a string.")
    text = text.translate(_CHAT_DROP).strip()
    if not text:
        raise InvalidPayload("invalid_payload", "'text' is empty.")
    if len(text) > MAX_CHAT_CHARS:
        raise PayloadTooLarge(
            "payload_too_large", f"'text' is longer than {MAX_CHAT_CHARS} characters."
        )
    return {"text": text}


def parse_chat_enable(args: tuple[Any, ...]) -> dict[str, Any]:
    enabled = _object(args, {"enabled"}).get("enabled")
    if not isinstance(enabled, bool):
        raise InvalidPayload("invalid_payload", "'enabled' must be true or false.")
    return {"enabled": enabled}


PARSERS: dict[str, Callable[[tuple[Any, ...]], dict[str, Any]]] = {
    "publish": parse_publish,
    "subscribe.answer": parse_subscribe_answer,
    "ice": parse_ice,
    "leave": parse_leave,
    "lobby.admit": parse_target,
    "lobby.deny": parse_target,
    "moderate.mute": parse_mute,
    "moderate.remove": parse_target,
    "room.lock": parse_lock,
    "room.end": parse_end,
    "room.extend": parse_extend,
    "unmute": parse_unmute,
    "chat.send": parse_chat_send,
    "chat.enable": parse_chat_enable,
    "ice.refresh": parse_end,
}
