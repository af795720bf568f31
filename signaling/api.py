"""HTTP side of the control plane: health, metrics, session creation, the page.

Routes (docs/protocol.md, "REST"): ``GET /healthz``, ``GET /metrics``, ``POST /api/rooms``
(operator API key), ``GET /api/rooms/{room}`` (a room token for that room), ``GET /``
(what this server is), ``GET /join`` and ``GET /static/…``. Security headers are added
to every response, including Socket.IO's, in ``on_response_prepare``.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segno
from aiohttp import web

from signaling.bodies import MAX_NAME_CHARS, CreateRoom, parse_body
from signaling.deadline import iso
from signaling.errors import (
    ApiKeyError,
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RoomClosed,
    RoundtableError,
    TokenError,
)
from signaling.metrics import CONTENT_TYPE, Metrics
from signaling.store import RoomRecord, StateStore
from signaling.tokens import TokenClaims, TokenService, new_id

log = logging.getLogger(__name__)

# npm's files under web/: not for browsers (package.json would tell an attacker our
# library versions); everything else there is the page (scripts, styles, icons, sounds).
NOT_SERVED = frozenset({"node_modules", "package.json", "package-lock.json"})
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,255}$")


@dataclass(frozen=True, slots=True)
class ApiSettings:
    api_key: str
    public_url: str | None  # None: derived from the request (the URL the caller used)
    web_dir: Path
    room_minutes: int = 240  # default validity of a session and its two links
    max_room_minutes: int = 24 * 60
    max_body_bytes: int = 16 * 1024


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class RestApi:
    def __init__(
        self,
        settings: ApiSettings,
        tokens: TokenService,
        store: StateStore,
        metrics: Metrics,
        present: Callable[[TokenClaims], bool] = lambda claims: False,
    ) -> None:
        self._settings = settings
        self._present = present
        self._tokens = tokens
        self._store = store
        self._metrics = metrics
        self._web_dir = settings.web_dir.resolve()

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/api/rooms", self.create_room)
        app.router.add_get("/api/rooms/{room}", self.get_room)
        app.router.add_get("/", self.welcome_page)
        app.router.add_get("/api/rooms/{room}/qr", self.client_qr)
        app.router.add_get("/join", self.join_page)
        app.router.add_get("/static/{path:.+}", self.static)
        app.on_response_prepare.append(security_headers)

    # -- helpers ------------------------------------------------------------------------

    def check_api_key(self, request: web.Request) -> None:
        given = _bearer(request)
        if given is None:
            self._metrics.refused("api_key_missing")
            raise ApiKeyError(
                "api_key_missing", "Send the API key as 'Authorization: Bearer <key>'."
            )
        if not hmac.compare_digest(given.encode(), self._settings.api_key.encode()):
            self._metrics.refused("api_key_invalid")
            raise ApiKeyError("api_key_invalid", "The API key is wrong.")

    async def authenticate(self, request: web.Request, room: str) -> TokenClaims:
        """A room token from ``Authorization: Bearer``; for routes under ``/api/rooms/{room}``."""
        try:
            return await self._tokens.authenticate(_bearer(request), room=room)
        except RoundtableError as err:
            self._metrics.refused(err.code)
            raise

    async def json_body(self, request: web.Request) -> dict[str, Any]:
        limit = self._settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge("payload_too_large", f"The body is larger than {limit} bytes.")
        # Read to the end (a single read() may return only the first chunk) but never
        # more than the limit, whatever Content-Length claimed.
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(8192):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    "payload_too_large", f"The body is larger than {limit} bytes."
                )
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("bad_request", "The body is not JSON.") from None
        if not isinstance(body, dict):
            raise BadRequest("bad_request", "The body must be a JSON object.")
        return body

    def base_url(self, request: web.Request) -> str:
        if self._settings.public_url:
            return self._settings.public_url.rstrip("/")
        return f"{request.scheme}://{request.host}"

    # -- handlers -----------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        resp = web.Response(body=await self._metrics.render_async())
        resp.headers["Content-Type"] = CONTENT_TYPE
        return resp

    async def create_room(self, request: web.Request) -> web.Response:
        self.check_api_key(request)
        body = parse_body(CreateRoom, await self.json_body(request))
        names = {"client_name": body.client_name, "caseworker_name": body.caseworker_name}
        minutes = self._settings.room_minutes if body.valid_minutes is None else body.valid_minutes
        if not 1 <= minutes <= self._settings.max_room_minutes:
            raise BadRequest(
                "bad_request",
                f"'valid_minutes' must be an integer from 1 to {self._settings.max_room_minutes}.",
            )
        # The client link goes through the waiting room and the consent text unless the
        # caller says otherwise; both are claims of the signed token, enforced at connect.
        flags = {"client_lobby": body.client_lobby, "client_consent": body.client_consent}
        room_id = new_id("r")
        ttl = minutes * 60
        cw_token, cw = self._tokens.issue(
            room=room_id,
            role="caseworker",
            name=names["caseworker_name"],
            ttl=ttl,
            client_present=body.client_present,
        )
        base = self.base_url(request)
        client_url: str | None = None
        if not body.client_present:
            cl_token, _ = self._tokens.issue(
                room=room_id,
                sub=self._tokens.client_sub(room_id),
                role="client",
                name=names["client_name"],
                ttl=ttl,
                lobby=flags["client_lobby"],
                consent=flags["client_consent"],
            )
            client_url = f"{base}/join#token={cl_token}"
        await self._store.put_room(RoomRecord(room_id, cw.iat, cw.exp))
        self._metrics.rooms_created.inc()
        log.info(
            "room %s created, valid %d min, client lobby %s, consent %s, present %s",
            room_id,
            minutes,
            flags["client_lobby"],
            flags["client_consent"],
            body.client_present,
        )
        return web.json_response(
            {
                "room": room_id,
                "caseworker_url": f"{base}/join#token={cw_token}",
                "client_url": client_url,
                "client_present": body.client_present,
                "client_lobby": flags["client_lobby"],
                "client_consent": flags["client_consent"],
                "expires_at": iso(cw.exp),
            },
            status=201,
        )

    async def get_room(self, request: web.Request) -> web.Response:
        room_id = request.match_info["room"]
        claims = await self.authenticate(request, room_id)
        # A spent invite is refused here as at the connect, before the page asks for the
        # camera; its participant reloading while still in the room is not refused.
        if (
            claims.invite
            and await self._store.is_invite_used(claims.jti)
            and not self._present(claims)
        ):
            self._metrics.refused("invite_used")
            raise TokenError("invite_used", "This invitation was already used.")
        record = await self._store.get_room(room_id)
        return web.json_response(
            {
                "room": room_id,
                "expires_at": iso(record.expires_at if record else claims.exp),
                "you": {
                    "id": claims.sub,
                    "role": claims.role,
                    "name": claims.name,
                    "org": claims.org,
                    "grants": sorted(claims.grants),
                    "lobby": claims.lobby,
                    "consent": claims.consent,
                    "expires_at": iso(claims.exp),
                },
            }
        )

    async def welcome_page(self, request: web.Request) -> web.StreamResponse:
        """Someone who opens the bare address learns what this is and that they need
        their personal link (the only way into a session)."""
        page = self._web_dir / "welcome.html"
        if not page.is_file():
            raise NotFound("not_found", "The page is not installed (web/welcome.html).")
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def client_qr(self, request: web.Request) -> web.Response:
        """A QR code (SVG) of a client link, for the hybrid appointment: the client sits at
        the caseworker's desk and joins on their own phone to show a document.

        Made here, from a fresh token: no client link is stored, and no outside service
        ever sees one. The caseworker is beside the client, so it skips the waiting room;
        the consent is still asked on the phone.
        """
        room_id = request.match_info["room"]
        claims = await self.authenticate(request, room_id)
        if not claims.has("moderate"):
            self._metrics.refused("forbidden")
            raise Forbidden("forbidden", "Only the host may show the client's link.")
        record = await self._store.get_room(room_id)
        ttl = min(claims.exp, record.expires_at if record else claims.exp) - int(time.time())
        if ttl <= 0:
            raise RoomClosed("room_closed", "This session has ended.")
        token, _ = self._tokens.issue(
            room=room_id,
            sub=self._tokens.client_sub(room_id),
            role="client",
            name=request.query.get("name", "").strip()[:MAX_NAME_CHARS] or "Kundin/Kunde",
            ttl=ttl,
            consent=True,
        )
        # `same=1`: the page offers "im selben Raum" ticked (microphone and speaker off).
        url = f"{self.base_url(request)}/join#token={token}&same=1"
        out = io.BytesIO()
        segno.make(url, error="l").save(
            out, kind="svg", scale=4, border=2, xmldecl=False, svgns=True, title="roundtable"
        )
        log.info("room %s: client QR code made by %s", room_id, claims.sub)
        return web.Response(body=out.getvalue(), content_type="image/svg+xml")

    async def join_page(self, request: web.Request) -> web.StreamResponse:
        page = self._web_dir / "index.html"
        if not page.is_file():
            raise NotFound("not_found", "The page is not installed (web/index.html).")
        return web.FileResponse(page, headers={"Cache-Control": "no-store"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        parts = rel.split("/")
        # No dotfiles, no npm tree or manifests (only web/vendor is meant to be served:
        # package.json would tell an attacker our library versions), no traversal.
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts) or parts[0] in NOT_SERVED:
            raise NotFound()
        path = (self._web_dir / rel).resolve()
        if not path.is_relative_to(self._web_dir) or not path.is_file():
            raise NotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


# Origins of the other nodes of a cluster, which the page may connect to (Socket.IO).
PEER_ORIGINS = web.AppKey("roundtable.peer_origins", Callable[[], frozenset[str]])


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Same-origin only: nothing on the page may load from or talk to another host, but
    for the signalling of the cluster's other nodes."""
    host = request.host if _HOST_RE.match(request.host or "") else ""
    ws = f" ws://{host} wss://{host}" if host else ""
    peers = request.app.get(PEER_ORIGINS)
    for peer in sorted(peers() if peers is not None else ()):
        scheme, _, rest = peer.partition("://")
        if _HOST_RE.match(rest):
            ws += f" {peer} {'wss' if scheme == 'https' else 'ws'}://{rest}"
    h = response.headers
    # aiohttp names itself and Python with versions; an attacker needs neither.
    h["Server"] = "roundtable"
    h["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"media-src 'self' blob: mediastream:; connect-src 'self'{ws}; font-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    h["X-Content-Type-Options"] = "nosniff"
    h["X-Frame-Options"] = "DENY"
    # The token travels in the URL fragment, which browsers never send; no-referrer also
    # keeps the path out of any request the page makes.
    h["Referrer-Policy"] = "no-referrer"
    h["Permissions-Policy"] = (
        "camera=(self), microphone=(self), display-capture=(self), geolocation=()"
    )
    h["Cross-Origin-Opener-Policy"] = "same-origin"
    h["Cross-Origin-Resource-Policy"] = "same-origin"
    if request.path.startswith("/api/"):
        h["Cache-Control"] = "no-store"
