"""One typed settings object for the whole process, built from the environment and the CLI.

Every setting is declared once, below, with its environment variable, its description and
its default. ``roundtable serve --help``, ``deploy/env.example`` and the table in
``docs/deploy.md`` are rendered from these declarations (``server.settings_doc``) and
``tests/test_settings.py`` fails when one of them drifts.

Precedence: command-line flag > environment variable > default. Secrets that are not in
the environment come from the local state file (``server.secrets``).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AliasChoices,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "ROUNDTABLE_"
_HERE = Path(__file__).resolve().parent


def _find_web_dir() -> Path:
    """The page's files: ``web/`` beside the packages in a source checkout or an editable
    install, ``roundtable_web/`` (package data) beside them in an installed wheel."""
    for candidate in (_HERE.parent / "web", _HERE.parent / "roundtable_web"):
        if (candidate / "index.html").is_file():
            return candidate
    return _HERE.parent / "web"


WEB_DIR = _find_web_dir()


def default_state_dir(env: Mapping[str, str]) -> Path:
    if env.get("ROUNDTABLE_STATE_DIR"):
        return Path(env["ROUNDTABLE_STATE_DIR"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "roundtable"


class ConfigError(ValueError):
    pass


def setting(
    default: Any = None,
    description: str = "",
    *,
    shown: str | None = None,
    flag: bool = True,
    secret: bool = False,
    **kwargs: Any,
) -> Any:
    """A declared setting. ``shown`` is the default as an operator reads it where the value
    is derived at run time; ``flag=False`` keeps it off the command line (secrets would
    show in ``ps``); ``secret`` keeps it out of ``repr``."""
    extra: dict[str, Any] = {"flag": flag and not secret}
    if shown is not None:
        extra["shown"] = shown
    if "default_factory" not in kwargs:
        kwargs["default"] = default
    return Field(description=description, repr=not secret, json_schema_extra=extra, **kwargs)


# Comma lists and "A-B" ranges arrive as plain strings: NoDecode keeps pydantic-settings
# from parsing them as JSON, the validators below split them.
CommaList = Annotated[tuple[str, ...], NoDecode]
PortRange = Annotated[tuple[int, int] | None, NoDecode]
_CONFIG_ENV: ContextVar[Mapping[str, str] | None] = ContextVar(
    "roundtable_config_env", default=None
)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source reading a given mapping (tests pass dicts)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._mapping = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Blank counts as unset, as it always has (``ROUNDTABLE_X=`` in a compose file).
        # Names compare case-insensitively, as pydantic-settings does with os.environ.
        return {k.lower(): v.strip() for k, v in self._mapping.items() if v.strip()}


class Config(BaseSettings):
    """Everything ``roundtable serve`` can be told. Frozen; ``with_`` makes a changed copy.

    Built directly (``Config(port=0, ...)``) it reads no environment: only
    ``Config.from_env`` does, so tests and the bench get exactly what they pass.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        str_strip_whitespace=True,
    )

    # -- listening and links -----------------------------------------------------------
    host: str = setting(
        "127.0.0.1", "Address the HTTP(S) server listens on; 0.0.0.0 for every interface."
    )
    port: int = setting(
        8080, "TCP port of the page, the API and Socket.IO; 0 picks a free one.", ge=0, le=65535
    )
    public_url: str | None = setting(
        None,
        "Base of join links as browsers reach the server, e.g. https://talk.example.org.",
        shown="the address the request came to",
    )
    tls_cert: Path | None = setting(
        None,
        "PEM certificate chain for built-in HTTPS/WSS on the same port (needs the key too); "
        "re-read on SIGHUP.",
        shown="unset: plain HTTP",
    )
    tls_key: Path | None = setting(
        None, "PEM private key of the certificate; re-read on SIGHUP.", shown="unset"
    )
    trusted_proxies: CommaList = setting(
        (),
        "Comma list of proxy addresses or CIDRs whose X-Forwarded-For/Forwarded header names "
        "the client; from anyone else the header is ignored.",
        shown="none: the TCP peer is the client",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting(
        "INFO", "Log level: DEBUG, INFO, WARNING or ERROR."
    )

    # -- secrets -----------------------------------------------------------------------
    secret: str = setting(
        "",
        "JWT signing secret (HS256, at least 32 characters).",
        shown="generated once, kept in the state directory",
        secret=True,
    )
    api_key: str = setting(
        "",
        "Bearer key for POST /api/rooms.",
        shown="generated once, kept in the state directory",
        secret=True,
    )
    state_dir: Path = setting(
        default_factory=lambda: default_state_dir(os.environ),
        description="Where generated secrets are kept (mode 0600).",
        shown="$XDG_CONFIG_HOME/roundtable or ~/.config/roundtable",
    )

    # -- media -------------------------------------------------------------------------
    media_host: str | None = setting(
        None,
        "The one IP address media is sent from and received on.",
        shown="every non-loopback interface",
    )
    media_port: int = setting(
        40000,
        "The one UDP port all peer connections of this node share; 0 = an ephemeral port "
        "per connection.",
        ge=0,
        le=65535,
    )
    media_ports: PortRange = setting(
        None,
        'UDP port range "FIRST-LAST" (e.g. 40000-40999) used instead of the one media port.',
        shown="unset: the one media port",
    )
    announced_ip: str | None = setting(
        None,
        "Public IP address put in candidates when the node sits behind 1:1 NAT.",
        shown="unset: the media address itself",
    )
    read_coalesce_ms: float = setting(
        0.0,
        "Read coalescing on the shared media port, in milliseconds (0 = off): after a "
        "read, the port is read again after this long, in one batch, instead of on every "
        "datagram: fewer event-loop wake-ups for up to about this much more forwarding "
        "delay (the loop's timers have 1 ms resolution). Off by default: in the bench it "
        "saved no CPU (docs/bench.md).",
        ge=0,
        le=20,
    )
    event_loop: Literal["uvloop", "asyncio"] = setting(
        "asyncio",
        'The event loop: "asyncio" (the standard library\'s) or "uvloop" (less CPU per '
        "wake-up in a microbenchmark, a tie in the bench so far; needs the one shared media "
        "port, otherwise asyncio is used).",
    )
    ice_policy: Literal["all", "relay"] = setting(
        "all", 'ICE transport policy for the page: "all", or "relay" (TURN only).'
    )
    turn_urls: CommaList = setting(
        (),
        "Comma list of TURN/STUN URLs handed to participants, e.g. "
        "turn:turn.example.org:3478?transport=udp,turns:turn.example.org:443?transport=tcp.",
        shown="none",
    )
    turn_secret: str = setting(
        "",
        "coturn's static-auth-secret: signs each participant's time-limited TURN credential.",
        shown="unset",
        secret=True,
    )
    turn_ttl: int | None = setting(
        None,
        "Lifetime of TURN credentials in seconds (60-86400).",
        shown="the token's remaining lifetime, at most 24 h",
    )

    # -- state and rooms ---------------------------------------------------------------
    redis_url: str | None = setting(
        None,
        "Redis shared by every node: rooms, revocations, used invites, Socket.IO events.",
        shown="unset: one process, state in <state dir>/state.sqlite3",
        flag=False,  # may carry a password
        validation_alias=AliasChoices("ROUNDTABLE_REDIS_URL", "REDIS_URL"),
    )
    node_id: str | None = setting(
        None,
        "This node's id in the cluster (letters, digits, . _ -).",
        shown="the host name and the port",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
    )
    cluster_url: str | None = setting(
        None,
        "Entry URL of the whole cluster (a load balancer); pages reconnect through it when "
        "their node is gone.",
        shown="unset: the live nodes' public URLs",
    )
    drain_timeout: float = setting(
        3600,
        "Seconds a draining node (first SIGTERM) lets running calls continue before it "
        "moves their participants to another node.",
        ge=0,
    )
    workers: str = setting(
        "1",
        'Nodes started on this machine, one per core: a number or "auto" (needs Redis).',
    )
    max_participants: int = setting(12, "Participants per room (at least 2).", ge=2)
    room_minutes: int = setting(
        240, "Validity of a session and its two links, in minutes (1-1440).", ge=1, le=24 * 60
    )
    invite_minutes: int = setting(
        30, "Default validity of a partner invite, in minutes (1-240).", ge=1, le=240
    )
    host_grace_seconds: float = setting(
        120, "How long a room waits for its caseworker whose connection dropped.", ge=0
    )
    reconnect_grace_seconds: float = setting(
        60,
        "How long a participant whose connection dropped keeps their place and media "
        "(shown as reconnecting) before they count as gone; 0 = gone at once.",
        ge=0,
        le=3600,
    )
    end_warning_seconds: float = setting(
        300, "How long before a session's end everyone in it is warned (session.ending).", ge=0
    )
    events_per_second: float = setting(
        50.0, "Socket.IO events per second per connection (bursts as large).", gt=0
    )
    joins_per_ip_per_minute: int = setting(
        30, "Socket.IO connects per client address per minute.", ge=1
    )

    # -- invite delivery ---------------------------------------------------------------
    invite_webhook: str | None = setting(
        None, "URL that receives each new partner invite (HMAC-signed POST).", shown="unset"
    )
    invite_webhook_secret: str = setting(
        "",
        "Key of the webhook's HMAC signature.",
        shown="derived from the JWT secret",
        secret=True,
    )
    webhook_attempts: int = setting(3, "Delivery attempts per invite.", ge=1)
    webhook_backoff_seconds: float = setting(
        1.0, "Wait before retry n: this times 2^(n-1) seconds.", ge=0
    )
    webhook_timeout_seconds: float = setting(10.0, "Timeout of one delivery attempt.", gt=0)
    smtp_url: str | None = setting(
        None,
        "SMTP server that sends invitations by e-mail: smtp://user:pass@host:port "
        "(STARTTLS when offered) or smtps://… (TLS).",
        shown="unset: no e-mail",
        secret=True,
    )
    smtp_from: str | None = setting(
        None,
        "Sender address of invitation e-mails (needed with ROUNDTABLE_SMTP_URL).",
        shown="unset",
    )

    web_dir: Path = setting(
        WEB_DIR, "Directory of the page's files.", shown="the page shipped with roundtable"
    )

    # -- construction ------------------------------------------------------------------

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env = _CONFIG_ENV.get()
        if env is None:
            return (init_settings,)
        return (init_settings, _MappingEnvSource(settings_cls, env))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read ``ROUNDTABLE_*`` (and ``REDIS_URL``); ``overrides`` that are None are ignored."""
        env = os.environ if env is None else env
        values = {k: v for k, v in overrides.items() if v is not None}
        values.setdefault("state_dir", default_state_dir(env))
        token = _CONFIG_ENV.set(env)
        try:
            return cls(**values)
        finally:
            _CONFIG_ENV.reset(token)

    def with_(self, **changes: Any) -> Config:
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update(changes)
        return type(self)(**values)

    # -- validation --------------------------------------------------------------------

    @field_validator("trusted_proxies", "turn_urls", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("event_loop", "ice_policy", mode="before")
    @classmethod
    def _one_of(cls, value: Any, info: ValidationInfo) -> Any:
        """A choice of words, in any case; the choices are the field's Literal."""
        value = value.lower() if isinstance(value, str) else value
        choices = get_args(cls.model_fields[info.field_name].annotation)
        if value not in choices:
            raise ValueError(f"must be {' or '.join(choices)}")
        return value

    @field_validator("media_ports", mode="before")
    @classmethod
    def _port_range(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        first, sep, last = value.partition("-")
        if not sep or not first.strip().isdigit() or not last.strip().isdigit():
            raise ValueError('must be "FIRST-LAST", e.g. 40000-40999')
        return int(first), int(last)

    @field_validator("media_ports")
    @classmethod
    def _port_range_bounds(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 1 <= value[0] <= value[1] <= 65535:
            raise ValueError("must be FIRST-LAST with 1 <= FIRST <= LAST <= 65535")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR") from None
        return tuple(out)

    @field_validator("turn_urls")
    @classmethod
    def _turn_schemes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ValueError(f"{url!r} must start with stun:, turn: or turns:")
        return value

    @field_validator("turn_ttl")
    @classmethod
    def _ttl(cls, value: int | None) -> int | None:
        if value is not None and not 60 <= value <= 24 * 3600:
            raise ValueError("must be 60-86400 seconds")
        return value

    @field_validator("announced_ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address") from None
        return value

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: str) -> str:
        value = str(value).strip().lower()
        if value != "auto" and not (value.isdigit() and 1 <= int(value) <= 256):
            raise ValueError('must be a number from 1 to 256 or "auto"')
        return value

    @property
    def worker_count(self) -> int:
        return (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)

    @field_validator("public_url", "invite_webhook", "cluster_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("secret")
    @classmethod
    def _secret_length(cls, value: str) -> str:
        if value and len(value.encode()) < 32:
            raise ValueError("must have at least 32 characters")
        return value

    @field_validator("state_dir", "tls_cert", "tls_key", "web_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _together(self) -> Config:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "ROUNDTABLE_TLS_CERT and ROUNDTABLE_TLS_KEY go together: set both or neither"
            )
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{env_name(name)}: no such file: {path}")
        if self.smtp_url:
            from signaling.mailer import SmtpSettings

            SmtpSettings.from_url(self.smtp_url, self.smtp_from or "")  # ValueError says what
        has_turn = any(u.startswith(("turn:", "turns:")) for u in self.turn_urls)
        if has_turn and not self.turn_secret:
            raise ValueError(
                "ROUNDTABLE_TURN_URLS names TURN servers: set ROUNDTABLE_TURN_SECRET "
                "(coturn's static-auth-secret) too"
            )
        if self.workers != "1" and not self.redis_url:
            raise ValueError(
                "ROUNDTABLE_WORKERS above 1 needs ROUNDTABLE_REDIS_URL: the workers share "
                "rooms and events through Redis"
            )
        if self.ice_policy == "relay" and not has_turn:
            raise ValueError(
                "ROUNDTABLE_ICE_POLICY=relay needs a turn: or turns: URL in ROUNDTABLE_TURN_URLS"
            )
        return self


def env_name(field: str) -> str:
    """The environment variable of a setting (its first one, where it has several)."""
    info = Config.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        assert isinstance(first, str)
        return first
    return ENV_PREFIX + field.upper()


def env_names(field: str) -> tuple[str, ...]:
    info = Config.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(c for c in alias.choices if isinstance(c, str))
    return (env_name(field),)


def field_extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _explain(exc: ValidationError) -> str:
    """pydantic's errors in the operator's words: the variable, what is wrong, the value."""
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        loc = err.get("loc") or ()
        field = loc[0] if loc else None
        if isinstance(field, str) and field in Config.model_fields:
            value = err.get("input")
            got = f" (got {value!r})" if isinstance(value, str | int | float) else ""
            if Config.model_fields[field].repr is False:
                got = ""  # never echo a secret
            lines.append(f"{env_name(field)}: {msg}{got}")
        else:
            lines.append(msg)
    return "; ".join(lines)
