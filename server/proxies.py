"""The client's address behind reverse proxies (``ROUNDTABLE_TRUSTED_PROXIES``).

A request whose TCP peer is one of the trusted proxies has its ``X-Forwarded-For`` (or,
without it, RFC 7239 ``Forwarded``) read by aiohttp-remotes: the client is the right-most
address that is not itself a trusted proxy, and scheme and host follow the same hop.
aiohttp's ``request.remote`` then names the client for everything downstream: the
Socket.IO join rate limit and the cap on unauthenticated sockets read nothing else
(``signaling.transport.client_address``). From any other peer the headers are ignored:
a client cannot name itself someone else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import hdrs, web
from aiohttp_remotes import XForwardedFiltered

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, networks: Sequence[str]) -> None:
        self._networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._x_forwarded = XForwardedFiltered(set(self._networks))

    def trusts(self, address: str | None) -> bool:
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 proxies as ::ffff:a.b.c.d
        return any(ip in net for net in self._networks)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if not peer or not self.trusts(peer[0]):
            return await handler(request)
        if hdrs.X_FORWARDED_FOR in request.headers:
            return await self._x_forwarded.middleware(request, handler)
        if hdrs.FORWARDED in request.headers:
            return await handler(self._from_forwarded(request))
        return await handler(request)

    def _from_forwarded(self, request: web.Request) -> web.Request:
        # aiohttp parses Forwarded (request.forwarded, nearest proxy last); walk it the way
        # XForwardedFiltered walks X-Forwarded-For.
        elems = list(reversed(request.forwarded))
        chosen = None
        for elem in elems:
            chosen = elem
            if not self.trusts(_strip_port(elem.get("for"))):
                break
        if chosen is None:
            return request
        overrides: dict[str, str] = {}
        client = _strip_port(chosen.get("for"))
        if client:
            try:
                overrides["remote"] = str(ipaddress.ip_address(client))
            except ValueError:
                pass  # an obfuscated identifier ("_hidden", "unknown"): keep the proxy's
        if chosen.get("proto"):
            overrides["scheme"] = chosen["proto"]
        if chosen.get("host"):
            overrides["host"] = chosen["host"]
        return request.clone(**overrides)  # type: ignore[arg-type]


def _strip_port(node: str | None) -> str | None:
    """``for=`` values are an address, ``"[v6]:port"`` or ``v4:port`` (RFC 7239 §6)."""
    if not node:
        return None
    if node.startswith("["):
        return node[1:].split("]", 1)[0]
    if node.count(":") == 1:
        return node.split(":", 1)[0]
    return node
