"""Partner invites: ``POST /api/rooms/{room}/invites`` and ``DELETE …/invites/{id}``.

An invite is a partner token (``invite: true``) limited to the rights the caseworker
chose; its ``jti`` is recorded on first use, so the link works once (a reconnect of the
participant still in the room excepted, see ``RoomHub.present``). The invite record
(id → jti) is kept in the state store so that an unused invite can be withdrawn.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from signaling.api import RestApi, iso
from signaling.bodies import CreateInvite, parse_body
from signaling.errors import BadRequest, Forbidden, NotFound, RoomClosed, RoundtableError
from signaling.mailer import InviteMail, InviteMailer
from signaling.metrics import Metrics
from signaling.store import InviteRecord, StateStore
from signaling.tokens import TokenClaims, TokenService, new_id
from signaling.webhook import InviteWebhook

log = logging.getLogger(__name__)


# Declared with the body's model (signaling/bodies.py); named here for the callers.
@dataclass(frozen=True, slots=True)
class InviteRequest:
    organisation_type: str
    organisation: str
    name: str
    rights: frozenset[str]
    valid_minutes: int
    waiting_room: bool
    email: str | None = None  # send the link there (needs ROUNDTABLE_SMTP_URL)

    @classmethod
    def parse(
        cls, body: dict[str, Any], *, default_minutes: int = 30, max_minutes: int = 240
    ) -> InviteRequest:
        request = parse_body(CreateInvite, body)
        minutes = default_minutes if request.valid_minutes is None else request.valid_minutes
        if not 1 <= minutes <= max_minutes:
            raise BadRequest("bad_request", f"'valid_minutes' must be 1-{max_minutes}.")
        return cls(
            organisation_type=request.organisation_type,
            organisation=request.organisation,
            name=request.name,
            rights=frozenset(request.rights),
            valid_minutes=minutes,
            waiting_room=request.waiting_room,
            email=request.email,
        )


class InviteApi:
    def __init__(
        self,
        api: RestApi,
        tokens: TokenService,
        store: StateStore,
        metrics: Metrics,
        webhook: InviteWebhook | None,
        *,
        default_minutes: int = 30,
        max_minutes: int = 240,
        mailer: InviteMailer | None = None,
    ) -> None:
        self._api = api
        self._mailer = mailer
        self._tokens = tokens
        self._store = store
        self._metrics = metrics
        self._webhook = webhook
        self._default_minutes = default_minutes
        self._max_minutes = max_minutes

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/api/rooms/{room}/invites", self.create)
        app.router.add_delete("/api/rooms/{room}/invites/{invite}", self.revoke)

    async def _inviter(self, request: web.Request, room: str) -> TokenClaims:
        claims = await self._api.authenticate(request, room)
        if not claims.has("invite"):
            self._metrics.refused("forbidden")
            raise Forbidden("forbidden", "Only the host may invite partners.")
        return claims

    async def create(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        inviter = await self._inviter(request, room)
        body = await self._api.json_body(request)
        req = InviteRequest.parse(
            body, default_minutes=self._default_minutes, max_minutes=self._max_minutes
        )
        # An invite never outlives its session (nor the link of the one who made it).
        now = int(time.time())
        record = await self._store.get_room(room)
        ends = min(inviter.exp, record.expires_at if record is not None else inviter.exp)
        ttl = min(req.valid_minutes * 60, ends - now)
        if ttl <= 0:
            raise RoomClosed("room_closed", "This session has ended.")
        token, partner = self._tokens.issue(
            room=room,
            role="partner",
            name=req.name,
            org=req.organisation,
            org_type=req.organisation_type,
            grants={"publish", "subscribe"} | req.rights,
            lobby=req.waiting_room,
            invite=True,
            ttl=ttl,
        )
        invite_id = new_id("inv")
        await self._store.put_invite(InviteRecord(invite_id, room, partner.jti, partner.exp))
        url = f"{self._api.base_url(request)}/join#token={token}"
        expires_at = iso(partner.exp)
        webhook = "disabled"
        if self._webhook is not None:
            # The partner's own details and the link only: nothing about the client.
            self._webhook.submit(
                room,
                invite_id,
                {
                    "event": "invite.created",
                    "room": room,
                    "invite_id": invite_id,
                    "invite_url": url,
                    "organisation_type": req.organisation_type,
                    "organisation": req.organisation,
                    "name": req.name,
                    "expires_at": expires_at,
                },
            )
            webhook = "queued"
        log.info(
            "room %s: invite %s (participant %s, %s, rights %s, %d s, lobby %s) by %s",
            room,
            invite_id,
            partner.sub,
            req.organisation_type,
            ",".join(sorted(req.rights)) or "-",
            ttl,
            req.waiting_room,
            inviter.sub,
        )
        # The mail goes out before the answer, so the caseworker learns at once whether
        # to pass the link on by hand ("failed") and nothing fails silently.
        email: str | None = None
        if req.email is not None:
            if self._mailer is None:
                email = "disabled"
            else:
                sent = await self._mailer.send(
                    InviteMail(
                        to=req.email,
                        name=req.name,
                        organisation=req.organisation,
                        url=url,
                        invite_id=invite_id,
                        starts_at=partner.iat,
                        expires_at=partner.exp,
                    )
                )
                email = "sent" if sent else "failed"
        return web.json_response(
            {
                "id": invite_id,
                "invite_url": url,
                "expires_at": expires_at,
                "webhook": webhook,
                "email": email,
            },
            status=201,
        )

    async def revoke(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        inviter = await self._inviter(request, room)
        invite = await self._store.get_invite(room, request.match_info["invite"])
        if invite is None:
            raise NotFound("not_found", "There is no such invitation (or it has expired).")
        if not await self._store.is_invite_revoked(invite.jti):
            # Marking it used is the atomic step: a join racing this either wins (and the
            # invite is in use: remove the participant instead) or is refused.
            if not await self._store.use_invite(invite.jti, invite.expires_at):
                raise RoundtableError(
                    "invite_used", "The invitation is in use; remove the participant instead."
                )
            await self._store.revoke_invite(invite.jti, invite.expires_at)
            log.info("room %s: invite %s revoked by %s", room, invite.id, inviter.sub)
        return web.Response(status=204)
