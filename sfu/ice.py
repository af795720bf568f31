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
gone (its reconnect grace) and then closes the connection itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from typing import Any

import aioice.ice
from aioice import stun
from aioice.utils import random_string
from aiortc import RTCPeerConnection
from aiortc.rtcicetransport import RTCIceTransport

from .udpmux import MuxTransport

log = logging.getLogger(__name__)

_SFU = "_roundtable_sfu"  # marks an aioice Connection of the SFU's own
_original_query_consent = aioice.ice.Connection.query_consent
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


def mark(pc: RTCPeerConnection) -> None:
    """Treat ``pc``'s connections as the SFU's (patient consent, restartable)."""
    install()
    for connection in connections(pc):
        setattr(connection, _SFU, True)


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
        try:
            await connection.connect()
        except ConnectionError:
            log.info("ICE restart of connection %s failed", connection._id)


async def _query_consent(self: aioice.Connection) -> None:
    """aioice's consent checks, except that expiry waits for a restart instead of
    closing the connection (see the module docstring)."""
    if not getattr(self, _SFU, False):
        return await _original_query_consent(self)
    assert self.remote_password is not None
    failures = 0
    while True:
        await asyncio.sleep(aioice.ice.CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
        for pair in self._nominated.values():
            request = self.build_request(pair, nominate=False)
            try:
                await pair.protocol.request(
                    request,
                    pair.remote_addr,
                    integrity_key=self.remote_password.encode("utf8"),
                    retransmissions=0,
                )
                failures = 0
            except stun.TransactionError:
                failures += 1
        if failures >= aioice.ice.CONSENT_FAILURES:
            log.info("connection %s: consent expired, waiting for a restart", self._id)
            self._query_consent_task = None
            return


def install() -> None:
    if aioice.ice.Connection.query_consent is not _query_consent:
        aioice.ice.Connection.query_consent = _query_consent


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
    return problems


__all__ = ["connections", "credentials", "mark", "remote_changed", "restart", "resume"]
