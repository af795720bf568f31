"""ICE servers for a participant: STUN/TURN URLs with time-limited TURN credentials.

The credentials follow coturn's ``use-auth-secret`` scheme (the "TURN REST API" draft,
draft-uberti-behave-turn-rest): username ``<unix expiry>:<participant id>``, password
``base64(HMAC-SHA1(static-auth-secret, username))``. coturn recomputes the password from
the username and its own copy of the secret and refuses the username once the expiry has
passed, so nothing has to be stored or revoked: a credential simply runs out. That is why
a participant's credential never outlives its token: a removed participant's token is
revoked, it cannot reconnect, and so it never gets a new one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# coturn and browsers cope with longer, but a leaked credential should not work for days.
MAX_TTL_SECONDS = 24 * 3600
ICE_POLICIES = ("all", "relay")


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """``urls``: ``stun:``, ``turn:`` and ``turns:`` URLs as browsers take them;
    ``ttl``: seconds a credential is valid (None: as long as the token, at most 24 h)."""

    urls: tuple[str, ...] = ()
    secret: str = ""
    ttl: int | None = None
    policy: str = "all"


def credential(secret: str, username: str) -> str:
    """The password coturn expects for ``username`` under ``static-auth-secret``."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _is_turn(url: str) -> bool:
    return url.startswith(("turn:", "turns:"))


class IceServers:
    """Builds the ``ice`` object of ``welcome``: ``{"iceServers": [...],
    "iceTransportPolicy": "all" | "relay"}``, with a fresh credential per participant."""

    def __init__(self, settings: TurnSettings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock

    def expiry(self, token_exp: int) -> int:
        """When a credential made now expires: the token's expiry, at most the TTL and 24 h."""
        now = int(self._clock())
        ttl = self._settings.ttl if self._settings.ttl is not None else MAX_TTL_SECONDS
        return max(now, min(token_exp, now + min(ttl, MAX_TTL_SECONDS)))

    def for_participant(self, participant_id: str, token_exp: int) -> dict[str, Any]:
        s = self._settings
        servers: list[dict[str, Any]] = []
        stun = [u for u in s.urls if not _is_turn(u)]
        turn = [u for u in s.urls if _is_turn(u)]
        if stun:
            servers.append({"urls": stun})
        if turn:
            username = f"{self.expiry(token_exp)}:{participant_id}"
            servers.append(
                {"urls": turn, "username": username, "credential": credential(s.secret, username)}
            )
        return {"iceServers": servers, "iceTransportPolicy": s.policy}
