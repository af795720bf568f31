"""One error hierarchy for the control plane, mapped in one place to HTTP and Socket.IO.

Every refusal the server makes carries a stable ``code`` (docs/protocol.md, "Errors"); the
HTTP status is derived from the code so that the REST API, the Socket.IO ``error`` event,
the connect refusal and the metrics all speak the same vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

import socketio
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    """Every refusal code the server sends (docs/protocol.md, "Errors"), as one type.

    ``STATUS_BY_CODE`` gives each its HTTP status; tests/test_schema.py checks that the
    two, the documentation and every code used in the source agree.
    """

    TOKEN_MISSING = "token_missing"
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_BAD_SIGNATURE = "token_bad_signature"
    TOKEN_BAD_ALGORITHM = "token_bad_algorithm"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    TOKEN_CLAIMS_MISSING = "token_claims_missing"
    TOKEN_WRONG_AUDIENCE = "token_wrong_audience"
    TOKEN_WRONG_ISSUER = "token_wrong_issuer"
    TOKEN_WRONG_ROOM = "token_wrong_room"
    TOKEN_REVOKED = "token_revoked"
    INVITE_USED = "invite_used"
    INVITE_REVOKED = "invite_revoked"
    API_KEY_MISSING = "api_key_missing"
    API_KEY_INVALID = "api_key_invalid"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    BAD_REQUEST = "bad_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    TOO_MANY_REQUESTS = "too_many_requests"
    ROOM_CLOSED = "room_closed"
    ROOM_ENDED = "room_ended"
    SESSION_EXPIRED = "session_expired"
    ROOM_FULL = "room_full"
    ROOM_LOCKED = "room_locked"
    SEAT_TAKEN = "seat_taken"
    LOBBY_DENIED = "lobby_denied"
    CONSENT_REQUIRED = "consent_required"
    CHAT_DISABLED = "chat_disabled"
    PARTNER_NOT_FOUND = "partner_not_found"
    PARTNER_EXISTS = "partner_exists"
    REMOVED = "removed"
    UNKNOWN_EVENT = "unknown_event"
    INVALID_PAYLOAD = "invalid_payload"
    SDP_INVALID = "sdp_invalid"
    REPLACED = "replaced"
    WRONG_NODE = "wrong_node"
    UNAVAILABLE = "unavailable"
    NODE_DRAINING = "node_draining"
    SERVER_SHUTDOWN = "server_shutdown"
    INTERNAL = "internal"


# HTTP status per code. Token problems are authentication failures (401); a valid identity
# that may not do something is 403. Codes not listed here map to 400.
STATUS_BY_CODE: dict[str, int] = {
    "token_missing": 401,
    "token_malformed": 401,
    "token_bad_signature": 401,
    "token_bad_algorithm": 401,
    "token_expired": 401,
    "token_not_yet_valid": 401,
    "token_claims_missing": 401,
    "token_wrong_audience": 401,
    "token_wrong_issuer": 401,
    "token_wrong_room": 403,
    "token_revoked": 401,
    "invite_used": 403,
    "invite_revoked": 403,
    "api_key_missing": 401,
    "api_key_invalid": 401,
    "forbidden": 403,
    "not_found": 404,
    "bad_request": 400,
    "payload_too_large": 413,
    "too_many_requests": 429,
    "room_closed": 410,
    "room_ended": 410,
    "session_expired": 410,
    "room_full": 403,
    "room_locked": 403,
    "seat_taken": 409,
    "lobby_denied": 403,
    "consent_required": 403,
    "replaced": 409,
    "chat_disabled": 403,
    # The partner directory (/api/partners): an unknown id; a name already in it.
    "partner_not_found": 404,
    "partner_exists": 409,
    "removed": 403,
    "unknown_event": 400,
    "invalid_payload": 400,
    "sdp_invalid": 400,
    "internal": 500,
    # A cluster (docs/deploy.md, "Cluster"): the room lives on another node; the shared
    # state (Redis) cannot be reached; this node is leaving or stopping.
    "wrong_node": 421,
    "unavailable": 503,
    "node_draining": 503,
    "server_shutdown": 503,
}


class RoundtableError(Exception):
    """Base of every refusal: a stable ``code``, a human ``message`` and an HTTP ``status``."""

    code: str = "internal"
    default_message: str = "Internal error."

    def __init__(
        self, code: str | None = None, message: str | None = None, status: int | None = None
    ):
        self.code = code or type(self).code
        self.message = message or type(self).default_message
        self.status = status or STATUS_BY_CODE.get(self.code, 400)
        super().__init__(f"{self.code}: {self.message}")

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


class TokenError(RoundtableError):
    code = "token_malformed"
    default_message = "The token is not valid."


class ApiKeyError(RoundtableError):
    code = "api_key_invalid"
    default_message = "The API key is wrong."


class Forbidden(RoundtableError):
    code = "forbidden"
    default_message = "You may not do this."


class NotFound(RoundtableError):
    code = "not_found"
    default_message = "Not found."


class BadRequest(RoundtableError):
    code = "bad_request"
    default_message = "The request is not valid."


class InvalidPayload(RoundtableError):
    code = "invalid_payload"
    default_message = "The event payload is not valid."


class UnknownEvent(RoundtableError):
    code = "unknown_event"
    default_message = "Unknown event."


class SdpInvalid(RoundtableError):
    code = "sdp_invalid"
    default_message = "The session description was refused."


class PayloadTooLarge(RoundtableError):
    code = "payload_too_large"
    default_message = "The request body is too large."


class TooManyRequests(RoundtableError):
    code = "too_many_requests"
    default_message = "Too many requests; slow down."


class RoomClosed(RoundtableError):
    code = "room_closed"
    default_message = "This session has ended."


class RoomFull(RoundtableError):
    code = "room_full"
    default_message = "This session is full."


class Unavailable(RoundtableError):
    code = "unavailable"
    default_message = "The service is briefly unavailable; try again in a moment."


class WrongNode(RoundtableError):
    """The room is served by another node: ``url`` is where to connect instead."""

    code = "wrong_node"
    default_message = "This session is served by another node."

    def __init__(self, node: str, url: str | None) -> None:
        super().__init__()
        self.node = node
        self.url = url

    def to_dict(self) -> dict[str, str]:
        body = super().to_dict()
        body["node"] = self.node
        if self.url:
            body["url"] = self.url
        return body


class InternalError(RoundtableError):
    code = "internal"
    default_message = "Internal error."


# --- HTTP -------------------------------------------------------------------------------

_CODE_BY_HTTP_STATUS = {
    400: "bad_request",
    401: "forbidden",
    403: "forbidden",
    404: "not_found",
    405: "bad_request",
    413: "payload_too_large",
    429: "too_many_requests",
}


def json_error(err: RoundtableError) -> web.Response:
    return web.json_response(err.to_dict(), status=err.status)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure of an HTTP handler into ``{"error", "message"}`` JSON."""
    try:
        return await handler(request)
    except RoundtableError as err:
        return json_error(err)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        # Shared state out of reach (Redis down or restarting): nothing was changed, and
        # the caller may simply try again — a 503 that says so, not a 500.
        log.warning("%s %s: shared state unreachable (%s)", request.method, request.path, exc)
        resp = json_error(Unavailable())
        resp.headers["Retry-After"] = "2"
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are not errors
        code = _CODE_BY_HTTP_STATUS.get(
            exc.status, "bad_request" if exc.status < 500 else "internal"
        )
        resp = web.json_response({"error": code, "message": exc.reason}, status=exc.status)
        for name in ("Allow", "Retry-After"):
            if name in exc.headers:
                resp.headers[name] = exc.headers[name]
        return resp
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(InternalError())


# --- Socket.IO --------------------------------------------------------------------------


def socket_error(err: RoundtableError) -> dict[str, str]:
    """Payload of the Socket.IO ``error`` event and of a refused event's ack."""
    return err.to_dict()


def connect_refusal(err: RoundtableError) -> socketio.exceptions.ConnectionRefusedError:
    """What a refused Socket.IO connect raises: the client sees ``err.message == code`` and
    ``err.data == {"error", "message"}`` in its ``connect_error``."""
    return socketio.exceptions.ConnectionRefusedError(err.code, err.to_dict())


def as_roundtable_error(exc: BaseException) -> RoundtableError:
    if isinstance(exc, RoundtableError):
        return exc
    return InternalError()


def error_payload(exc: BaseException) -> dict[str, Any]:
    return socket_error(as_roundtable_error(exc))
