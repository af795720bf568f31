"""A closed peer connection's objects freed by reference counting, not minutes later.

aiortc's objects of one connection reference each other in cycles: the connection's
event handlers on its transports (bound methods of the connection), the transports'
``_recv``/``_send`` bound to aioice's ``Connection``, and the SFU's own per-instance hooks
(closures over senders and transports, the C :class:`sfu._fastpath.Reader`). Closed, such
a connection is ~700 objects of cyclic garbage (one participant ~1,400, its libsrtp
sessions and their keys among them) that only a whole-heap collection frees. With
:mod:`server.gcpolicy` freezing the heap, that is the thaw (it then ran every 300 s, or
when the heap had grown by half), and at 70 rooms × 3 it held the event loop 0.2-1 s,
every call on the node stalled for as long (a capacity search's step failed on one such
pause).

:func:`unlink_later` clears the instance dictionaries of the connection's objects
(connection, transceivers, senders, receivers, DTLS and ICE transports, the ICE gatherer,
aioice's connection, its protocols and candidate pairs) a while after ``close()``
returned: every cycle among them passes through one of those dictionaries, so the whole
tree is freed at once. The delay lets callbacks that were already scheduled at close run
against intact objects; an object used after that raises ``AttributeError`` where it
would have acted on a closed connection.

Only what is certainly closed is cleared: a connection whose close was cancelled, or
one with an ICE socket (on the shared media port: a route in its ``MuxSocket``) still
open, is left to the garbage collector as before - clearing it could break the
datagrams of every other call on that socket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .ice import CLOSED_PROTOCOLS

log = logging.getLogger(__name__)

UNLINK_AFTER = 10.0  # seconds after close()
_UNLINKED = "_roundtable_unlinked"


def unlinked(pc: Any) -> bool:
    """Whether ``pc``'s objects were cleared (closing it again has nothing to do)."""
    return getattr(pc, _UNLINKED, False)


def unlink_later(pc: Any) -> None:
    """Clear ``pc``'s objects :data:`UNLINK_AFTER` seconds from now (the module's text)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    loop.call_later(UNLINK_AFTER, unlink, pc)


def _objects(pc: Any) -> list[Any]:
    found: list[Any] = []
    seen: set[int] = set()

    def add(obj: Any) -> None:
        if obj is not None and id(obj) not in seen and hasattr(obj, "__dict__"):
            seen.add(id(obj))
            found.append(obj)

    add(pc)
    d = vars(pc)
    transceivers = d.get("_RTCPeerConnection__transceivers") or []
    dtls = list(d.get("_RTCPeerConnection__dtlsTransports") or [])
    ice = list(d.get("_RTCPeerConnection__iceTransports") or [])
    for t in transceivers:
        add(t)
        for part in (getattr(t, "sender", None), getattr(t, "receiver", None)):
            add(part)
            transport = getattr(part, "transport", None) if part is not None else None
            if transport is not None:
                dtls.append(transport)
    sctp = d.get("_RTCPeerConnection__sctp")
    if sctp is not None:
        add(sctp)
        dtls.append(getattr(sctp, "transport", None))
    for transport in dtls:
        if transport is None:
            continue
        add(transport)
        ice.append(vars(transport).get("_transport"))
    for transport in ice:
        if transport is None:
            continue
        add(transport)
        td = vars(transport)
        gatherer = td.get("_RTCIceTransport__iceGatherer")
        add(gatherer)
        connection = td.get("_connection") or (
            vars(gatherer).get("_connection") if gatherer is not None else None
        )
        if connection is None:
            continue
        add(connection)
        cd = vars(connection)
        protocols = list(cd.get("_protocols") or []) + list(cd.get(CLOSED_PROTOCOLS) or [])
        for pair in list(cd.get("_check_list") or []):
            add(pair)
            protocols.append(vars(pair).get("protocol"))  # close() emptied _protocols
        for pair in list((cd.get("_nominated") or {}).values()):
            add(pair)
        for protocol in protocols:
            if protocol is None:
                continue
            transport = getattr(protocol, "transport", None)
            if transport is not None and not transport.is_closing():
                raise _StillOpen(connection)
            add(protocol)
    return found


class _StillOpen(Exception):
    """A closed connection's ICE socket is still open (attached after close)."""


def unlink(pc: Any) -> None:
    """Clear ``pc``'s objects now (``pc`` must be closed)."""
    if unlinked(pc):
        return
    closed = vars(pc).get("_RTCPeerConnection__isClosed")
    if closed is None or not closed.done() or closed.cancelled():
        return  # not (certainly) closed, or not aiortc's: in use
    try:
        objects = _objects(pc)
    except _StillOpen as exc:
        log.warning("unlink: a closed connection's ICE socket is open, left to the GC: %s", exc)
        return
    except Exception:  # never into the loop: the GC frees them all the same
        log.exception("unlink: could not walk a closed connection")
        return
    for obj in objects:
        vars(obj).clear()
    setattr(pc, _UNLINKED, True)
