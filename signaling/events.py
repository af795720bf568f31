"""Every client → server Socket.IO event as a type, declared once (docs/protocol.md).

``EVENTS`` maps each event name to a pydantic model; the dispatcher (``signaling.socket``)
refuses a name that is not in it (``unknown_event``) and validates the payload against
the model before any handler runs: no unknown fields, strict types, the size limits below.
A failure is ``invalid_payload`` (or ``payload_too_large``), never an exception escaping
into python-socketio. ``tests/test_schema.py`` checks docs/protocol.md's tables against
this registry, so the documentation cannot drift from what the server accepts.

The limits on what a client may send live here, in one place. (The SFU checks SDP size
once more on its own: the media plane does not trust its caller either.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from signaling.errors import InvalidPayload, PayloadTooLarge
from signaling.tokens import ID_PATTERN

MAX_SDP_BYTES = 64 * 1024
MAX_SDP_LINES = 2000  # a browser's offer with simulcast has a few hundred
MAX_CANDIDATE_CHARS = 1024
MAX_CANDIDATES_BEFORE_OFFER = 64  # trickled before the publish offer was applied
MAX_CANDIDATES_PER_CONNECTION = 256  # per leg and offer/answer; a browser sends a few dozen
MAX_EXTEND_MINUTES = 24 * 60
MAX_CHAT_CHARS = 1000
MAX_VIEW_TILES = 64  # more than a room holds (ROUNDTABLE_MAX_PARTICIPANTS is at most that)
MAX_TILE_PX = 16384  # device pixels; larger than any screen

# Control characters would let a message rewrite how the page or a log viewer shows it;
# line breaks and tabs are text people type.
_CHAT_DROP = {c: None for c in range(32) if c not in (9, 10)} | {127: None}


def _sdp(sdp: str) -> str:
    if len(sdp.encode()) > MAX_SDP_BYTES:
        raise PayloadTooLarge("payload_too_large", f"'sdp' is larger than {MAX_SDP_BYTES} bytes.")
    if sdp.count("\n") >= MAX_SDP_LINES:
        raise PayloadTooLarge("payload_too_large", f"'sdp' has more than {MAX_SDP_LINES} lines.")
    if not sdp.startswith("v=0"):
        raise ValueError("not a session description")
    return sdp


def _chat_text(text: str) -> str:
    text = text.translate(_CHAT_DROP).strip()
    if not text:
        raise ValueError("empty")
    if len(text) > MAX_CHAT_CHARS:
        raise PayloadTooLarge(
            "payload_too_large", f"'text' is longer than {MAX_CHAT_CHARS} characters."
        )
    return text


Sdp = Annotated[str, AfterValidator(_sdp)]
ParticipantId = Annotated[str, Field(pattern=ID_PATTERN)]
Kind = Literal["audio", "video"]


class Event(BaseModel):
    """A client event's payload: one JSON object, no unknown fields, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Empty(Event):
    """``{}`` or no payload at all."""


class Publish(Event):
    type: Literal["offer"]
    sdp: Sdp


class SubscribeAnswer(Event):
    type: Literal["answer"]
    sdp: Sdp


class Candidate(Event):
    """An ``RTCIceCandidateInit`` as the browser's ``icecandidate`` event gives it."""

    candidate: Annotated[str, Field(max_length=MAX_CANDIDATE_CHARS)]
    sdpMid: Annotated[str, Field(max_length=64)] | None = None  # noqa: N815 - the W3C name
    sdpMLineIndex: Annotated[int, Field(ge=0, lt=1024)] | None = None  # noqa: N815
    usernameFragment: Annotated[str, Field(max_length=256)] | None = None  # noqa: N815

    @model_validator(mode="after")
    def _placed(self) -> Candidate:
        if self.sdpMid is None and self.sdpMLineIndex is None:
            raise ValueError("needs sdpMid or sdpMLineIndex")
        return self


class Ice(Event):
    pc: Literal["publish", "subscribe"]
    candidate: Candidate | None  # required; null ends gathering

    def payload(self) -> dict[str, Any]:
        if self.candidate is None:
            return {"pc": self.pc, "candidate": None}
        c = self.candidate
        return {
            "pc": self.pc,
            "candidate": {
                "candidate": c.candidate,
                "sdpMid": c.sdpMid,
                "sdpMLineIndex": c.sdpMLineIndex,
            },
        }


class Target(Event):
    """``lobby.admit``, ``lobby.deny``, ``moderate.remove``."""

    participant: ParticipantId


class Mute(Event):
    participant: ParticipantId
    kind: Kind


class Unmute(Event):
    kind: Kind


class Lock(Event):
    locked: bool


class Extend(Event):
    minutes: Annotated[int, Field(ge=1, le=MAX_EXTEND_MINUTES)]


class ChatSend(Event):
    text: Annotated[str, AfterValidator(_chat_text)]


class ChatEnable(Event):
    enabled: bool


class ScreenShare(Event):
    sharing: bool


class Hand(Event):
    raised: bool


# The registry: every event a client may send, and nothing else.
class IceRestart(Event):
    """Only the subscribe leg: the publish leg restarts with its own re-offer."""

    pc: Literal["subscribe"]


class SelfMute(Event):
    kind: Kind
    muted: bool


class Quality(Event):
    level: Literal["good", "poor", "lost"]


class Tile(Event):
    """One remote participant's tile as the page shows it, in device pixels."""

    participant: ParticipantId
    visible: bool
    width: Annotated[int, Field(ge=0, le=MAX_TILE_PX)]
    height: Annotated[int, Field(ge=0, le=MAX_TILE_PX)]


class View(Event):
    """What the page shows of each remote participant's video (the SFU picks layers)."""

    tiles: Annotated[list[Tile], Field(max_length=MAX_VIEW_TILES)]


EVENTS: dict[str, type[Event]] = {
    "publish": Publish,
    "subscribe.answer": SubscribeAnswer,
    "ice": Ice,
    "leave": Empty,
    "ice.refresh": Empty,
    "lobby.admit": Target,
    "lobby.deny": Target,
    "moderate.mute": Mute,
    "moderate.remove": Target,
    "unmute": Unmute,
    "room.lock": Lock,
    "room.end": Empty,
    "room.extend": Extend,
    "chat.send": ChatSend,
    "chat.enable": ChatEnable,
    "ice.restart": IceRestart,
    "self.mute": SelfMute,
    "quality": Quality,
    "view": View,
    "screen.share": ScreenShare,
    "hand": Hand,
}


def _message(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    if extra:
        # Field names are client-chosen: report how many, not which, to keep logs clean.
        return f"{len(extra)} unknown field(s) in the payload."
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"] if not isinstance(p, int)) or "payload"
    return f"'{where}' is not valid: {first['msg']}."


def parse(event: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """The validated payload of ``event`` as a dict; ``KeyError`` if the event is unknown."""
    model = EVENTS[event]
    if model is Empty and len(args) == 0:
        return {}
    if len(args) != 1 or not isinstance(args[0], dict):
        raise InvalidPayload("invalid_payload", "The payload must be one JSON object.")
    try:
        value = model.model_validate(args[0])
    except ValidationError as exc:
        raise InvalidPayload("invalid_payload", _message(exc)) from None
    if isinstance(value, Ice):
        return value.payload()
    return value.model_dump()


def _parser(event: str) -> Callable[[tuple[Any, ...]], dict[str, Any]]:
    return lambda args: parse(event, args)


# What the dispatcher looks events up in (kept for the handlers that index it by name).
PARSERS: dict[str, Callable[[tuple[Any, ...]], dict[str, Any]]] = {
    name: _parser(name) for name in EVENTS
}
