"""The page restarts ICE on its publish connection when the server says ``publish.restart``.

The SFU sends it when its ICE consent on a participant's publish connection expired
(tests/test_ice_restart.py shows that with aiortc peers): the page offers on that
connection, so only it can restart ICE there, and its own pc may still say "connected".
Expiring consent for real takes 30 s of a network that answers the page's checks but
not the SFU's, so here the server's event is written into the page's real Socket.IO
connection (Playwright's WebSocket route), as tests/browser/test_paused_note.py does.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.browser.harness import (
    Launch,
    Server,
    join,
    my_id,
    remote_videos,
    wait_js,
    wait_remote_playing,
)

pytestmark = pytest.mark.browser

_UFRAGS_JS = """
() => {
  const pc = window.roundtable.pcs.publish;
  const ufrag = (d) => d && (d.sdp.match(/^a=ice-ufrag:(\\S+)/m) || [])[1];
  return pc && [ufrag(pc.localDescription), ufrag(pc.remoteDescription), pc.connectionState];
}
"""


# A TURN server in welcome (nothing listens there; host pairs connect): the restart
# allocates new relays, so the page asks for fresh credentials first, as restartIce() does.
_TURN = {
    "ROUNDTABLE_TURN_URLS": "turn:127.0.0.1:3479",
    "ROUNDTABLE_TURN_SECRET": "s3cret-for-tests",
}


@pytest.mark.parametrize("server", [_TURN], indirect=True)
async def test_the_page_restarts_its_publish_connection_when_the_server_asks(
    server: Server, launch: Launch
) -> None:
    room = server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
    cw = await launch("caseworker")
    cl = await launch("client")
    sockets: list[Any] = []
    sent: list[str] = []  # what the client's page sends, in order

    def route(ws: Any) -> None:
        upstream = ws.connect_to_server()  # everything passes both ways, as without the route

        def to_server(message: str | bytes) -> None:
            if isinstance(message, str):
                sent.append(message)
            upstream.send(message)

        ws.on_message(to_server)
        sockets.append(ws)

    await cl.page.route_web_socket(re.compile(r"/socket\.io/"), route)
    await join(cw, room["caseworker_url"])
    await join(cl, room["client_url"])
    client_id, cw_id = await my_id(cl), await my_id(cw)
    await wait_remote_playing(cw, {client_id}, within=60)
    await wait_remote_playing(cl, {cw_id}, within=60)
    local, remote, state = await cl.page.evaluate(_UFRAGS_JS)
    assert local and remote and state == "connected"

    assert sockets
    asked = len(sent)
    sockets[-1].send("42" + json.dumps(["publish.restart", {}]))
    # A re-offer with new ICE credentials, answered by the SFU with new ones of its own,
    # on the same connection, which connects again.
    await wait_js(
        cl,
        f"(() => {{ const u = ({_UFRAGS_JS})(); return u[0] !== {json.dumps(local)} "
        f"&& u[1] !== {json.dumps(remote)} && u[2] === 'connected'; }})()",
        within=20,
    )
    # Fresh TURN credentials before the re-offer (the welcome's may have run out).
    events = [m[m.index("[") + 2 :].split('"', 1)[0] for m in sent[asked:] if m.startswith("42")]
    assert "ice.refresh" in events and "publish" in events, events
    assert events.index("ice.refresh") < events.index("publish"), events
    # The caseworker keeps seeing the client, and the client the caseworker.
    before = (await remote_videos(cw))[client_id]["frames"]
    await wait_remote_playing(cw, {client_id}, within=30)
    assert (await remote_videos(cw))[client_id]["frames"] > before
    await wait_remote_playing(cl, {cw_id}, within=30)
    errors = [line for line in cl.console if line.startswith("pageerror")]
    assert errors == [], errors
