"""A participant whose only way out is TCP to the TURN server joins and sees and hears.

Layout (all inside the loopback-only namespace of the suite)::

    test namespace: roundtable serve (0.0.0.0; media on 127.0.0.1), coturn (10.203.0.1),
                    a second Chromium on loopback
        └── veth ──► child namespace 10.203.0.2: the relay-only Chromium;
                     nftables drops every UDP datagram in and out

The server runs with ``ROUNDTABLE_ICE_POLICY=relay`` and one TURN URL,
``turn:10.203.0.1:<port>?transport=tcp``: both browsers get their credential in
``welcome`` and relay through coturn, which reaches the SFU on 127.0.0.1
(``allow-loopback-peers``, for this namespace only). The relay-only browser joins after
the other is in the call, so its join → first remote frame time is that of a TCP-only
participant; it is printed for the closing notes, not asserted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import run_server
from tests.browser.harness import (
    Browser,
    Launch,
    Server,
    join,
    join_to_first_frame_ms,
    launch_inside,
    my_id,
    wait_js,
    wait_remote_playing,
)
from tests.coturn import Coturn, run_coturn
from tests.netns import DROP_ALL_UDP, Netns, veth_namespace

pytestmark = pytest.mark.browser

# The selected candidate pair of each of the page's two peer connections.
_SELECTED_PAIRS_JS = """
async () => {
  const out = {};
  for (const [leg, pc] of Object.entries(window.roundtable.pcs || {})) {
    if (!pc) continue;
    const stats = await pc.getStats();
    let pairId = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    });
    const pair = pairId ? stats.get(pairId) : null;
    const local = pair ? stats.get(pair.localCandidateId) : null;
    const remote = pair ? stats.get(pair.remoteCandidateId) : null;
    out[leg] = {
      policy: pc.getConfiguration().iceTransportPolicy,
      state: pair ? pair.state : null,
      local: local ? local.candidateType : null,
      relayProtocol: local ? local.relayProtocol : null,
      remote: remote ? remote.candidateType : null,
      bytesSent: pair ? pair.bytesSent : 0,
      bytesReceived: pair ? pair.bytesReceived : 0,
    };
  }
  return out;
}
"""


@pytest.fixture
def tcp_only(tmp_path: Path) -> Iterator[Netns]:
    """A child namespace on a veth pair whose UDP is dropped both ways by nftables."""
    with veth_namespace(tmp_path / "netns") as ns:
        ns.nft(DROP_ALL_UDP)
        yield ns


@pytest.fixture
def coturn(tmp_path: Path, tcp_only: Netns) -> Iterator[Coturn]:
    # Listens where the child namespace reaches it; relays from 127.0.0.1 to the SFU.
    with run_coturn(tmp_path / "coturn", host=tcp_only.outside_ip, relay_ip="127.0.0.1") as turn:
        yield turn
        print(f"\n--- coturn log tail ---\n{turn.log_tail(10)}")


@pytest.fixture
def relay_server(tmp_path: Path, coturn: Coturn) -> Iterator[Server]:
    env = {
        "ROUNDTABLE_TURN_URLS": coturn.url_tcp,
        "ROUNDTABLE_TURN_SECRET": coturn.secret,
        "ROUNDTABLE_ICE_POLICY": "relay",
    }
    # 0.0.0.0: the page and Socket.IO must be reachable from the child namespace too.
    with run_server(tmp_path, env, host="0.0.0.0") as srv:
        yield srv


async def _selected_pairs(browser: Browser) -> dict[str, Any]:
    return await browser.page.evaluate(_SELECTED_PAIRS_JS)


async def _relayed(browser: Browser, within: float = 20.0) -> dict[str, Any]:
    """Both legs connected over a relay candidate; the last sample otherwise."""
    pairs: dict[str, Any] = {}
    for _ in range(int(within / 0.5)):
        pairs = await _selected_pairs(browser)
        legs = [pairs.get("publish"), pairs.get("subscribe")]
        if all(leg and leg["state"] == "succeeded" and leg["local"] for leg in legs):
            return pairs
        await asyncio.sleep(0.5)
    return pairs


async def test_tcp_only_participant_joins_through_turn_and_both_receive_media(
    relay_server: Server, tcp_only: Netns, coturn: Coturn, launch: Launch
) -> None:
    # The child namespace really has no UDP out, and TCP works.
    assert not tcp_only.udp_passes(), "UDP from the child namespace was not blocked"
    assert tcp_only.tcp_passes(), "TCP from the child namespace does not pass"

    room = relay_server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
    # The caseworker on loopback is in the call first.
    caseworker = await launch("caseworker")
    await join(caseworker, room["caseworker_url"])
    client, client_url = await launch_inside(
        launch, tcp_only, "relay-only", relay_server, room["client_url"]
    )
    await join(client, client_url)
    ids = {"caseworker": await my_id(caseworker), "client": await my_id(client)}

    # The welcome carried this participant's own credential and the relay policy.
    ice = await wait_js(client, "window.roundtable.call && window.roundtable.call.ice")
    assert ice["iceTransportPolicy"] == "relay"
    (server_entry,) = ice["iceServers"]
    assert server_entry["urls"] == [coturn.url_tcp]
    assert server_entry["username"].endswith(":" + ids["client"])

    # Both receive media: video decoding and advancing on each side, audio tracks present.
    on_caseworker, on_client = await asyncio.gather(
        wait_remote_playing(caseworker, {ids["client"]}, within=60),
        wait_remote_playing(client, {ids["caseworker"]}, within=60),
    )
    assert on_caseworker[ids["client"]]["audio"] >= 1
    assert on_client[ids["caseworker"]]["audio"] >= 1

    # Every leg of the relay-only browser runs over a TURN relay reached by TCP.
    pairs = await _relayed(client)
    for leg in ("publish", "subscribe"):
        assert pairs[leg]["policy"] == "relay", pairs
        assert pairs[leg]["local"] == "relay", pairs
        assert pairs[leg]["relayProtocol"] == "tcp", pairs
        assert pairs[leg]["bytesReceived"] > 0 and pairs[leg]["bytesSent"] > 0, pairs
    # Through this coturn, with this participant's credential (one relay per leg at least).
    assert coturn.allocations(server_entry["username"]) >= 2, coturn.log_tail()
    # UDP is still blocked after the call is up (nothing reopened it).
    assert not tcp_only.udp_passes()

    # ice.refresh (what the page calls before an ICE restart) hands both legs a new
    # credential without disturbing the call.
    refreshed = await client.page.evaluate("window.roundtable.call.refreshIce()")
    assert refreshed["iceServers"][0]["username"].endswith(":" + ids["client"])
    assert refreshed["iceTransportPolicy"] == "relay"
    await wait_remote_playing(client, {ids["caseworker"]}, within=20)

    ms = await join_to_first_frame_ms(client)
    print(f"[timing] relay-only join click → first remote frame {ms} ms")
    assert ms is not None
