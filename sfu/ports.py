"""Where the SFU's ICE connections get their sockets: one shared port, a range, or
ephemeral ports, and the address they announce.

aioice binds one ephemeral UDP port per connection and interface and has no option to
choose; an operator behind a firewall needs one known port (``ROUNDTABLE_MEDIA_PORT``,
:mod:`sfu.udpmux`) or a known range (``ROUNDTABLE_MEDIA_PORTS``), and a node behind 1:1
NAT must announce its public address (``ROUNDTABLE_ANNOUNCED_IP``) in its candidates.
This module replaces aioice's ``Connection.get_component_candidates`` for the
connections the SFU marks with :func:`gather_on`; every other connection in the process
(the test suite's and the bench's own peers) gathers as aioice does. The SFU gathers
host candidates only: it has no STUN or TURN servers of its own (``sfu.peer``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from dataclasses import dataclass

import aioice.ice
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCPeerConnection

from .udpmux import RCVBUF, UdpMux

log = logging.getLogger(__name__)

_PORTS = "_roundtable_ports"  # the MediaPorts an aioice Connection gathers with
_original = aioice.ice.Connection.get_component_candidates


@dataclass(frozen=True, slots=True)
class MediaPorts:
    """How the SFU's connections bind: ``mux`` (one shared port) wins over
    ``port_range`` (first free port of the range per connection); neither: ephemeral.
    ``announced_ip`` replaces the bound address in the candidates offered."""

    mux: UdpMux | None = None
    port_range: tuple[int, int] | None = None
    announced_ip: str | None = None

    @property
    def custom(self) -> bool:
        return self.mux is not None or self.port_range is not None or bool(self.announced_ip)


def gather_on(pc: RTCPeerConnection, ports: MediaPorts | None) -> None:
    """Make ``pc``'s ICE connections gather with ``ports``; call before
    ``setLocalDescription`` (which gathers). Connections that already gathered keep
    their sockets."""
    if ports is None or not ports.custom:
        return
    install()
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        if dtls is not None:
            setattr(dtls.transport._connection, _PORTS, ports)


def install() -> None:
    """Route aioice's host-candidate gathering through :func:`_gather` (idempotent)."""
    if aioice.ice.Connection.get_component_candidates is not _gather:
        aioice.ice.Connection.get_component_candidates = _gather


def check() -> list[str]:
    """Names of aioice internals this module relies on that are missing."""
    problems = []
    names = _original.__code__.co_names
    if "_protocols" not in names or "local_candidate" not in names:
        problems.append("aioice Connection.get_component_candidates host protocols")
    if not callable(getattr(aioice.ice.StunProtocol, "connection_made", None)):
        problems.append("aioice StunProtocol")
    return problems


async def _gather(
    self: aioice.Connection,
    component: int,
    addresses: list[str],
    timeout: int = 5,  # noqa: ASYNC109 (aioice's signature)
) -> list[Candidate]:
    ports: MediaPorts | None = getattr(self, _PORTS, None)
    if ports is None:
        return await _original(self, component, addresses, timeout)
    candidates = []
    for address in addresses:
        try:
            if ports.mux is not None:
                shared = await ports.mux.socket_for(address)
                if self._closing or self._closed:
                    break  # closed while the socket opened: attach nothing
                protocol = shared.attach(self, component)
                port = shared.port
            else:
                protocol, port = await _bind(self, address, ports.port_range)
                if self._closing or self._closed:
                    await protocol.close()
                    break
        except OSError as exc:
            log.warning("cannot bind media on %s: %s", address, exc.strerror or exc)
            continue
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", address),
            component=component,
            transport="udp",
            priority=candidate_priority(component, "host"),
            host=ports.announced_ip or address,
            port=port,
            type="host",
        )
        self._protocols.append(protocol)
        candidates.append(protocol.local_candidate)
    return candidates


async def _bind(
    connection: aioice.Connection, address: str, port_range: tuple[int, int] | None
) -> tuple[aioice.ice.StunProtocol, int]:
    """A socket of the connection's own: the first free port of the range (tried from
    a random start, so that nodes and restarts spread), or an ephemeral one."""
    loop = asyncio.get_running_loop()
    if port_range is None:
        candidates: list[int] = [0]
    else:
        low, high = port_range
        start = random.randint(low, high)
        candidates = list(range(start, high + 1)) + list(range(low, start))
    error: OSError | None = None
    for port in candidates:
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: aioice.ice.StunProtocol(connection), local_addr=(address, port)
            )
        except OSError as exc:
            error = exc
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF // 4)
        return protocol, transport.get_extra_info("sockname")[1]
    raise error or OSError("no free media port")
