"""Every HTTP request body as a type, declared once (docs/protocol.md, "REST").

Like the Socket.IO events (``signaling.events``): strict pydantic models, unknown fields
refused, a failure is ``bad_request`` (400) before any handler acts on the body. Bounds
that depend on the operator's settings (how long a session or an invite may last) are
checked by the handler against the validated value.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from signaling.errors import BadRequest
from signaling.mailer import valid_email

MAX_NAME_CHARS = 80
MAX_TEXT = 120
ORGANISATION_TYPES = (
    "pension_insurance",
    "chamber",
    "training_provider",
    "job_centre",
    "interpreter",
    "other",
)
RIGHTS = ("audio", "video", "screen", "see_client", "chat")
DEFAULT_RIGHTS = ("audio", "video", "see_client", "chat")
MAX_INVITE_MINUTES = 240  # the longest an invite may be valid (and so a partner's default)


def _stripped(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("empty")
    return value


def _optional(value: str | None) -> str | None:
    """An empty field in a form means "none", as for ``email``."""
    return (value.strip() or None) if value is not None else None


def _email(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    value = value.strip()
    if not valid_email(value):
        raise ValueError("not an e-mail address")
    return value


Name = Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(_stripped)]
Text = Annotated[str, AfterValidator(_stripped), Field(max_length=MAX_TEXT)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CreateRoom(Body):
    """``POST /api/rooms``; ``valid_minutes`` defaults to ``ROUNDTABLE_ROOM_MINUTES``."""

    client_name: Name = "Client"
    caseworker_name: Name = "Caseworker"
    valid_minutes: int | None = None
    client_lobby: bool = True
    client_consent: bool = True
    # The client sits at the caseworker's desk: no client link (a QR code can still make one).
    client_present: bool = False


class CreateInvite(Body):
    """``POST /api/rooms/{room}/invites``; ``valid_minutes`` defaults to the operator's."""

    organisation_type: Literal[ORGANISATION_TYPES] = "other"  # type: ignore[valid-type]
    organisation: Text
    name: Text
    rights: list[Literal[RIGHTS]] = list(DEFAULT_RIGHTS)  # type: ignore[valid-type]
    valid_minutes: int | None = None
    waiting_room: bool = True
    email: Annotated[str | None, AfterValidator(_email)] = None


class PartnerBody(Body):
    """``POST /api/partners`` and ``PUT /api/partners/{id}`` (the whole entry): what the
    dial-in form fills in when a caseworker picks this organisation. ``valid_minutes``
    defaults to ``ROUNDTABLE_INVITE_MINUTES``; bounded like an invite's."""

    name: Text
    type: Literal[ORGANISATION_TYPES] = "other"  # type: ignore[valid-type]
    contact: Annotated[str | None, Field(max_length=MAX_TEXT), AfterValidator(_optional)] = None
    email: Annotated[str | None, AfterValidator(_email)] = None
    rights: list[Literal[RIGHTS]] = list(DEFAULT_RIGHTS)  # type: ignore[valid-type]
    valid_minutes: Annotated[int | None, Field(ge=1, le=MAX_INVITE_MINUTES)] = None

    def ordered_rights(self) -> tuple[str, ...]:
        """Each right once, in the order the form shows them."""
        return tuple(r for r in RIGHTS if r in self.rights)


# The registry: every JSON body the REST API takes, by route.
BODIES: dict[str, type[Body]] = {
    "POST /api/rooms": CreateRoom,
    "POST /api/rooms/{room}/invites": CreateInvite,
    "POST /api/partners": PartnerBody,
    "PUT /api/partners/{id}": PartnerBody,
}


B = TypeVar("B", bound=Body)


def parse_body(model: type[B], body: dict[str, Any]) -> B:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        extra = [e for e in errors if e["type"] == "extra_forbidden"]
        if extra:
            # Field names are caller-chosen: say how many, not which (logs stay clean).
            raise BadRequest("bad_request", f"{len(extra)} unknown field(s).") from None
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"] if not isinstance(p, int)) or "body"
        raise BadRequest("bad_request", f"'{where}' is not valid: {first['msg']}.") from None
