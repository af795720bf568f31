"""One UDP port serves every peer connection of a node (sfu/udpmux.py, sfu/ports.py)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest
import uvloop
from aioice import stun

from sfu import aiortc_hooks as hooks
from sfu.ports import MediaPorts
from sfu.router import MediaConfig
from sfu.udpmux import MuxSocket, UdpMux
from tests.media import Room, wait_for
from tests.netns import veth_namespace
from tests.ports import free_udp_port

pytestmark = pytest.mark.slow

MEDIA_HOST = os.environ.get("ROUNDTABLE_MEDIA_HOST", "127.0.0.1")
TC = "/usr/sbin/tc" if os.path.exists("/usr/sbin/tc") else "tc"
COLOURS = {"a": (220, 30, 30), "b": (30, 200, 30), "c": (30, 30, 220), "d": (200, 200, 30)}


def nominated(pc) -> list:
    """The nominated ICE pairs of a peer connection (aioice's, one per transport)."""
    pairs = []
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        if dtls is not None:
            pairs.extend(dtls.transport._connection._nominated.values())
    return pairs


def everyone_decodes(room: Room) -> bool:
    return all(
        room.peers[me].decoded(other, kind) >= 5
        for me in room.peers
        for other in room.peers
        if other != me
        for kind in ("audio", "video")
    )


async def test_two_rooms_share_one_server_port() -> None:
    await _two_rooms_share_one_port(coalesce=0.0)


async def test_two_rooms_share_one_server_port_with_read_coalescing() -> None:
    """ROUNDTABLE_READ_COALESCE_MS=1: the shared socket is read by the window's polls."""
    await _two_rooms_share_one_port(coalesce=0.001)


def test_two_rooms_share_one_server_port_on_uvloop() -> None:
    """The server's default loop (server.cli): the shared socket's reader is the C Reader
    and the legs send in C there too, with the socket's own transport as the writer."""

    async def on_uvloop() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        await _two_rooms_share_one_port(coalesce=0.0)

    uvloop.run(on_uvloop())


async def _two_rooms_share_one_port(coalesce: float) -> None:
    port = free_udp_port()
    mux = UdpMux(port, coalesce=coalesce)
    config = MediaConfig(media_host=MEDIA_HOST, ports=MediaPorts(mux=mux))
    rooms = [Room("room-1", config), Room("room-2", config)]
    try:
        for pid in ("a", "b"):
            await rooms[0].join(pid, COLOURS[pid])
        for pid in ("c", "d"):
            await rooms[1].join(pid, COLOURS[pid])
        await wait_for(lambda: all(everyone_decodes(r) for r in rooms), timeout=30)

        # Every connection of every participant, both directions, goes to that one port:
        # the clients' nominated pairs end there, and the SFU's start there.
        clients = [pc for r in rooms for p in r.peers.values() for pc in (p.pub, p.sub)]
        assert len(clients) == 8
        for pc in clients:
            pairs = nominated(pc)
            assert pairs and {pair.remote_addr[1] for pair in pairs} == {port}
        servers = [
            pc
            for r in rooms
            for pc in [p.pc for p in r.router.publishers.values()]
            + [s.pc for s in r.router.subscribers.values()]
        ]
        assert len(servers) == 8
        for pc in servers:
            pairs = nominated(pc)
            assert pairs and {pair.local_addr[1] for pair in pairs} == {port}
        # Each remote address is routed to exactly one connection, in C.
        (shared,) = mux.sockets
        assert len(shared.routes) >= 8
        # ... where SRTP is decrypted with that connection's session.
        readers = set(shared.routes.values())
        assert all(r.rtp for r in readers)
        assert sum(r.rx[0] for r in readers) > 100
        assert shared.reader is not None
        assert (shared.reader.polls > 10) if coalesce else (shared.reader.polls == 0)
        # The C send path of every leg sends on the shared socket and checks the shared
        # socket's own asyncio transport for queued writes (a plain attribute, no Python
        # property call per packet).
        for r in rooms:
            for sub in r.router.subscribers.values():
                for leg in sub.legs.values():
                    route = hooks.fast_route(leg.sender.transport)
                    assert route is not None and route[3] is shared.sock
                    assert route[-1] is shared.transport
                    assert "_buffer_size" in vars(route[-1])
        # Media keeps flowing while a stranger sprays the port with junk and forged checks.
        before = {
            pid: rooms[1].peers[pid].decoded("c" if pid == "d" else "d", "video")
            for pid in ("c", "d")
        }
        await _spray(port)
        await wait_for(
            lambda: all(
                rooms[1].peers[pid].decoded("c" if pid == "d" else "d", "video") > before[pid] + 10
                for pid in ("c", "d")
            ),
            timeout=10,
        )
        assert shared.unrouted >= 3
    finally:
        for room in rooms:
            await room.close()
        # Nothing of the closed connections stays routed.
        assert all(not s.routes for s in mux.sockets)
        mux.close()


async def _spray(port: int) -> None:
    """Datagrams an attacker could send: junk, RTP-looking bytes, and a binding request
    with a USERNAME it could have guessed but no valid MESSAGE-INTEGRITY."""
    junk = os.urandom(200)
    rtp_like = bytes([0x80, 96]) + os.urandom(198)
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = "abcd:efgh"
    request.add_message_integrity(b"not-the-password")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for data in (junk, rtp_like, bytes(request)):
            s.sendto(data, (MEDIA_HOST, port))
    await asyncio.sleep(0.2)


async def test_port_range_binds_within_range() -> None:
    low = free_udp_port()
    config = MediaConfig(media_host=MEDIA_HOST, ports=MediaPorts(port_range=(low, low + 20)))
    room = Room("room-r", config)
    try:
        for pid in ("a", "b"):
            await room.join(pid, COLOURS[pid])
        await wait_for(lambda: everyone_decodes(room), timeout=30)
        for peer in room.peers.values():
            for pc in (peer.pub, peer.sub):
                for pair in nominated(pc):
                    assert low <= pair.remote_addr[1] <= low + 20
    finally:
        await room.close()


async def test_announced_address_is_offered() -> None:
    port = free_udp_port()
    mux = UdpMux(port)
    announced = "203.0.113.7"  # TEST-NET-3: never reachable, only written into candidates
    config = MediaConfig(media_host=MEDIA_HOST, ports=MediaPorts(mux=mux, announced_ip=announced))
    room = Room("room-n", config)
    try:
        peer = await room.join("a", COLOURS["a"])
        sdp = peer.pub.remoteDescription.sdp
        assert f" {announced} {port} typ host" in sdp
        assert f" {MEDIA_HOST} {port} typ host" not in sdp
    finally:
        await room.close()
        mux.close()


_RECEIVE = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
s.settimeout(10)
print(s.getsockname()[1], flush=True)
got = []
try:
    while len(got) < int(sys.argv[2]):
        got.append(int.from_bytes(s.recv(2048)[:4], "big"))
except TimeoutError:
    pass
print(json.dumps(got), flush=True)
"""


def test_the_shared_sockets_writer_queues_in_order_when_the_socket_would_block(
    tmp_path,
) -> None:
    """sfu.udpmux.SocketTransport (the shared socket's writer on either loop): behind a
    slow link the socket's send buffer fills; what would block waits in order, the
    buffered size the C send path checks says so, and everything goes out once the
    socket drains."""
    count = 200
    with veth_namespace(tmp_path / "netns") as ns:
        # 2 Mbit/s with a deep queue: datagrams wait in tbf, charged to our send buffer.
        subprocess.run(
            [TC, "qdisc", "add", "dev", ns.outside_dev, "root", "tbf", "rate", "2mbit"]
            + ["burst", "4000", "limit", "10000000"],
            check=True,
        )
        for run in (asyncio.run, uvloop.run):
            receiver = subprocess.Popen(
                [*ns.enter(), sys.executable, "-c", _RECEIVE, ns.inside_ip, str(count)],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert receiver.stdout is not None
                port = int(receiver.stdout.readline())
                queued = run(_burst_through(ns.outside_ip, (ns.inside_ip, port), count))
                out, _ = receiver.communicate(timeout=30)
            finally:
                if receiver.poll() is None:
                    receiver.kill()
            assert queued > 0  # the socket did block, so the queue was used
            # all of them, in the order sent
            assert json.loads(out.strip().splitlines()[-1]) == list(range(count))


async def _burst_through(host: str, to: tuple[str, int], count: int) -> int:
    """Sends ``count`` numbered datagrams through the shared socket's writer at once;
    the most it held queued."""
    mux = MuxSocket(host, 0)
    await mux.open()
    try:
        assert mux.sock is not None
        mux.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport = mux.transport
        queued = 0
        for seq in range(count):
            transport.sendto(seq.to_bytes(4, "big") + bytes(996), to)
            queued = max(queued, transport._buffer_size)  # type: ignore[attr-defined]
        await wait_for(lambda: transport.get_write_buffer_size() == 0, timeout=20)
        return queued
    finally:
        mux.close()
