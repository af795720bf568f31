"""The partner directory: organisations the operator keeps so that dialling one in is
two clicks (pick it in the dial-in form, send the invite).

- ``GET/POST /api/partners``, ``GET/PUT/DELETE /api/partners/{id}``: the operator's API
  key, like ``POST /api/rooms``.
- ``GET /api/rooms/{room}/partners``: read-only, for the caseworker's dial-in form — a
  token of that room with the ``invite`` grant (the one who may send invites anyway).

Entries live in the state store (SQLite file, or Redis shared by every node), so an entry
added on one node, or by ``roundtable partners add``, is offered on every node at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from signaling.api import RestApi
from signaling.bodies import PartnerBody, parse_body
from signaling.errors import Forbidden, RoundtableError
from signaling.metrics import Metrics
from signaling.store import PartnerRecord, PartnerSave, StateStore
from signaling.tokens import new_id

log = logging.getLogger(__name__)

ID_PREFIX = "pt"
MAX_ID_CHARS = 64


def partner_from_body(
    body: PartnerBody, *, default_minutes: int, partner_id: str | None = None
) -> PartnerRecord:
    """The entry a validated body describes (the API and the CLI build it the same way)."""
    return PartnerRecord(
        id=partner_id or new_id(ID_PREFIX),
        name=body.name,
        type=body.type,
        rights=body.ordered_rights(),
        valid_minutes=default_minutes if body.valid_minutes is None else body.valid_minutes,
        email=body.email,
        contact=body.contact,
        created_at=int(time.time()),
    )


def not_found() -> RoundtableError:
    return RoundtableError("partner_not_found", "There is no partner with this id.")


def name_taken(name: str) -> RoundtableError:
    # The caller's own name back to the caller (JSON, not a log): what to change.
    return RoundtableError(
        "partner_exists", f"A partner named '{name}' is already in the directory."
    )


def check_saved(outcome: PartnerSave, partner: PartnerRecord) -> None:
    if outcome is PartnerSave.MISSING:
        raise not_found()
    if outcome is PartnerSave.NAME_TAKEN:
        raise name_taken(partner.name)


class PartnerApi:
    def __init__(
        self, api: RestApi, store: StateStore, metrics: Metrics, *, default_minutes: int = 30
    ) -> None:
        self._api = api
        self._store = store
        self._metrics = metrics
        self._default_minutes = default_minutes

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/api/partners", self.list_all)
        app.router.add_post("/api/partners", self.create)
        app.router.add_get("/api/partners/{id}", self.get)
        app.router.add_put("/api/partners/{id}", self.update)
        app.router.add_delete("/api/partners/{id}", self.remove)
        app.router.add_get("/api/rooms/{room}/partners", self.for_caseworker)

    async def _existing(self, request: web.Request) -> PartnerRecord:
        partner_id = request.match_info["id"]
        partner = None
        if len(partner_id) <= MAX_ID_CHARS:
            partner = await self._store.get_partner(partner_id)
        if partner is None:
            raise not_found()
        return partner

    async def list_all(self, request: web.Request) -> web.Response:
        self._api.check_api_key(request)
        partners = await self._store.list_partners()
        return web.json_response({"partners": [p.to_dict() for p in partners]})

    async def create(self, request: web.Request) -> web.Response:
        self._api.check_api_key(request)
        body = parse_body(PartnerBody, await self._api.json_body(request))
        partner = partner_from_body(body, default_minutes=self._default_minutes)
        check_saved(await self._store.save_partner(partner, new=True), partner)
        log.info("partner %s added (%s)", partner.id, partner.type)
        return web.json_response(partner.to_dict(), status=201)

    async def get(self, request: web.Request) -> web.Response:
        self._api.check_api_key(request)
        return web.json_response((await self._existing(request)).to_dict())

    async def update(self, request: web.Request) -> web.Response:
        self._api.check_api_key(request)
        body = parse_body(PartnerBody, await self._api.json_body(request))
        partner_id = request.match_info["id"]
        if len(partner_id) > MAX_ID_CHARS:
            raise not_found()
        partner = partner_from_body(
            body, default_minutes=self._default_minutes, partner_id=partner_id
        )
        check_saved(await self._store.save_partner(partner, new=False), partner)
        log.info("partner %s changed", partner.id)
        return web.json_response((await self._existing(request)).to_dict())

    async def remove(self, request: web.Request) -> web.Response:
        self._api.check_api_key(request)
        partner_id = request.match_info["id"]
        if len(partner_id) > MAX_ID_CHARS or not await self._store.remove_partner(partner_id):
            raise not_found()
        log.info("partner %s removed", partner_id)
        return web.Response(status=204)

    async def for_caseworker(self, request: web.Request) -> web.Response:
        """The directory for the dial-in form of one room's caseworker.

        The contact e-mail is included: the form fills it in so that the invite mail goes
        there, and the caseworker, who may send invites to any address anyway, should see
        where the link goes before sending it. These are the organisations' business
        contacts the operator entered for exactly this use; nothing about a client is in
        the directory. Clients and partners (no ``invite`` grant) get 403.
        """
        claims = await self._api.authenticate(request, request.match_info["room"])
        if not claims.has("invite"):
            self._metrics.refused("forbidden")
            raise Forbidden("forbidden", "Only the host may look up partners.")
        partners = await self._store.list_partners()
        return web.json_response({"partners": [_offered(p) for p in partners]})


def _offered(partner: PartnerRecord) -> dict[str, Any]:
    data = partner.to_dict()
    del data["created_at"]  # the operator's bookkeeping, not the caseworker's
    return data
