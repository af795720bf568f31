"""ICE restarts and consent for the SFU's connections, which aiortc does not offer.

A participant whose network drops (a train, Wi-Fi to mobile, a laptop lid) comes back
with new addresses and, in the browser, a new ICE ufrag/password (``restartIce()``).
aiortc starts ICE once per transport and ignores new credentials in a re-offer, so its
peer connection would never hear the browser again. Here a restart keeps everything
above ICE — the DTLS association, SRTP sessions, transceivers, forwarders, legs — and
gives the aioice ``Connection`` new local credentials, the browser's new ones, an empty
check list and a fresh ``connect()``, as RFC 8445 section 9 describes. Media resumes as
soon as a pair is nominated; the C send path picks up the new pair on its next route
check (``sfu.aiortc_hooks.fast_route``), the shared media port routes the new address
by the new ufrag (``sfu.udpmux``).

Consent (RFC 7675): aioice closes a connection after 30 s without consent, which would
end the DTLS association and make a restart impossible. The SFU's connections instead
stop checking and wait: the control plane decides when a participant who is away is
gone (its reconnect grace) and then closes the connection itself. What they must not do
is keep sending (section 5.1: transmission stops when consent expires): an expired
connection sends nothing at all — the owner's ``on_consent(False)`` parks its legs, the
C send path finds no route (:func:`consented`), and aiortc's own writes (RTCP, DTLS) are
dropped at the connection — until a restart's checks succeed and ``on_consent(True)``
lets media resume. aioice runs one task
per connection for the checks; the SFU's connections share the loop's timer wheel
(:mod:`sfu.timers`) instead, with aioice's interval: a binding request every 4-6 s on
each nominated pair. Expiry is RFC 7675's, not aioice's: a valid response to any request
sent within the expiry window (``CONSENT_FAILURES x CONSENT_INTERVAL``, 30 s) is consent,
however late it comes (a link with a standing queue answers late, not never), and
consent expires when the window passes without one. A restart stops the checks (the
browser answers only its new credentials) but not that clock: if the restart never
connects, the old consent still expires on time, and a restart whose checks fail expires
it at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable
from typing import Any

import aioice.ice
from aioice import stun
from aioice.utils import random_string
from aiortc import RTCPeerConnection
from aiortc.rtcicetransport import RTCIceTransport

from .timers import Timer, wheel
from .udpmux import MuxTransport

log = logging.getLogger(__name__)

_SFU = "_roundtable_sfu"  # marks an aioice Connection of the SFU's own
_CONSENT = "_roundtable_consent"  # the _Consent checking an SFU connection now
_EXPIRED = "_roundtable_expired"  # set while an SFU connection's consent has expired
_ON_CONSENT = "_roundtable_on_consent"  # the owner's callback: consent lost / regained
_ON_RTT = "_roundtable_on_rtt"  # the owner's callback: a consent check's round trip
_original_query_consent = aioice.ice.Connection.query_consent
_original_close = aioice.ice.Connection.close
_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)\s*$", re.M)
_PWD = re.compile(r"^a=ice-pwd:(\S+)\s*$", re.M)


def credentials(sdp: str) -> tuple[str, str] | None:
    """The first ``(ice-ufrag, ice-pwd)`` of a description (bundled: one transport)."""
    ufrag, pwd = _UFRAG.search(sdp), _PWD.search(sdp)
    if ufrag is None or pwd is None:
        return None
    return ufrag.group(1), pwd.group(1)


def _transports(pc: RTCPeerConnection) -> list[Any]:
    """The distinct ``RTCIceTransport``s of ``pc``'s transceivers (one with max-bundle)."""
    found: list[Any] = []
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        if dtls is not None and dtls.transport not in found:
            found.append(dtls.transport)
    return found


def connections(pc: RTCPeerConnection) -> list[aioice.Connection]:
    """The aioice connections under ``pc`` (one with max-bundle)."""
    return [transport._connection for transport in _transports(pc)]


def mark(
    pc: RTCPeerConnection,
    on_consent: Callable[[bool], None] | None = None,
    on_rtt: Callable[[float], None] | None = None,
) -> None:
    """Treat ``pc``'s connections as the SFU's (patient consent, restartable).

    Call once the transceivers exist (before or after ``setLocalDescription``: aiortc
    creates a transceiver's transports in ``addTransceiver``), before the checks succeed,
    and again after adding transceivers. ``on_consent(False)`` is called when a
    connection's consent expires (stop sending media), ``on_consent(True)`` when a
    restart won it back; each once per change. ``on_rtt(seconds)`` gets the round trip
    of each answered consent check, the first one sent as the connection comes up,
    before any media (sfu.downlink.DownlinkEstimate.baseline).
    """
    for connection in connections(pc):
        mark_connection(connection, on_consent, on_rtt)


def mark_connection(
    connection: aioice.Connection,
    on_consent: Callable[[bool], None] | None = None,
    on_rtt: Callable[[float], None] | None = None,
) -> None:
    """:func:`mark` for one aioice connection (a test seam: no peer connection needed)."""
    install()
    setattr(connection, _SFU, True)
    if on_consent is not None:
        setattr(connection, _ON_CONSENT, on_consent)
    if on_rtt is not None:
        setattr(connection, _ON_RTT, on_rtt)


def consented(connection: aioice.Connection) -> bool:
    """``False`` while the connection's consent has expired: nothing may be sent on it."""
    return not getattr(connection, _EXPIRED, False)


async def _withheld(data: bytes, component: int) -> None:
    """``Connection.sendto`` of an expired connection: the datagram is dropped, as if
    lost (aiortc's writers, RTCP and DTLS alike, treat a send as done)."""


def _expire(connection: aioice.Connection) -> None:
    if getattr(connection, _EXPIRED, False):
        return  # told once: a failed restart of an expired connection changes nothing
    setattr(connection, _EXPIRED, True)
    connection.sendto = _withheld  # type: ignore[method-assign]
    _tell(connection, False)


def _regain(connection: aioice.Connection) -> None:
    if not getattr(connection, _EXPIRED, False):
        return
    delattr(connection, _EXPIRED)
    del connection.sendto  # aioice's own again
    _tell(connection, True)


def _tell(connection: aioice.Connection, consent: bool) -> None:
    callback = getattr(connection, _ON_CONSENT, None)
    if callback is None:
        return
    try:
        callback(consent)
    except Exception:
        log.exception("connection %s: consent callback failed", connection._id)


def remote_changed(pc: RTCPeerConnection, sdp: str) -> tuple[str, str] | None:
    """The browser's new credentials if ``sdp`` restarts ICE on a started connection."""
    new = credentials(sdp)
    if new is None:
        return None
    for connection in connections(pc):
        if (
            connection.remote_password is not None
            and (
                connection.remote_username,
                connection.remote_password,
            )
            != new
        ):
            return new
    return None


def restart(pc: RTCPeerConnection) -> None:
    """New local credentials and an empty check list on each of ``pc``'s connections.

    Call before creating the description that carries the new credentials; connectivity
    checks start with :func:`resume` once the remote side's credentials are known.
    """
    for transport in _transports(pc):
        connection = transport._connection
        if connection._closed or connection._closing:
            continue
        # aiortc takes remote candidates only until the first end-of-candidates.
        transport.iceGatherer._remote_candidates_end = False
        task = connection._query_consent_task
        if task is not None and not task.done():
            task.cancel()
        connection._query_consent_task = None
        # The checks stop, not the expiry clock: a restart that never connects (the page
        # moved to a network that blocks UDP, its signalling still alive) must not leave
        # media going to the old address without consent.
        consent = getattr(connection, _CONSENT, None)
        if consent is not None:
            consent.suspend()
        for pair in connection._check_list:
            if pair.task is not None:
                pair.task.cancel()
        if not connection._check_list_done:
            # Ends a connect() still waiting for the old check list.
            connection._check_list_state.put_nowait(aioice.ice.ICE_FAILED)
        old = connection.local_username
        connection._local_username = random_string(4)
        connection._local_password = random_string(22)
        connection._check_list = []
        connection._check_list_done = False
        connection._check_list_state = asyncio.Queue()
        connection._early_checks.clear()
        connection._early_checks_done = False
        # The old pair stays nominated until a new one is: aiortc's DTLS transport reads
        # through the connection, and a connection with no nominated pair ends that read
        # (and with it DTLS). Checks the remote side nominates replace it.
        connection._nominating.clear()
        connection._remote_candidates = []
        connection._remote_candidates_end = False
        connection.remote_username = None
        connection.remote_password = None
        for protocol in connection._protocols:
            if isinstance(protocol.transport, MuxTransport):
                protocol.transport.ufrag_changed(old)


def resume(pc: RTCPeerConnection, remote: tuple[str, str]) -> asyncio.Task[None]:
    """Start the checks of a restarted connection with the browser's credentials.

    The caller owns the task (cancel it on close); it ends when a pair is nominated or
    the checks fail (a later restart tries again).
    """
    started = []
    for connection in connections(pc):
        connection.remote_username, connection.remote_password = remote
        started.append(connection)
    return asyncio.ensure_future(_connect(started))


async def _connect(started: list[aioice.Connection]) -> None:
    for connection in started:
        ufrag = connection.local_username
        try:
            await connection.connect()
        except ConnectionError:
            if connection.local_username != ufrag or connection._closed or connection._closing:
                continue  # a newer restart (or close) ended these checks, not the peer
            # The peer did not answer the restart's checks: it gives no consent (RFC 7675
            # section 5.1), whatever the old pair's clock says.
            log.info("ICE restart of connection %s failed, consent expired", connection._id)
            _stop_consent(connection)
            _expire(connection)


async def _query_consent(self: aioice.Connection) -> None:
    """aioice's consent checks, on the timer wheel, and expiry waits for a restart
    instead of closing the connection (see the module docstring). aioice starts this as
    a task when ``connect()`` succeeds; for the SFU's connections the task ends at once."""
    if not getattr(self, _SFU, False):
        return await _original_query_consent(self)
    assert self.remote_password is not None
    if self._closing or self._closed:
        # A restart's connect() that completed as close() began: no jobs to hold it.
        return
    _stop_consent(self)
    consent = _Consent(self)
    setattr(self, _CONSENT, consent)
    consent.start()
    # connect() succeeded: after an expiry, that is a restart's checks (new credentials,
    # consent anew, RFC 7675 section 5.1), so sending may resume.
    _regain(self)


class _Consent:
    """The consent checks of one connection (RFC 7675), as wheel jobs: a binding request
    on each nominated pair every ``CONSENT_INTERVAL`` (randomised as aioice does), each
    request kept in its protocol's transaction table for the whole expiry window, so a
    response that comes late still counts. Consent expires ``CONSENT_FAILURES x
    CONSENT_INTERVAL`` after the last success (or after the checks began)."""

    __slots__ = ("connection", "due", "expiry", "last_success", "pending", "timer")

    def __init__(self, connection: aioice.Connection) -> None:
        self.connection = connection
        # connect() just succeeded: its checks are this consent's first success.
        self.last_success = asyncio.get_running_loop().time()
        self.pending: list[_ConsentRequest] = []
        self.timer: Timer | None = None  # the next check
        self.expiry: Timer | None = None  # the end of the window, if no success comes
        self.due = 0.0  # when the expiry job should run

    @staticmethod
    def window() -> float:
        return aioice.ice.CONSENT_FAILURES * aioice.ice.CONSENT_INTERVAL

    def live(self) -> bool:
        c = self.connection
        return getattr(c, _CONSENT, None) is self and not (c._closed or c._closing)

    def start(self) -> None:
        # A first check at once, not a consent interval later: its round trip, taken
        # before any media queues on the link, is the empty-queue baseline the
        # subscriber's estimate measures queues against (a link shaped a second after
        # the call started showed 0.3 s from its first SR on, and read as no queue).
        self.check()
        self.arm(self.window())

    def arm(self, delay: float) -> None:
        self.due = asyncio.get_running_loop().time() + delay
        self.expiry = wheel().call_later(delay, self.lapse)

    def schedule(self) -> None:
        delay = aioice.ice.CONSENT_INTERVAL * (0.8 + 0.4 * random.random())
        self.timer = wheel().call_later(delay, self.check)

    def suspend(self) -> None:
        """No more checks (an ICE restart changed the credentials); the expiry stays
        armed, so the connection stops sending on time unless the restart connects."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for request in self.pending:
            request.forget()
        self.pending = []

    def stop(self) -> None:
        self.suspend()
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None

    def check(self) -> None:
        self.timer = None
        c = self.connection
        if not self.live() or c.remote_password is None:
            return
        # Requests older than the window cannot give consent any more (section 5.1).
        oldest = asyncio.get_running_loop().time() - self.window()
        while self.pending and self.pending[0].sent < oldest:
            self.pending.pop(0).forget()
        key = c.remote_password.encode("utf8")
        for pair in list(c._nominated.values()):
            request = c.build_request(pair, nominate=False)
            request.add_message_integrity(key)
            self.pending.append(_ConsentRequest(self, request, pair, key))
        self.schedule()

    def answered(self, request: _ConsentRequest, ok: bool) -> None:
        if request not in self.pending:
            return
        request.forget()
        self.pending.remove(request)
        if ok and self.live():
            self.last_success = now = asyncio.get_running_loop().time()
            callback = getattr(self.connection, _ON_RTT, None)
            if callback is not None:
                try:
                    callback(now - request.sent)
                except Exception:
                    log.exception("connection %s: round-trip callback failed", self.connection._id)

    def lapse(self) -> None:
        """The window since the last success may have passed: expire, or look again
        when it would (a success meanwhile moved it)."""
        self.expiry = None
        if not self.live():
            return
        now = asyncio.get_running_loop().time()
        left = self.last_success + self.window() - now
        if left > 0:
            self.arm(left)
            return
        if now - self.due > aioice.ice.CONSENT_INTERVAL:
            # This job ran late: the SFU's own loop stalled, and answers may wait unread
            # in the socket. Read them for one more interval before deciding.
            self.arm(aioice.ice.CONSENT_INTERVAL)
            return
        log.info(
            "connection %s: consent expired, sending stopped until a restart",
            self.connection._id,
        )
        self.stop()
        delattr(self.connection, _CONSENT)
        _expire(self.connection)


class _ConsentRequest:
    """One consent binding request, in its protocol's transaction table like aioice's
    ``stun.Transaction``, so the protocol hands it the response."""

    __slots__ = ("consent", "key", "protocol", "sent", "tid")

    def __init__(self, consent: _Consent, request: stun.Message, pair: Any, key: bytes) -> None:
        self.consent = consent
        self.key = key
        self.sent = asyncio.get_running_loop().time()
        self.protocol = pair.protocol
        self.tid = request.transaction_id
        self.protocol.transactions[self.tid] = self
        try:
            self.protocol.send_stun(request, pair.remote_addr)
        except Exception:  # a closed transport: unanswered, as aioice would count it
            log.debug("consent request not sent", exc_info=True)

    def response_received(self, message: stun.Message, addr: tuple[str, int]) -> None:
        # As stun.Transaction: a response not signed with the request's key is ignored.
        if not message.check_message_integrity(self.key):
            return
        self.consent.answered(self, message.message_class == stun.Class.RESPONSE)

    def forget(self) -> None:
        if self.protocol.transactions.get(self.tid) is self:
            del self.protocol.transactions[self.tid]


CLOSED_PROTOCOLS = "_roundtable_closed_protocols"


def _stop_consent(connection: aioice.Connection) -> None:
    consent = getattr(connection, _CONSENT, None)
    if consent is not None:
        consent.stop()
        delattr(connection, _CONSENT)


async def _close(self: aioice.Connection) -> None:
    """aioice's close, after the consent jobs stop: their wheel timers (the expiry up to
    30 s ahead) held the closed connection, and through its owner's callback the
    subscriber, allocator and room router, until they came due.

    The protocols it closes are kept (:data:`CLOSED_PROTOCOLS`) for :mod:`sfu.unlink`:
    aioice's close forgets them, and after an ICE restart no candidate pair names them."""
    _stop_consent(self)
    setattr(self, CLOSED_PROTOCOLS, list(self._protocols))
    await _original_close(self)


def install() -> None:
    if aioice.ice.Connection.query_consent is not _query_consent:
        aioice.ice.Connection.query_consent = _query_consent
    if aioice.ice.Connection.close is not _close:
        aioice.ice.Connection.close = _close


def check() -> list[str]:
    """Names of aioice internals this module relies on that are missing."""
    problems = []
    init = aioice.ice.Connection.__init__.__code__.co_names
    for name in (
        "_local_username",
        "_local_password",
        "_check_list",
        "_check_list_done",
        "_check_list_state",
        "_early_checks",
        "_early_checks_done",
        "_nominated",
        "_nominating",
        "_remote_candidates",
        "_remote_candidates_end",
        "_query_consent_task",
    ):
        if name not in init:
            problems.append(f"aioice Connection.{name}")
    if "_remote_candidates_end" not in RTCIceTransport.addRemoteCandidate.__code__.co_names:
        problems.append("aiortc RTCIceGatherer._remote_candidates_end")
    for name in ("CONSENT_INTERVAL", "CONSENT_FAILURES", "ICE_FAILED"):
        if not hasattr(aioice.ice, name):
            problems.append(f"aioice.ice.{name}")
    # What _Consent does in place of aioice's query_consent task.
    if "_closed" not in init or "_closing" not in init:
        problems.append("aioice Connection._closed/_closing")
    if "transactions" not in aioice.ice.StunProtocol.__init__.__code__.co_names:
        problems.append("aioice StunProtocol.transactions")
    for cls, name in (
        (aioice.ice.StunProtocol, "send_stun"),
        (aioice.ice.Connection, "build_request"),
        (stun.Message, "add_message_integrity"),
        (stun.Message, "check_message_integrity"),
    ):
        if not callable(getattr(cls, name, None)):
            problems.append(f"aioice {cls.__name__}.{name}")
    if "response_received" not in aioice.ice.StunProtocol.datagram_received.__code__.co_names:
        problems.append("aioice StunProtocol response dispatch")
    if "query_consent" not in aioice.ice.Connection.connect.__code__.co_names:
        problems.append("aioice Connection.connect starts query_consent")
    return problems


__all__ = [
    "connections",
    "consented",
    "credentials",
    "mark",
    "mark_connection",
    "remote_changed",
    "restart",
    "resume",
]
