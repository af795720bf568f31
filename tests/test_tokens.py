"""Room tokens: every way a token can be bad is refused with its own code — by the
verifier, at the Socket.IO connect, and on the HTTP API — and the genuine one works."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from signaling.errors import RoundtableError
from signaling.store import MemoryStore
from signaling.tokens import TokenService
from tests.controlplane import RunningServer, SignalClient, raw_token, refusal_code, running_server

ROOM = "r_test"
OTHER_SECRET = "another-secret-another-secret-another-secret"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged(secret: str) -> str:
    """A genuine client token whose payload was edited to make it a caseworker's."""
    header, payload, signature = raw_token(secret).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "caseworker"
    return ".".join([header, _b64(claims), signature])


def rs256_header(secret: str) -> str:
    """Key confusion: an RS256 header over an HMAC signature."""
    _, payload, signature = raw_token(secret).split(".")
    return ".".join([_b64({"alg": "RS256", "typ": "JWT"}), payload, signature])


now = int(time.time())
BAD_TOKENS: dict[str, tuple[str, Callable[[str], str]]] = {
    "forged signature": ("token_bad_signature", forged),
    "wrong key": ("token_bad_signature", lambda s: raw_token(OTHER_SECRET)),
    "alg none": ("token_bad_algorithm", lambda s: raw_token(s, algorithm="none")),
    "other algorithm": ("token_bad_algorithm", lambda s: raw_token(s, algorithm="HS512")),
    "rs256 header": ("token_bad_algorithm", rs256_header),
    "expired": ("token_expired", lambda s: raw_token(s, exp=int(time.time()) - 120)),
    "not yet valid": ("token_not_yet_valid", lambda s: raw_token(s, nbf=int(time.time()) + 3600)),
    "missing exp": ("token_claims_missing", lambda s: raw_token(s, drop=("exp",))),
    "missing room": ("token_claims_missing", lambda s: raw_token(s, drop=("room",))),
    "missing jti": ("token_claims_missing", lambda s: raw_token(s, drop=("jti",))),
    "wrong audience": ("token_wrong_audience", lambda s: raw_token(s, aud="someone-else")),
    "wrong issuer": ("token_wrong_issuer", lambda s: raw_token(s, iss="someone-else")),
    "bad role": ("token_malformed", lambda s: raw_token(s, role="admin")),
    "garbage": ("token_malformed", lambda s: "this-is-not.a-jwt"),
    "random bytes": ("token_malformed", lambda s: "e30.e30.AAAA"),
}


# --- the verifier on its own -------------------------------------------------------------


@pytest.fixture
def service() -> TokenService:
    return TokenService("s" * 64, MemoryStore())


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_verifier_refuses_each_bad_token_with_its_code(
    service: TokenService, case: str
) -> None:
    code, make = BAD_TOKENS[case]
    with pytest.raises(RoundtableError) as info:
        service.verify(make("s" * 64), room=ROOM)
    assert info.value.code == code


async def test_verifier_accepts_genuine_and_checks_room(service: TokenService) -> None:
    token, issued = service.issue(room=ROOM, role="caseworker", name="Frau B", ttl=60)
    claims = service.verify(token, room=ROOM)
    assert claims == issued
    assert claims.has("moderate") and claims.has("invite")
    with pytest.raises(RoundtableError) as info:
        service.verify(token, room="r_other")
    assert info.value.code == "token_wrong_room"
    with pytest.raises(RoundtableError) as info:
        service.verify(None)
    assert info.value.code == "token_missing"


async def test_revocation_room_end_and_single_use_invites() -> None:
    store = MemoryStore()
    service = TokenService("s" * 64, store)
    token, claims = service.issue(room=ROOM, role="client", name="C", ttl=60)
    assert await service.authenticate(token) == claims
    await service.revoke(claims)
    with pytest.raises(RoundtableError) as info:
        await service.authenticate(token)
    assert info.value.code == "token_revoked"

    invite, _ = service.issue(
        room=ROOM, role="partner", name="P", ttl=60, grants=["audio"], invite=True
    )
    await service.authenticate(invite, consume_invite=True)
    with pytest.raises(RoundtableError) as info:
        await service.authenticate(invite, consume_invite=True)
    assert info.value.code == "invite_used"

    other, _ = service.issue(room=ROOM, role="caseworker", name="B", ttl=60)
    await store.close_room(ROOM, int(time.time()) + 60)
    with pytest.raises(RoundtableError) as info:
        await service.authenticate(other)
    assert info.value.code == "room_closed"


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenService("short", MemoryStore())


# --- through the running server ----------------------------------------------------------


@pytest.fixture
async def server(tmp_path: Path):
    async with running_server(tmp_path, joins_per_ip_per_minute=1000) as srv:
        yield srv


async def _http_code(server: RunningServer, token: str | None, room: str = ROOM) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/rooms/{room}", headers=headers) as resp:
            body = await resp.json()
            assert set(body) == {"error", "message"}, body
            return resp.status, body["error"]


async def _socket_code(server: RunningServer, token: str | None, **auth) -> str | None:
    client = SignalClient()
    try:
        connected = await client.connect(server.url, token, **auth)
        assert not connected, "a bad token must not connect"
        return refusal_code(client)
    finally:
        await client.close()


async def test_each_bad_token_refused_at_connect_and_on_http(server: RunningServer) -> None:
    secret = server.config.secret
    for case, (code, make) in sorted(BAD_TOKENS.items()):
        token = make(secret)
        assert await _socket_code(server, token) == code, case
        status, http_code = await _http_code(server, token)
        assert (status, http_code) == (401, code), case


async def test_missing_token(server: RunningServer) -> None:
    assert await _socket_code(server, None) == "token_missing"
    assert await _http_code(server, None) == (401, "token_missing")


async def test_token_for_another_room(server: RunningServer) -> None:
    token = server.token(room="r_elsewhere")
    assert await _socket_code(server, token, room=ROOM) == "token_wrong_room"
    assert await _http_code(server, token, room=ROOM) == (403, "token_wrong_room")


async def test_revoked_and_ended_room_tokens_are_refused(server: RunningServer) -> None:
    token, claims = server.tokens.issue(room=ROOM, role="client", name="C", ttl=60)
    await server.tokens.revoke(claims)
    assert await _socket_code(server, token) == "token_revoked"
    assert await _http_code(server, token) == (401, "token_revoked")

    ended = server.token(room="r_ended", role="caseworker")
    await server.hub.end_room("r_ended", int(time.time()) + 60)
    assert await _socket_code(server, ended) == "room_closed"
    assert await _http_code(server, ended, room="r_ended") == (410, "room_closed")


async def test_invite_is_single_use_at_connect(server: RunningServer) -> None:
    invite = server.token(
        role="partner", name="DRV", grants=["publish", "subscribe", "audio"], invite=True
    )
    first = SignalClient()
    try:
        assert await first.connect(server.url, invite)
        await first.wait("welcome")
        # Once its participant has left, the invite is spent (while it is still in the
        # room, a reconnect replaces it: tests/test_invites.py).
        await first.call("leave", {})
        assert await _socket_code(server, invite) == "invite_used"
    finally:
        await first.close()


async def test_genuine_token_connects_and_is_welcomed(server: RunningServer) -> None:
    token = server.token(role="caseworker", name="Frau B")
    client = SignalClient()
    try:
        assert await client.connect(server.url, token, room=ROOM)
        welcome = await client.wait("welcome")
        assert welcome["you"]["role"] == "caseworker"
        room = welcome["room"]
        assert (room["id"], room["locked"], room["chat"]) == (ROOM, False, True)
        ends_at = room["ends_at"]
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{server.url}/api/rooms/{ROOM}", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                assert resp.status == 200
                body = await resp.json()
                assert body["you"]["role"] == "caseworker"
                # The session opened by this token ends when the token does.
                assert body["expires_at"] == ends_at == body["you"]["expires_at"]
    finally:
        await client.close()


async def test_refusals_are_counted_by_reason(server: RunningServer) -> None:
    await _socket_code(server, raw_token(server.config.secret, exp=int(time.time()) - 120))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/metrics") as resp:
            text = await resp.text()
    assert 'roundtable_refused_joins_total{reason="token_expired"} 1.0' in text
