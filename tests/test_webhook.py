"""The invite webhook against a real local HTTP receiver: signed, retried, reported."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.config import Config, ConfigError
from signaling.webhook import derive_secret
from tests.controlplane import Clients, link_token, running_server


@dataclass
class Receiver:
    """Answers with ``statuses`` in turn (the last one repeats) and records each request."""

    statuses: list[int]
    url: str = ""
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status = self.statuses[min(len(self.requests), len(self.statuses)) - 1]
        return web.json_response({}, status=status)


@asynccontextmanager
async def receiver(*statuses: int) -> AsyncIterator[Receiver]:
    rec = Receiver(list(statuses))
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    rec.url = str(server.make_url("/hook"))
    try:
        yield rec
    finally:
        await server.close()


def _valid(secret: str, headers: dict[str, str], body: bytes) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("X-Roundtable-Signature", ""), expected)


async def test_delivered_signed_and_retried_after_a_500(tmp_path: Path) -> None:
    async with (
        receiver(500, 200) as rec,
        running_server(tmp_path, invite_webhook=rec.url, webhook_backoff_seconds=0.05) as server,
    ):
        clients = Clients(server)
        try:
            room = await server.create_room(client_name="Herr Klient", caseworker_name="Frau B")
            cw_token = link_token(room["caseworker_url"])
            cw = await clients.join(cw_token)
            status, body = await server.invite(
                room["room"], cw_token, organisation_type="chamber", organisation="IHK"
            )
            assert status == 201 and body["webhook"] == "queued"
            delivery = await cw.wait("invite.delivery")
            assert delivery == {
                "id": body["id"],
                "status": "delivered",
                "attempts": 2,
                "message": "HTTP 200",
            }
        finally:
            await clients.close()

    assert len(rec.requests) == 2
    headers, raw = rec.requests[-1]
    assert rec.requests[0][1] == raw  # the retry sends the same document
    # Keyed by the default secret, derived from (and different from) the token secret.
    secret = derive_secret(server.config.secret)
    assert secret != server.config.secret
    assert _valid(secret, headers, raw)
    assert not _valid(server.config.secret, headers, raw)
    assert headers["Content-Type"] == "application/json"
    document = json.loads(raw)
    assert document == {
        "event": "invite.created",
        "room": room["room"],
        "invite_id": body["id"],
        "invite_url": body["invite_url"],
        "organisation_type": "chamber",
        "organisation": "IHK",
        "name": "Frau P",
        "expires_at": body["expires_at"],
    }
    assert b"Herr Klient" not in raw  # never the client's data


async def test_failure_after_three_attempts_is_reported(tmp_path: Path) -> None:
    async with (
        receiver(500) as rec,
        running_server(
            tmp_path,
            invite_webhook=rec.url,
            invite_webhook_secret="agency-shared-secret",
            webhook_backoff_seconds=0.05,
        ) as server,
    ):
        clients = Clients(server)
        try:
            room = await server.create_room()
            cw_token = link_token(room["caseworker_url"])
            cw = await clients.join(cw_token)
            status, body = await server.invite(room["room"], cw_token)
            assert status == 201
            delivery = await cw.wait("invite.delivery")
            assert delivery["id"] == body["id"]
            assert delivery["status"] == "failed" and delivery["attempts"] == 3
            assert delivery["message"] == "HTTP 500"
        finally:
            await clients.close()
    assert len(rec.requests) == 3
    assert all(_valid("agency-shared-secret", h, b) for h, b in rec.requests)


async def test_unreachable_receiver_is_reported(tmp_path: Path) -> None:
    async with receiver(200) as rec:
        url = rec.url  # closed when the block ends: nothing listens there any more
    async with running_server(tmp_path, invite_webhook=url, webhook_backoff_seconds=0.01) as server:
        clients = Clients(server)
        try:
            room = await server.create_room()
            cw_token = link_token(room["caseworker_url"])
            cw = await clients.join(cw_token)
            await server.invite(room["room"], cw_token)
            delivery = await cw.wait("invite.delivery")
            assert delivery["status"] == "failed" and delivery["attempts"] == 3
            assert delivery["message"]
        finally:
            await clients.close()


async def test_pending_delivery_is_cancelled_at_shutdown(tmp_path: Path) -> None:
    # A receiver that always fails and a long backoff: the server must still stop at once.
    async with receiver(500) as rec:
        async with running_server(
            tmp_path, invite_webhook=rec.url, webhook_backoff_seconds=60
        ) as server:
            room = await server.create_room()
            await server.invite(room["room"], link_token(room["caseworker_url"]))
            clients = Clients(server)
            # Wait for the first attempt, then shut down while it sleeps before the retry.
            for _ in range(100):
                if rec.requests:
                    break
                await asyncio.sleep(0.02)
            await clients.close()
        assert len(rec.requests) == 1


def test_webhook_settings_from_the_environment() -> None:
    config = Config.from_env(
        {
            "ROUNDTABLE_INVITE_WEBHOOK": "https://agency.example/hook",
            "ROUNDTABLE_INVITE_WEBHOOK_SECRET": "shared",
            "ROUNDTABLE_HOST_GRACE_SECONDS": "30",
        }
    )
    assert config.invite_webhook == "https://agency.example/hook"
    assert config.invite_webhook_secret == "shared" and config.host_grace_seconds == 30
    assert "shared" not in repr(config)
    with pytest.raises(ConfigError):
        Config.from_env({"ROUNDTABLE_INVITE_WEBHOOK": "ftp://agency.example/hook"})
