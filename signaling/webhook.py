"""Delivery of a new invite to the agency's own system (mail, SMS) through a webhook.

``POST`` of a small JSON document, signed ``X-Roundtable-Signature: sha256=<hex HMAC>``
so the receiver can tell it came from us. A failed attempt (network error, timeout, any
non-2xx answer) is retried with exponential backoff; the outcome of the last attempt is
reported, never swallowed. Delivery tasks belong to this object, which the app closes on
shutdown (cancelling what is still in flight).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Roundtable-Signature"


def derive_secret(token_secret: str) -> str:
    """The default webhook key: derived, so the token secret itself never leaves us."""
    return hmac.new(token_secret.encode(), b"roundtable invite webhook", hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str
    secret: str
    attempts: int = 3
    backoff_seconds: float = 1.0  # before retry n: backoff * 2**(n-1)
    timeout_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class Delivery:
    status: str  # "delivered" | "failed"
    attempts: int
    message: str


# on_outcome(room, invite_id, delivery)
OutcomeHandler = Callable[[str, str, Delivery], Awaitable[None]]


class InviteWebhook:
    def __init__(self, settings: WebhookSettings, on_outcome: OutcomeHandler) -> None:
        self._settings = settings
        self._on_outcome = on_outcome
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, room: str, invite_id: str, document: dict[str, Any]) -> None:
        """Deliver in the background; the caller answers its HTTP request at once."""
        task = asyncio.get_running_loop().create_task(self._run(room, invite_id, document))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, room: str, invite_id: str, document: dict[str, Any]) -> None:
        delivery = await self.deliver(document)
        log.info(
            "room %s: invite %s webhook %s after %d attempt(s): %s",
            room,
            invite_id,
            delivery.status,
            delivery.attempts,
            delivery.message,
        )
        try:
            await self._on_outcome(room, invite_id, delivery)
        except Exception:
            log.exception("room %s: reporting webhook outcome failed", room)

    async def deliver(self, document: dict[str, Any]) -> Delivery:
        s = self._settings
        body = json.dumps(document, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(s.secret, body)}
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=s.timeout_seconds)
            )
        message = ""
        for attempt in range(1, s.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(s.backoff_seconds * 2 ** (attempt - 2))
            try:
                async with self._session.post(
                    s.url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    if 200 <= resp.status < 300:
                        return Delivery("delivered", attempt, f"HTTP {resp.status}")
                    message = f"HTTP {resp.status}"
            except TimeoutError:
                message = "timed out"
            except aiohttp.ClientError as exc:
                message = type(exc).__name__
            log.info("invite webhook attempt %d failed: %s", attempt, message)
        return Delivery("failed", s.attempts, message)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
