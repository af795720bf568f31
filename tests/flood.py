"""A join flood as an attacker runs it: Engine.IO handshakes plus a Socket.IO CONNECT with
an invalid token, as fast as asked, from one address and from many.

Run as ``python -m tests.flood URL RATE SECONDS`` in its own process (so that it does not
share an event loop, or a core, with the test that measures a legitimate join meanwhile);
prints one JSON line with what it sent and what came back.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

import aiohttp

ADDRESSES = [f"127.0.3.{n}" for n in range(1, 51)]
CONCURRENCY = 200


async def _one(http: aiohttp.ClientSession, url: str, outcome: Counter[str]) -> None:
    try:
        async with http.ws_connect(
            f"{url}/socket.io/?EIO=4&transport=websocket", timeout=aiohttp.ClientWSTimeout(5)
        ) as ws:
            await ws.receive(timeout=5)  # OPEN
            await ws.send_str('40{"token":"eyJhbGciOiJIUzI1NiJ9.e30.forged"}')
            reply = await ws.receive(timeout=5)
            text = reply.data if isinstance(reply.data, str) else ""
            if text.startswith("44"):
                outcome[json.loads(text[2:]).get("data", {}).get("error", "?")] += 1
            else:
                outcome[f"other:{text[:2]}"] += 1
    except aiohttp.WSServerHandshakeError as exc:
        outcome[f"http_{exc.status}"] += 1
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        outcome[type(exc).__name__] += 1


async def flood(url: str, rate: float, seconds: float) -> dict[str, object]:
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(a, 0), limit=0))
        for a in ADDRESSES
    ]
    outcome: Counter[str] = Counter()
    slots = asyncio.Semaphore(CONCURRENCY)
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    sent = 0

    async def run(http: aiohttp.ClientSession) -> None:
        try:
            await _one(http, url, outcome)
        finally:
            slots.release()

    try:
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) - sent
            if due <= 0:
                await asyncio.sleep(0.002)
                continue
            for _ in range(due):
                await slots.acquire()
                # Half from one address (the join limit's case), half spread over many.
                http = sessions[0] if sent % 2 else sessions[1 + sent % (len(sessions) - 1)]
                task = asyncio.get_running_loop().create_task(run(http))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for http in sessions:
            await http.close()
    took = time.monotonic() - started
    return {"sent": sent, "seconds": round(took, 2), "rate": round(sent / took), **outcome}


if __name__ == "__main__":
    result = asyncio.run(flood(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])))
    print(json.dumps(result), flush=True)
