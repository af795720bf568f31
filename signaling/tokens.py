"""Room tokens: JWT (HS256) issued and verified per docs/protocol.md.

Verification refuses each failure with its own code so an operator (and the page) can
tell an expired link from a forged one. Revocation lives in the ``StateStore``: a removed
participant's ``jti`` is revoked, an ended room revokes every token naming it, and an
invite token (``invite: true``) is single-use (its ``jti`` is recorded on first join).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from signaling.errors import RoomClosed, TokenError
from signaling.store import StateStore

ISSUER = "roundtable"
AUDIENCE = "roundtable"
ALGORITHM = "HS256"
ROLES = ("caseworker", "client", "partner")
GRANTS = frozenset(
    {
        "publish",
        "subscribe",
        "moderate",
        "invite",
        "screen",
        "audio",
        "video",
        "see_client",
        "chat",
    }
)
DEFAULT_GRANTS: dict[str, frozenset[str]] = {
    "caseworker": GRANTS,
    "client": frozenset({"publish", "subscribe", "screen", "audio", "video", "see_client", "chat"}),
    "partner": frozenset(),  # a partner's rights come from its invite
}
REQUIRED_CLAIMS = ("exp", "nbf", "iat", "aud", "iss", "room", "sub", "role", "jti")
MAX_TOKEN_CHARS = 4096
# Clock skew tolerated between the issuing and the verifying node.
LEEWAY_SECONDS = 5.0
# Tokens issued this long before the store's epoch are still believed: the clocks of the
# issuing node and of the node that set the epoch may differ a little.
EPOCH_SLACK_SECONDS = 60

# Room and participant ids, in tokens and in every event naming a participant.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The verified content of a room token."""

    room: str
    sub: str
    role: str
    name: str
    org: str | None
    grants: frozenset[str]
    lobby: bool
    exp: int
    nbf: int
    iat: int
    jti: str
    invite: bool = False  # made by POST /api/rooms/{room}/invites: single-use
    org_type: str | None = None
    # The person must agree to the consent text before joining: the connect carries
    # ``consent: true`` or is refused (``consent_required``).
    consent: bool = False
    # Hybrid appointment: the client sits at this caseworker's desk (no client link).
    client_present: bool = False

    def has(self, grant: str) -> bool:
        return grant in self.grants

    @property
    def single_use(self) -> bool:
        return self.invite


def _only_signature_broken(token: str) -> bool:
    """Three segments whose header and payload decode to JSON objects."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        for segment in parts[:2]:
            padded = segment + "=" * (-len(segment) % 4)
            if not isinstance(json.loads(base64.urlsafe_b64decode(padded)), dict):
                return False
    except (ValueError, TypeError):
        return False
    return True


def _bad(code: str, message: str) -> TokenError:
    return TokenError(code, message)


class TokenService:
    """Issues and verifies room tokens with one secret; checks revocation in the store."""

    def __init__(
        self,
        secret: str,
        store: StateStore,
        *,
        leeway: float = LEEWAY_SECONDS,
        now: Callable[[], float] = time.time,
    ) -> None:
        if len(secret.encode()) < 32:
            raise ValueError("the token secret must have at least 32 bytes")
        self._secret = secret
        self._store = store
        self._leeway = leeway
        self._now = now

    # -- issuing -----------------------------------------------------------------------

    def client_sub(self, room: str) -> str:
        """The client's participant id in ``room``: the same for every client link of the
        room (the e-mailed one, the QR code at the desk), so they are one person and a
        second device replaces the first instead of adding a second client."""
        digest = hmac.new(self._secret.encode(), f"client:{room}".encode(), hashlib.sha256)
        return f"p_{digest.hexdigest()[:16]}"

    def issue(
        self,
        *,
        room: str,
        role: str,
        name: str,
        ttl: int,
        sub: str | None = None,
        org: str | None = None,
        grants: Iterable[str] | None = None,
        lobby: bool = False,
        invite: bool = False,
        org_type: str | None = None,
        consent: bool = False,
        client_present: bool = False,
    ) -> tuple[str, TokenClaims]:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        granted = frozenset(DEFAULT_GRANTS[role] if grants is None else grants)
        if not granted <= GRANTS:
            raise ValueError(f"unknown grants {sorted(granted - GRANTS)}")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        now = int(self._now())
        claims = TokenClaims(
            room=room,
            sub=sub or new_id("p"),
            role=role,
            name=name,
            org=org,
            grants=granted,
            lobby=lobby,
            exp=now + ttl,
            nbf=now,
            iat=now,
            jti=secrets.token_urlsafe(16),
            invite=invite,
            org_type=org_type,
            consent=consent,
            client_present=client_present,
        )
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": claims.sub,
            "room": claims.room,
            "role": claims.role,
            "name": claims.name,
            "grants": sorted(claims.grants),
            "lobby": claims.lobby,
            "consent": claims.consent,
            "exp": claims.exp,
            "nbf": claims.nbf,
            "iat": claims.iat,
            "jti": claims.jti,
        }
        if org is not None:
            payload["org"] = org
        if org_type is not None:
            payload["org_type"] = org_type
        if invite:
            payload["invite"] = True
        if client_present:
            payload["client_present"] = True
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM), claims

    # -- verifying ---------------------------------------------------------------------

    def verify(self, token: object, *, room: str | None = None) -> TokenClaims:
        """Check signature, algorithm, times, audience, issuer, claim types and room.

        Raises ``TokenError`` with the code of the first failure. Revocation is separate
        (``authenticate``) because it needs the store.
        """
        if token is None or token == "":
            raise _bad("token_missing", "No token was given.")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise _bad("token_malformed", "The token is not a JWT.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            # pyjwt decodes the signature segment here too: a truncated signature is
            # still a signature problem (docs/protocol.md, verification order).
            if _only_signature_broken(token):
                raise _bad("token_bad_signature", "The token signature is wrong.") from None
            raise _bad("token_malformed", "The token is not a JWT.") from None
        # Checked before decoding so that `alg: none` and asymmetric algorithms (the
        # classic key-confusion attacks) are named as what they are.
        if not isinstance(header.get("alg"), str):
            raise _bad("token_malformed", "The token header names no algorithm.")
        if header["alg"] != ALGORITHM:
            raise _bad("token_bad_algorithm", f"Only {ALGORITHM} tokens are accepted.")
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS), "verify_sub": False},
            )
        except jwt.InvalidSignatureError:
            raise _bad("token_bad_signature", "The token signature is wrong.") from None
        except jwt.InvalidAlgorithmError:
            raise _bad("token_bad_algorithm", f"Only {ALGORITHM} tokens are accepted.") from None
        except jwt.ExpiredSignatureError:
            raise _bad("token_expired", "The link has expired.") from None
        except jwt.ImmatureSignatureError:
            raise _bad("token_not_yet_valid", "The link is not valid yet.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _bad(
                "token_claims_missing", f"The token lacks the {exc.claim!r} claim."
            ) from None
        except jwt.InvalidAudienceError:
            raise _bad("token_wrong_audience", "The token is for another audience.") from None
        except jwt.InvalidIssuerError:
            raise _bad("token_wrong_issuer", "The token has another issuer.") from None
        except jwt.DecodeError:
            # Header and payload were fine (the header was read above): what failed to
            # decode is the signature segment, e.g. a truncated one.
            if _only_signature_broken(token):
                raise _bad("token_bad_signature", "The token signature is wrong.") from None
            raise _bad("token_malformed", "The token is not valid.") from None
        except jwt.InvalidTokenError:
            raise _bad("token_malformed", "The token is not valid.") from None
        claims = self._claims(payload)
        if room is not None and claims.room != room:
            raise _bad("token_wrong_room", "The token is for another session.")
        return claims

    async def authenticate(
        self, token: object, *, room: str | None = None, consume_invite: bool = False
    ) -> TokenClaims:
        """``verify`` plus revocation: ended room, revoked ``jti``, used invite.

        ``consume_invite`` is set by a join: a single-use token is recorded then, so the
        same invite link is refused on a second join even on another node.
        """
        claims = self.verify(token, room=room)
        if await self._store.is_room_closed(claims.room):
            raise RoomClosed("room_closed", "This session has ended.")
        if await self._store.is_revoked(claims.jti):
            raise _bad("token_revoked", "This link was withdrawn.")
        if claims.iat < await self._store.epoch() - EPOCH_SLACK_SECONDS:
            # The store lost what it knew (see ``StateStore.epoch``): this token may be a
            # removed partner's, and nobody can tell any more.
            raise _bad("token_revoked", "This link is older than the server's records.")
        if claims.invite and await self._store.is_invite_revoked(claims.jti):
            raise _bad("invite_revoked", "This invitation was withdrawn.")
        if consume_invite:
            await self.consume_invite(claims)
        return claims

    async def consume_invite(self, claims: TokenClaims) -> None:
        """Record the use of a single-use token; ``invite_used`` if it was used before."""
        if claims.single_use and not await self._store.use_invite(claims.jti, claims.exp):
            raise _bad("invite_used", "This invitation was already used.")

    async def revoke(self, claims: TokenClaims) -> None:
        await self._store.revoke_jti(claims.jti, claims.exp)

    @staticmethod
    def _claims(p: dict[str, Any]) -> TokenClaims:
        def text(key: str, limit: int, *, pattern: re.Pattern[str] | None = None) -> str:
            value = p.get(key)
            if not isinstance(value, str) or len(value) > limit:
                raise _bad("token_malformed", f"The {key!r} claim is not valid.")
            if pattern is not None and not pattern.match(value):
                raise _bad("token_malformed", f"The {key!r} claim is not valid.")
            return value

        def integer(key: str) -> int:
            value = p.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _bad("token_malformed", f"The {key!r} claim is not a time.")
            return int(value)

        role = text("role", 16)
        if role not in ROLES:
            raise _bad("token_malformed", "The 'role' claim is not valid.")
        raw_grants = p.get("grants", sorted(DEFAULT_GRANTS[role]))
        if not isinstance(raw_grants, list) or not all(isinstance(g, str) for g in raw_grants):
            raise _bad("token_malformed", "The 'grants' claim is not valid.")
        grants = frozenset(raw_grants)
        if not grants <= GRANTS:
            raise _bad("token_malformed", "The 'grants' claim is not valid.")
        org = p.get("org")
        if org is not None and (not isinstance(org, str) or len(org) > 120):
            raise _bad("token_malformed", "The 'org' claim is not valid.")
        lobby = p.get("lobby", False)
        invite = p.get("invite", False)
        consent = p.get("consent", False)
        present = p.get("client_present", False)
        if not all(isinstance(v, bool) for v in (lobby, invite, consent, present)):
            raise _bad("token_malformed", "A boolean claim is not valid.")
        org_type = p.get("org_type")
        if org_type is not None and (not isinstance(org_type, str) or len(org_type) > 40):
            raise _bad("token_malformed", "The 'org_type' claim is not valid.")
        name = p.get("name", "")
        if not isinstance(name, str) or len(name) > 120:
            raise _bad("token_malformed", "The 'name' claim is not valid.")
        return TokenClaims(
            room=text("room", 64, pattern=_ID_RE),
            sub=text("sub", 64, pattern=_ID_RE),
            role=role,
            name=name,
            org=org,
            grants=grants,
            lobby=lobby,
            exp=integer("exp"),
            nbf=integer("nbf"),
            iat=integer("iat"),
            jti=text("jti", 128),
            invite=invite,
            org_type=org_type,
            consent=consent,
            client_present=present,
        )
