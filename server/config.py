"""One typed configuration for the whole process, built from the environment and the CLI.

Precedence: command-line flag > environment variable > default. Secrets that are not in
the environment come from the local state file (``server.secrets``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def default_state_dir(env: Mapping[str, str]) -> Path:
    if env.get("ROUNDTABLE_STATE_DIR"):
        return Path(env["ROUNDTABLE_STATE_DIR"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "roundtable"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None  # as browsers reach us, e.g. behind a TLS proxy
    secret: str = field(default="", repr=False)
    api_key: str = field(default="", repr=False)
    media_host: str | None = None  # the one address media leaves on; None: all non-loopback
    redis_url: str | None = None  # shared state store; None: in memory
    max_participants: int = 12
    room_minutes: int = 240
    invite_minutes: int = 30
    host_grace_seconds: float = 120  # the host's connection dropped: the room waits this long
    invite_webhook: str | None = None
    # Key of the webhook's HMAC signature; empty: derived from `secret`.
    invite_webhook_secret: str = field(default="", repr=False)
    webhook_attempts: int = 3
    webhook_backoff_seconds: float = 1.0  # before retry n: backoff * 2**(n-1)
    webhook_timeout_seconds: float = 10.0
    events_per_second: float = 50.0
    joins_per_ip_per_minute: int = 30
    # TURN (coturn `use-auth-secret`): URLs for browsers, the shared secret, the credential
    # lifetime (None: the token's remaining lifetime, at most 24 h), and "relay" to make
    # every browser send media through TURN.
    turn_urls: tuple[str, ...] = ()
    turn_secret: str = field(default="", repr=False)
    turn_ttl: int | None = None
    ice_policy: str = "all"
    web_dir: Path = WEB_DIR
    state_dir: Path = field(default_factory=lambda: default_state_dir(os.environ))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read ``ROUNDTABLE_*`` (and ``REDIS_URL``); ``overrides`` that are None are ignored."""
        env = os.environ if env is None else env

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def number(name: str, default: int) -> int:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
            if value < 0:
                raise ConfigError(f"{name} must not be negative")
            return value

        d = cls.__dataclass_fields__
        values: dict[str, Any] = {
            "host": text("ROUNDTABLE_HOST") or d["host"].default,
            "port": number("ROUNDTABLE_PORT", d["port"].default),
            "public_url": text("ROUNDTABLE_PUBLIC_URL"),
            "secret": text("ROUNDTABLE_SECRET") or "",
            "api_key": text("ROUNDTABLE_API_KEY") or "",
            "media_host": text("ROUNDTABLE_MEDIA_HOST"),
            "redis_url": text("REDIS_URL") or text("ROUNDTABLE_REDIS_URL"),
            "max_participants": number(
                "ROUNDTABLE_MAX_PARTICIPANTS", d["max_participants"].default
            ),
            "room_minutes": number("ROUNDTABLE_ROOM_MINUTES", d["room_minutes"].default),
            "invite_minutes": number("ROUNDTABLE_INVITE_MINUTES", d["invite_minutes"].default),
            "host_grace_seconds": number(
                "ROUNDTABLE_HOST_GRACE_SECONDS", d["host_grace_seconds"].default
            ),
            "invite_webhook": text("ROUNDTABLE_INVITE_WEBHOOK"),
            "invite_webhook_secret": text("ROUNDTABLE_INVITE_WEBHOOK_SECRET") or "",
            "joins_per_ip_per_minute": number(
                "ROUNDTABLE_JOINS_PER_IP_PER_MINUTE", d["joins_per_ip_per_minute"].default
            ),
            "turn_urls": tuple(
                u.strip() for u in (text("ROUNDTABLE_TURN_URLS") or "").split(",") if u.strip()
            ),
            "turn_secret": text("ROUNDTABLE_TURN_SECRET") or "",
            "turn_ttl": None
            if text("ROUNDTABLE_TURN_TTL") is None
            else number("ROUNDTABLE_TURN_TTL", 0),
            "ice_policy": (text("ROUNDTABLE_ICE_POLICY") or d["ice_policy"].default).lower(),
            "web_dir": Path(text("ROUNDTABLE_WEB_DIR") or WEB_DIR),
            "state_dir": default_state_dir(env),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(**values)
        config.validate()
        return config

    def with_(self, **changes: Any) -> Config:
        return replace(self, **changes)

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port must be 0-65535")
        if self.max_participants < 2:
            raise ConfigError("ROUNDTABLE_MAX_PARTICIPANTS must be at least 2")
        if not 1 <= self.room_minutes <= 24 * 60:
            raise ConfigError("ROUNDTABLE_ROOM_MINUTES must be 1-1440")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError("ROUNDTABLE_PUBLIC_URL must start with http:// or https://")
        if not 1 <= self.invite_minutes <= 240:
            raise ConfigError("ROUNDTABLE_INVITE_MINUTES must be 1-240")
        if self.invite_webhook and not self.invite_webhook.startswith(("http://", "https://")):
            raise ConfigError("ROUNDTABLE_INVITE_WEBHOOK must start with http:// or https://")
        if self.webhook_attempts < 1:
            raise ConfigError("webhook_attempts must be at least 1")
        self._validate_turn()
        if self.secret and len(self.secret.encode()) < 32:
            raise ConfigError("ROUNDTABLE_SECRET must have at least 32 characters")

    def _validate_turn(self) -> None:
        if self.ice_policy not in ("all", "relay"):
            raise ConfigError("ROUNDTABLE_ICE_POLICY must be all or relay")
        for url in self.turn_urls:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ConfigError(
                    f"ROUNDTABLE_TURN_URLS: {url!r} must start with stun:, turn: or turns:"
                )
        has_turn = any(u.startswith(("turn:", "turns:")) for u in self.turn_urls)
        if has_turn and not self.turn_secret:
            raise ConfigError("ROUNDTABLE_TURN_URLS has TURN servers: set ROUNDTABLE_TURN_SECRET")
        if self.ice_policy == "relay" and not has_turn:
            raise ConfigError(
                "ROUNDTABLE_ICE_POLICY=relay needs a turn: or turns: URL in ROUNDTABLE_TURN_URLS"
            )
        if self.turn_ttl is not None and not 60 <= self.turn_ttl <= 24 * 3600:
            raise ConfigError("ROUNDTABLE_TURN_TTL must be 60-86400 seconds")
