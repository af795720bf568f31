"""One UDP port for every peer connection of a node (``ROUNDTABLE_MEDIA_PORT``).

Firewalls of agencies and carriers let an operator open one port, not a range of
ephemeral ones. Like LiveKit's UDP mux, mediasoup's WebRtcServer and Jitsi's port 10000,
every ICE connection of the SFU shares one socket per media address, and datagrams are
told apart:

1. by remote address, in C: :class:`sfu._fastpath.Reader` in routed mode looks the
   sender up in :attr:`MuxSocket.routes` and handles the datagram with the Reader of the
   connection that owns that address (SRTP decrypted with that connection's session,
   everything else to that connection's ``StunProtocol``). The per-packet cost is one
   dict lookup;
2. an address with no route yet: a STUN binding request names its connection by the
   USERNAME attribute (``<our ufrag>:<their ufrag>``); once its MESSAGE-INTEGRITY
   checks out with that connection's password, the address is routed to it. STUN
   responses are matched by transaction id. Anything else from an unknown address is
   dropped.

Each connection gets a real aioice ``StunProtocol`` whose transport is a
:class:`MuxTransport`: a view of the shared socket that sends to any address and
closes only the connection's routes. The C send path (``sfu._fastpath.Leg``) sends on
the shared socket itself, with the same checks as on a socket of its own.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from typing import Any

import aioice
from aioice import stun

from . import _fastpath

log = logging.getLogger(__name__)

# aioice's own receive buffer for its sockets; a shared socket carries every
# connection's media, so it gets more.
RCVBUF = 4 * 1024 * 1024
SNDBUF = 4 * 1024 * 1024

_READER = "_roundtable_reader"  # as in sfu.aiortc_hooks: the C Reader of a protocol


class MediaPortError(OSError):
    """The shared media port could not be bound; ``strerror`` says which and why."""


class MuxTransport(asyncio.DatagramTransport):
    """One connection's view of a shared socket (what its ``StunProtocol`` holds)."""

    def __init__(self, owner: MuxSocket, protocol: aioice.ice.StunProtocol) -> None:
        super().__init__()
        self._owner = owner
        self._protocol = protocol
        self._closing = False

    # What sfu.aiortc_hooks.fast_route and the C send path read of an asyncio transport.
    @property
    def _sock(self) -> socket.socket | None:
        return None if self._closing else self._owner.sock

    @property
    def _buffer_size(self) -> int:
        return self._owner.transport._buffer_size  # type: ignore[attr-defined]

    @property
    def socket_transport(self) -> asyncio.DatagramTransport:
        """asyncio's own transport on the shared socket, where every connection's
        queued writes wait. The C send path checks its ``_buffer_size`` before each
        packet: a plain attribute there, where this view's is a Python property call
        per packet and leg (sfu.aiortc_hooks.fast_route)."""
        return self._owner.transport

    def get_write_buffer_size(self) -> int:
        return self._owner.transport.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._owner.transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._owner.transport.is_closing()

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self._closing:
            self._owner.transport.sendto(data, addr)

    def ufrag_changed(self, old: str) -> None:
        """The connection restarted ICE with a new local ufrag (``sfu.ice``)."""
        self._owner.rekey(self._protocol, old)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._owner.forget(self._protocol)
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


class SocketTransport(asyncio.DatagramTransport):
    """The shared socket's own writer, on any event loop: asyncio's or uvloop's.

    The C Reader reads the socket (``loop.add_reader``, the public API: no loop transport
    owns the fd). Writes from Python (STUN, DTLS, RTCP, and what the C send path hands
    back when the socket would block) go straight out, or wait in order in ``_buffer``
    until the socket is writable again; the C send path (``sfu/fastpath/leg.c``) reads
    ``_buffer_size``, a plain attribute, before each send so that it never overtakes
    them. asyncio's own datagram transport did this on its selector loop, but uvloop's
    reads the socket itself (libuv) and exposes neither the socket nor the buffer."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: MuxSocket
    ) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname()})
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._buffer: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._buffer_size = 0  # bytes waiting; read by the C send path before each send

    def get_write_buffer_size(self) -> int:
        return self._buffer_size

    def is_closing(self) -> bool:
        return self._sock is None

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._sock is None:
            return
        if not self._buffer:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._drain)
            except OSError as exc:  # ICMP errors of one remote address
                self._protocol.error_received(exc)
                return
        data = bytes(data)
        self._buffer.append((data, addr))
        self._buffer_size += len(data)

    def _drain(self) -> None:
        while self._buffer and self._sock is not None:
            data, addr = self._buffer[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            self._buffer.popleft()
            self._buffer_size -= len(data)
        self._loop.remove_writer(self._fd)

    def close(self) -> None:
        if self._sock is None:
            return
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._buffer.clear()
        self._buffer_size = 0
        self._sock.close()
        self._sock = None

    def abort(self) -> None:
        self.close()


class MuxSocket(asyncio.DatagramProtocol):
    """The shared socket on one media address and the routes to its connections.

    ``coalesce``: read coalescing window in seconds (0: off). After the event loop
    wakes the reader for this socket, the socket is left unwatched for that long and
    what arrived meanwhile is read in one batch (``sfu._fastpath.Reader.coalesce``):
    one wake-up per window instead of one per datagram or two, for at most about one
    window more of forwarding delay (the first datagram after a quiet spell is read at
    once)."""

    def __init__(self, host: str, port: int, coalesce: float = 0.0) -> None:
        self.host = host
        self.port = port
        self.coalesce = coalesce
        self.reader: _fastpath.Reader | None = None
        self.sock: socket.socket | None = None
        self.transport: asyncio.DatagramTransport = None  # type: ignore[assignment]
        # addr_key(host, port) -> the C Reader of the connection that owns the address
        self.routes: dict[Any, _fastpath.Reader] = {}
        self._by_ufrag: dict[str, aioice.ice.StunProtocol] = {}
        self._protocols: set[aioice.ice.StunProtocol] = set()
        self.unrouted = 0  # datagrams dropped: unknown address, not a valid check

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            sock.bind((self.host, self.port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise MediaPortError(
                exc.errno,
                f"cannot bind the media port udp {self.host}:{self.port}: "
                f"{exc.strerror or exc} (choose another with ROUNDTABLE_MEDIA_PORT)",
            ) from exc
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.transport = SocketTransport(loop, sock, self)
        reader = _fastpath.Reader(sock.fileno(), self._unrouted, self.error_received)
        reader.set_routes(self.routes)
        loop.add_reader(sock.fileno(), reader)  # close() removes it
        if self.coalesce > 0:
            reader.coalesce(loop, self.coalesce)
        self.reader = reader

    def close(self) -> None:
        for protocol in list(self._protocols):
            protocol.transport.close()
        if self.reader is not None:
            self.reader.stop()  # no poll after the socket is gone
        if self.transport is not None:
            self.transport.close()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for one remote address must not disturb the others.
        log.debug("media socket %s:%s: %s", self.host, self.port, exc)

    # -- connections ------------------------------------------------------------------

    def attach(self, connection: aioice.Connection, component: int) -> aioice.ice.StunProtocol:
        """A protocol on this socket for ``connection`` (its host candidate)."""
        protocol = aioice.ice.StunProtocol(connection)
        protocol.connection_made(MuxTransport(self, protocol))
        reader = _fastpath.Reader(
            -1,
            lambda data, addr: self._received(protocol, data, addr),
            protocol.error_received,
        )
        setattr(protocol, _READER, reader)
        self._protocols.add(protocol)
        self._by_ufrag[connection.local_username] = protocol
        return protocol

    def forget(self, protocol: aioice.ice.StunProtocol) -> None:
        self._protocols.discard(protocol)
        ufrag = protocol.receiver.local_username
        if self._by_ufrag.get(ufrag) is protocol:
            del self._by_ufrag[ufrag]
        reader = getattr(protocol, _READER, None)
        for key in [k for k, r in self.routes.items() if r is reader]:
            del self.routes[key]

    def rekey(self, protocol: aioice.ice.StunProtocol, old: str) -> None:
        if self._by_ufrag.get(old) is protocol:
            del self._by_ufrag[old]
        self._by_ufrag[protocol.receiver.local_username] = protocol

    def _route(self, protocol: aioice.ice.StunProtocol, addr: tuple[str, int]) -> None:
        # The latest authentic check decides: a remote port that a closed connection
        # used and a new one reuses belongs to the new one.
        self.routes[_fastpath.addr_key(addr[0], addr[1])] = getattr(protocol, _READER)

    # -- dispatch (STUN and DTLS only; SRTP of routed addresses stays in C) -----------

    def _received(self, protocol: aioice.ice.StunProtocol, data: bytes, addr: Any) -> None:
        """A datagram from an address routed to ``protocol``."""
        if _is_stun(data) and data[0] == 0 and data[1] == 1:
            # A binding request for another connection (a remote port reused): re-route.
            ufrag = _local_ufrag(data)
            if ufrag is not None and ufrag != protocol.receiver.local_username:
                self._unrouted(data, addr)
                return
        protocol.datagram_received(data, addr)

    def _unrouted(self, data: bytes, addr: Any) -> None:
        """A datagram from an address with no route: only a valid STUN message may
        create one."""
        addr = (addr[0], addr[1])
        if not _is_stun(data):
            self.unrouted += 1
            return
        try:
            message = stun.parse_message(data)
        except ValueError:
            self.unrouted += 1
            return
        if message.message_class == stun.Class.REQUEST:
            username = message.attributes.get("USERNAME")
            protocol = self._by_ufrag.get(username.split(":", 1)[0]) if username else None
            if protocol is None:
                self.unrouted += 1
                return
            if not message.check_message_integrity(protocol.receiver.local_password.encode("utf8")):
                self.unrouted += 1
                return
            self._route(protocol, addr)
            protocol.datagram_received(data, addr)
            return
        for protocol in self._protocols:
            if message.transaction_id in protocol.transactions:
                protocol.datagram_received(data, addr)
                return
        self.unrouted += 1


def _is_stun(data: bytes) -> bool:
    # RFC 5389: the first two bits are zero and the magic cookie follows the length.
    return len(data) >= 20 and data[0] < 2 and data[4:8] == b"\x21\x12\xa4\x42"


def _local_ufrag(data: bytes) -> str | None:
    try:
        username = stun.parse_message(data).attributes.get("USERNAME")
    except ValueError:
        return None
    return username.split(":", 1)[0] if username else None


class UdpMux:
    """The shared sockets of one node, one per media address, opened on first use
    (``server/`` opens them at start, so that a port in use fails the start); port 0
    binds one ephemeral port, shared all the same. ``coalesce``: see :class:`MuxSocket`."""

    def __init__(self, port: int, coalesce: float = 0.0) -> None:
        self.port = port
        self.coalesce = coalesce
        self._sockets: dict[str, MuxSocket] = {}
        self._lock = asyncio.Lock()

    async def socket_for(self, host: str) -> MuxSocket:
        async with self._lock:
            found = self._sockets.get(host)
            if found is None:
                found = MuxSocket(host, self.port, self.coalesce)
                await found.open()
                self._sockets[host] = found
                if not self.port:  # ephemeral: every address on the port the first got
                    self.port = found.port
            return found

    @property
    def sockets(self) -> list[MuxSocket]:
        return list(self._sockets.values())

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
