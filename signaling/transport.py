"""python-socketio hardened against hostile clients, below the level of our events.

Three things the library does on its own that an attacker can use, and what we do:
- **Reserved event names.** A client emitting ``connect``, ``disconnect`` or ``*`` as an
  ordinary event reached our own connect/disconnect handlers (python-socketio looks
  handlers up by name first). Every name that is not a plain client event is renamed
  before dispatch, so it reaches the catch-all handler and is refused ``unknown_event``.
- **Deep JSON.** A 5,000-deep nested array made the JSON decoder raise ``RecursionError``
  inside the library (a traceback per packet). Nesting is bounded before decoding; a
  packet that does not decode becomes an ``invalid_payload`` refusal.
- **Sockets that never authenticate.** An Engine.IO socket that never sends the
  namespace CONNECT held a descriptor forever. ``Gate`` caps them per client address
  and closes them after a few seconds.

The overrides touch methods of the exactly pinned python-socketio (see pyproject.toml);
tests/test_hostile_input.py exercises each one against the real library.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import socketio
from socketio import packet as sio_packet

log = logging.getLogger(__name__)

# Names python-socketio (or its clients) give a meaning of their own.
RESERVED_EVENTS = frozenset(
    {"connect", "disconnect", "connect_error", "__disconnect_final", "*", "message"}
)
# What a reserved, non-string or undecodable event name is renamed to: no handler has it,
# so the catch-all refuses it. NUL cannot be part of a name a handler is registered for.
REFUSED_EVENT = "\x00refused"
UNDECODABLE_EVENT = "\x00undecodable"
MAX_JSON_DEPTH = 32

_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def too_deep(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Does this JSON nest deeper than ``limit``? Cheap for what clients normally send."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    # Our events nest three levels; brackets inside strings (Firefox's msid GUIDs) are
    # rare. Only text with many brackets is scanned, skipping strings, in C (re).
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > limit:
                return True
        elif token in ("]", "}"):
            depth -= 1
    return False


class BoundedJson:
    """The ``json`` module python-socketio and python-engineio are given: nesting bounded."""

    @staticmethod
    def dumps(*args: Any, **kwargs: Any) -> str:
        return json.dumps(*args, **kwargs)

    @staticmethod
    def loads(text: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if too_deep(text):
            raise ValueError("JSON nested too deeply")
        return json.loads(text, *args, **kwargs)


class SafePacket(sio_packet.Packet):
    """A Socket.IO packet that does not decode is an event no handler has."""

    json = BoundedJson

    def decode(self, encoded_packet: Any) -> int:
        try:
            return super().decode(encoded_packet)
        except (ValueError, TypeError, RecursionError):
            self.data = [UNDECODABLE_EVENT]
            self.attachment_count = 0
            return 0


@dataclass(slots=True)
class Gate:
    """Engine.IO sockets that have not (yet) authenticated: per address, with a deadline."""

    per_address: int
    seconds: float
    now: Callable[[], float] = time.monotonic
    pending: dict[str, tuple[str, float]] = field(default_factory=dict)
    by_address: dict[str, int] = field(default_factory=dict)

    def admit(self, eio_sid: str, address: str) -> bool:
        if self.by_address.get(address, 0) >= self.per_address:
            return False
        self.pending[eio_sid] = (address, self.now() + self.seconds)
        self.by_address[address] = self.by_address.get(address, 0) + 1
        return True

    def authenticated(self, eio_sid: str) -> None:
        self.forget(eio_sid)

    def forget(self, eio_sid: str) -> None:
        entry = self.pending.pop(eio_sid, None)
        if entry is None:
            return
        left = self.by_address[entry[0]] - 1
        if left:
            self.by_address[entry[0]] = left
        else:
            del self.by_address[entry[0]]

    def overdue(self) -> list[str]:
        t = self.now()
        return [sid for sid, (_, deadline) in self.pending.items() if deadline <= t]


EIO_SID = "roundtable.eio_sid"


def client_address(environ: dict[str, Any]) -> str:
    """The peer as the transport (or a trusted proxy, via aiohttp) reports it.

    Never anything a client can put in a payload: environ is built by engine.io from the
    HTTP request, and only ``request.remote`` is read from it.
    """
    request = environ.get("aiohttp.request")
    return (getattr(request, "remote", None) or "") if request is not None else ""


def same_origin(origin: str | None, environ: dict[str, Any]) -> bool:
    """engine.io's same-origin check (Origin must be where the page was served from),
    extended to HTTPS that aiohttp serves itself: engine.io's aiohttp driver assumes http
    unless ``X-Forwarded-Proto`` says otherwise. Like engine.io, the forwarded headers
    count here whoever sent them: they cannot be set by a browser, and only browsers are
    what an Origin check keeps out."""
    host = environ.get("HTTP_HOST", "")
    allowed = {f"{environ.get('wsgi.url_scheme', 'http')}://{host}"}
    request = environ.get("aiohttp.request")
    if request is not None:
        allowed.add(f"{request.scheme}://{request.host}")
    if "HTTP_X_FORWARDED_PROTO" in environ or "HTTP_X_FORWARDED_HOST" in environ:
        proto = environ.get("HTTP_X_FORWARDED_PROTO", "http").split(",")[0].strip()
        fwd_host = environ.get("HTTP_X_FORWARDED_HOST", host).split(",")[0].strip()
        allowed.add(f"{proto}://{fwd_host}")
    return origin in allowed


class HardenedServer(socketio.AsyncServer):
    """``socketio.AsyncServer`` with the three defences above."""

    def __init__(
        self,
        *,
        gate: Gate,
        on_limit: Callable[[str], None] = lambda limit: None,
        sweep_seconds: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(json=BoundedJson, **kwargs)
        self.packet_class = SafePacket
        self.gate = gate
        self._on_limit = on_limit
        self._sweep_seconds = sweep_seconds
        self._sweeper: asyncio.Task[None] | None = None

    async def _handle_event(self, eio_sid: str, namespace: str, id: Any, data: Any) -> Any:
        if not isinstance(data, list) or not data:
            data = [REFUSED_EVENT]
        elif not isinstance(data[0], str) or data[0] in RESERVED_EVENTS:
            data = [REFUSED_EVENT, *data[1:]]
        return await super()._handle_event(eio_sid, namespace, id, data)

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        if not self.gate.admit(eio_sid, client_address(environ)):
            # engine.io answers 401 and forgets the socket at once.
            self._on_limit("unauthenticated_per_address")
            return False
        environ[EIO_SID] = eio_sid
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> Any:
        self.gate.forget(eio_sid)
        return await super()._handle_eio_disconnect(eio_sid, reason)

    async def _sweep(self) -> None:
        """Close sockets that did not authenticate in time; ends when none is left."""
        while self.gate.pending:
            await asyncio.sleep(self._sweep_seconds)
            for eio_sid in self.gate.overdue():
                self.gate.forget(eio_sid)
                self._on_limit("unauthenticated_timeout")
                await self.close_engine_socket(eio_sid)

    def pong_overdue(self, sid: str) -> float:
        """Seconds the client of Socket.IO connection ``sid`` owes us a pong (0: none
        owed). engine.io sets ``last_ping`` when it sends a ping and clears it on the pong."""
        eio_sid = self.manager.eio_sid_from_sid(sid, "/")
        eio_socket = self.eio.sockets.get(eio_sid) if eio_sid else None
        last_ping = getattr(eio_socket, "last_ping", None)
        return max(0.0, time.time() - last_ping) if last_ping else 0.0

    async def close_lost(self, sid: str) -> None:
        """Close connection ``sid`` as engine.io does when its client stopped answering
        pings (reason ``PING_TIMEOUT``: the participant is 'reconnecting', not gone)."""
        eio_sid = self.manager.eio_sid_from_sid(sid, "/")
        if eio_sid:
            await self.close_engine_socket(eio_sid, reason=self.eio.reason.PING_TIMEOUT)

    async def close_engine_socket(self, eio_sid: str, reason: Any = None) -> None:
        """Close one Engine.IO socket without waiting for a client that may be gone."""
        eio_socket = self.eio.sockets.pop(eio_sid, None)
        if eio_socket is None:
            return
        try:
            await eio_socket.close(wait=False, reason=reason)
        except Exception:
            log.debug("closing engine.io socket %s failed", eio_sid, exc_info=True)
        # engine.io's own "writer, stop" marker: the websocket closes now.
        eio_socket.queue.put_nowait(None)

    async def stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
