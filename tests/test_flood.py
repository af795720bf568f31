"""A join flood does not slow everyone: cheap refusals come first.

A real `roundtable serve` holds 200 idle Socket.IO participants while another process
sends ~1,000 connects/s with invalid tokens (half from one address, half from fifty) for a
few seconds. Meanwhile legitimate joins are timed (printed; the goal, < 1 s, is a timing
goal and is asserted only generously here), the server's memory growth is bounded and its
log shows nothing unhandled.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import socketio

from signaling.store import MemoryStore
from signaling.tokens import TokenService
from tests.controlplane import SignalClient
from tests.test_cli import Serve

pytestmark = pytest.mark.slow

FLOOD_RATE = 1000
FLOOD_SECONDS = 5
IDLE = 200
ROOT = Path(__file__).resolve().parent.parent


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _client(address: str) -> SignalClient:
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))
    return SignalClient(sio=socketio.AsyncClient(reconnection=False, http_session=http))


async def _close(client: SignalClient) -> None:
    await client.close()
    await client.sio.eio.http.close()


async def _timed_join(url: str, token: str) -> float:
    client = _client("127.0.0.1")
    started = time.monotonic()
    try:
        assert await client.connect(url, token), client.refusal
        await client.wait("welcome", within=30)
        return time.monotonic() - started
    finally:
        await _close(client)


async def test_a_join_flood_does_not_slow_a_legitimate_join(tmp_path: Path) -> None:
    serve = Serve(tmp_path / "state")
    url = serve.line_with("listening on").rsplit(" ", 1)[1]
    serve.line_with("curl -X POST")
    secret = json.loads((tmp_path / "state" / "secrets.json").read_text())["secret"]
    tokens = TokenService(secret, MemoryStore())
    idle: list[SignalClient] = []
    try:
        # 200 idle participants, 10 per room, from addresses below the join limit.
        for i in range(IDLE):
            client = _client(f"127.0.1.{1 + i // 20}")
            token, _ = tokens.issue(room=f"r_idle{i // 10}", role="client", name="I", ttl=600)
            assert await client.connect(url, token), client.refusal
            idle.append(client)
        await asyncio.gather(*(c.wait("welcome") for c in idle))
        rss_before = _rss_kib(serve.proc.pid)

        flood = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.flood",
            url,
            str(FLOOD_RATE),
            str(FLOOD_SECONDS),
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        await asyncio.sleep(1.0)  # let the flood reach its rate
        joins: list[float] = []
        health: list[float] = []
        async with aiohttp.ClientSession() as http:
            for n in range(6):
                token, _ = tokens.issue(room=f"r_legit{n}", role="caseworker", name="C", ttl=600)
                joins.append(await _timed_join(url, token))
                started = time.monotonic()
                async with http.get(f"{url}/healthz") as resp:
                    assert resp.status == 200
                health.append(time.monotonic() - started)
                await asyncio.sleep(0.4)
        out, _ = await flood.communicate()
        result = json.loads(out.decode().strip().splitlines()[-1])
        rss_after = _rss_kib(serve.proc.pid)
        print(
            f"\nflood: {result}\nlegitimate join during the flood: max {max(joins):.3f} s, "
            f"all {[round(j, 3) for j in joins]}\n/healthz: max {max(health):.3f} s\n"
            f"RSS {rss_before // 1024} MiB -> {rss_after // 1024} MiB"
        )
        # One Python process cannot always send 1,000/s on a busy machine: what it reached
        # is printed above; a flood it is either way.
        assert result["sent"] >= 1000, result
        # Every flood connect was refused with a code (none got in, none hung).
        assert result.get("http_429", 0) > 0, result
        assert any(k.startswith("token_") for k in result), result
        assert set(result) - {"sent", "seconds", "rate"} <= {
            "http_429",
            "http_401",
            "too_many_requests",
            "token_malformed",
            "token_bad_signature",
        }, result
        # Generous: the < 1 s goal is measured (printed above) and belongs to bench/.
        assert max(joins) < 10, joins
        assert rss_after - rss_before < 150 * 1024, (rss_before, rss_after)
        # The idle participants are still there.
        assert all(c.sio.connected for c in idle)
    finally:
        for client in idle:
            await _close(client)
        assert serve.stop() == 0
    log = "\n".join(serve.seen + list(serve.lines.queue))
    for needle in ("Traceback", "ERROR", "unhandled", "Task exception"):
        assert needle not in log, log[-3000:]
