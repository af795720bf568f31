"""ROUNDTABLE_TRUSTED_PROXIES: behind a trusted proxy the join rate limit counts the client
named in X-Forwarded-For / Forwarded; from anyone else those headers change nothing.

Real server, real Socket.IO connects over WebSocket from 127.0.0.1 (the "proxy" here),
with the headers a proxy would add."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.controlplane import SignalClient, refusal_code, running_server

LIMIT = 2


async def _code(url: str, headers: dict[str, str]) -> str | None:
    """Connect once with a malformed token; the refusal says whether the rate limit hit."""
    client = SignalClient()
    try:
        assert not await client.connect(url, "not-a-token", headers=headers)
        return refusal_code(client)
    finally:
        await client.close()


async def test_trusted_proxy_clients_are_limited_each_on_their_own(tmp_path: Path) -> None:
    async with running_server(
        tmp_path, trusted_proxies=("127.0.0.0/8",), joins_per_ip_per_minute=LIMIT
    ) as server:
        alice = {"X-Forwarded-For": "203.0.113.7"}
        for _ in range(LIMIT):
            assert await _code(server.url, alice) == "token_malformed"
        assert await _code(server.url, alice) == "too_many_requests"
        # The same client through a second trusted hop, and by RFC 7239 Forwarded.
        assert await _code(server.url, {"X-Forwarded-For": "203.0.113.7, 127.0.0.2"}) == (
            "too_many_requests"
        )
        forwarded = {"Forwarded": "for=203.0.113.7;proto=https, for=127.0.0.2"}
        assert await _code(server.url, forwarded) == "too_many_requests"
        # Somebody else behind the same proxy is not punished for Alice's joins.
        bob = {"Forwarded": 'for="198.51.100.9:4711";proto=https'}
        assert await _code(server.url, bob) == "token_malformed"
        assert await _code(server.url, {"X-Forwarded-For": "2001:db8::9"}) == "token_malformed"


async def test_headers_from_an_untrusted_peer_are_ignored(tmp_path: Path) -> None:
    async with running_server(
        tmp_path, trusted_proxies=("10.0.0.0/8",), joins_per_ip_per_minute=LIMIT
    ) as server:
        # 127.0.0.1 is no trusted proxy: every connect counts against it, whatever it claims.
        for n in range(LIMIT):
            assert await _code(server.url, {"X-Forwarded-For": f"203.0.113.{n}"}) == (
                "token_malformed"
            )
        assert await _code(server.url, {"X-Forwarded-For": "203.0.113.99"}) == "too_many_requests"
        assert await _code(server.url, {"Forwarded": "for=192.0.2.1"}) == "too_many_requests"


async def test_without_trusted_proxies_the_header_is_ignored(tmp_path: Path) -> None:
    async with running_server(tmp_path, joins_per_ip_per_minute=LIMIT) as server:
        for n in range(LIMIT):
            assert await _code(server.url, {"X-Forwarded-For": f"198.51.100.{n}"}) == (
                "token_malformed"
            )
        assert await _code(server.url, {"X-Forwarded-For": "198.51.100.77"}) == (
            "too_many_requests"
        )


async def test_a_trusted_proxy_may_say_https(tmp_path: Path) -> None:
    """Behind a TLS proxy the page's Origin is https://host; the proxy says so."""
    async with running_server(tmp_path, trusted_proxies=("127.0.0.1",)) as server:
        host = server.url.removeprefix("http://")
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{server.url}/healthz",
                headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
            ) as resp:
                assert resp.status == 200
        client = SignalClient()
        try:
            ok = await client.connect(
                server.url,
                "not-a-token",
                headers={
                    "Origin": f"https://{host}",
                    "X-Forwarded-For": "203.0.113.7",
                    "X-Forwarded-Proto": "https",
                },
            )
            # Past the origin check: refused for the token, not for the origin.
            assert not ok and refusal_code(client) == "token_malformed"
        finally:
            await client.close()
