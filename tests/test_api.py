"""REST API on a real server: health, metrics, creating sessions, the page, headers."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.controlplane import RunningServer, SignalClient, running_server


@pytest.fixture
async def server(tmp_path: Path):
    async with running_server(tmp_path) as srv:
        yield srv


async def _post_rooms(server: RunningServer, headers: dict[str, str], **kw) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/api/rooms", headers=headers, **kw) as resp:
            return resp.status, await resp.json()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_healthz_and_metrics(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
        async with http.get(f"{server.url}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    for name in (
        "roundtable_rooms ",
        "roundtable_participants{",
        "roundtable_forwarded_packets_total",
        "roundtable_forwarded_bytes_total",
        "roundtable_refused_joins_total{",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
    ):
        assert name in text, name


async def test_create_room_needs_the_api_key(server: RunningServer) -> None:
    assert await _post_rooms(server, {}) == (
        401,
        {
            "error": "api_key_missing",
            "message": "Send the API key as 'Authorization: Bearer <key>'.",
        },
    )
    status, body = await _post_rooms(server, _bearer("wrong-" + server.config.api_key))
    assert (status, body["error"]) == (401, "api_key_invalid")
    status, body = await _post_rooms(server, {"Authorization": server.config.api_key})
    assert (status, body["error"]) == (401, "api_key_missing")


async def test_create_room_links_work(server: RunningServer) -> None:
    status, body = await _post_rooms(
        server,
        _bearer(server.config.api_key),
        json={"client_name": "Herr K", "caseworker_name": "Frau B", "valid_minutes": 30},
    )
    assert status == 201, body
    assert set(body) == {
        "room",
        "caseworker_url",
        "client_url",
        "client_lobby",
        "client_consent",
        "client_present",
        "expires_at",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["expires_at"])
    for role in ("caseworker", "client"):
        url = urlsplit(body[f"{role}_url"])
        assert f"{url.scheme}://{url.netloc}" == server.url
        assert url.path == "/join" and not url.query  # the token is only in the fragment
        assert url.fragment.startswith("token=")
        token = url.fragment.removeprefix("token=")

        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{server.url}/api/rooms/{body['room']}", headers=_bearer(token)
            ) as resp:
                assert resp.status == 200
                you = (await resp.json())["you"]
        assert you["role"] == role
        assert you["name"] == {"caseworker": "Frau B", "client": "Herr K"}[role]

        client = SignalClient()
        try:
            # The client link asks for consent by default (tests/test_room_links.py).
            assert await client.connect(server.url, token, consent=True)
            welcome = await client.wait("welcome")
            assert welcome["room"]["id"] == body["room"]
            assert welcome["you"]["role"] == role
        finally:
            await client.close()


async def test_create_room_without_body_uses_defaults(server: RunningServer) -> None:
    status, body = await _post_rooms(server, _bearer(server.config.api_key))
    assert status == 201 and body["room"].startswith("r_")


@pytest.mark.parametrize(
    ("kw", "status", "code"),
    [
        ({"data": b"{not json"}, 400, "bad_request"),
        ({"json": [1, 2]}, 400, "bad_request"),
        ({"json": {"valid_minutes": 0}}, 400, "bad_request"),
        ({"json": {"valid_minutes": "30"}}, 400, "bad_request"),
        ({"json": {"client_name": "x" * 500}}, 400, "bad_request"),
        ({"json": {"surprise": True}}, 400, "bad_request"),
        ({"data": b"{" + b" " * 100_000 + b"}"}, 413, "payload_too_large"),
    ],
)
async def test_create_room_validates_its_body(server: RunningServer, kw, status, code) -> None:
    got_status, body = await _post_rooms(server, _bearer(server.config.api_key), **kw)
    assert (got_status, body["error"]) == (status, code), body


async def test_huge_body_anywhere_is_413_json(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/healthz", data=b"x" * (2 * 1024 * 1024)) as resp:
            assert resp.status in (405, 413)
            assert set(await resp.json()) == {"error", "message"}


async def test_unknown_route_is_json_404(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/nope") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "not_found"


async def test_page_static_files_and_security_headers(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/join") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            csp = resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert resp.headers["X-Frame-Options"] == "DENY"
            page = await resp.text()
        # Every script and stylesheet the page loads is ours and is served.
        refs = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert refs
        for ref in refs:
            assert not re.match(r"^(https?:)?//", ref), ref
            if ref.startswith("/static/"):
                async with http.get(f"{server.url}{ref}") as resp:
                    assert resp.status == 200, ref
        for path in ("/static/../pyproject.toml", "/static/.hidden", "/static/node_modules/x.js"):
            async with http.get(f"{server.url}{path}") as resp:
                assert resp.status == 404, path
        async with http.get(f"{server.url}/healthz") as resp:
            assert resp.headers["Content-Security-Policy"] == csp

    directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
    assert directives["default-src"] == "'self'"
    # No other origin anywhere: only 'self', data:/blob:/mediastream: and our own host's ws.
    host = urlsplit(server.url).netloc
    for value in directives.values():
        for source in value.split():
            assert source in (
                "'self'",
                "'none'",
                "data:",
                "blob:",
                "mediastream:",
                f"ws://{host}",
                f"wss://{host}",
            ), source


async def test_chunked_body_without_length_is_limited_too(server: RunningServer) -> None:
    async def body():
        yield b'{"client_name": "'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}'

    status, got = await _post_rooms(server, _bearer(server.config.api_key), data=body())
    assert (status, got["error"]) == (413, "payload_too_large")

    async def small():
        yield b'{"client_name": '
        yield b'"Herr K"}'

    status, got = await _post_rooms(server, _bearer(server.config.api_key), data=small())
    assert status == 201, got


async def test_metrics_render_lets_the_loop_run_between_families() -> None:
    """/metrics is rendered a metric family at a go once a go took its budget, so media
    waiting on the loop is not held for the whole render (12-35 ms at 30-50 rooms). The
    bytes are the same as rendering at once."""
    import asyncio

    from prometheus_client.core import GaugeMetricFamily

    from signaling.metrics import Metrics

    metrics = Metrics()

    class Many:
        def collect(self):
            for i in range(5):
                g = GaugeMetricFamily(f"roundtable_test_{i}", "A test family.", labels=["x"])
                for j in range(10):
                    g.add_metric([str(j)], i * j)
                yield g

    metrics.register(Many())
    loop = asyncio.get_running_loop()
    order: list[str] = []
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001  # each look at the clock: 1 ms later
        return now[0]

    loop.call_soon(lambda: order.append("media"))
    body = await metrics.render_async(budget=0.0015, clock=clock)
    order.append("rendered")
    assert order == ["media", "rendered"]

    def steady(text: bytes) -> list[bytes]:  # the process's CPU and memory move on
        return [line for line in text.splitlines() if b"process_" not in line]

    assert steady(body) == steady(metrics.render())
    assert b'roundtable_test_4{x="9"} 36.0' in body
