"""What the others see of someone besides media (issue 14): a shared screen and a raised
hand, both in the roster, so the page can enlarge the screen and show the hands in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.controlplane import Clients, RunningServer, me, running_server

ROOM = "r_presence"


@pytest.fixture
async def server(tmp_path: Path):
    async with running_server(tmp_path, joins_per_ip_per_minute=1000) as srv:
        yield srv


def _entry(roster: dict, pid: str) -> dict:
    return next((p for p in roster["participants"] if p["id"] == pid), {})


async def test_hands_in_order_and_screen_share_in_the_roster(
    server: RunningServer, clients: Clients
) -> None:
    cw = await clients.join(server.token(room=ROOM, role="caseworker", name="Frau B"))
    cl = await clients.join(server.token(room=ROOM, role="client", name="Herr K"))
    pa = await clients.join(
        server.token(room=ROOM, role="partner", name="DRV", grants=["subscribe", "audio"])
    )
    roster = await cw.wait("roster", lambda r: len(r["participants"]) == 3)
    assert _entry(roster, me(cl))["hand"] is None and _entry(roster, me(cl))["sharing"] is False

    assert await pa.call("hand", {"raised": True}) == {"ok": True}
    assert await cl.call("hand", {"raised": True}) == {"ok": True}
    roster = await cw.wait(
        "roster", lambda r: all(_entry(r, p).get("hand") for p in (me(pa), me(cl)))
    )
    assert _entry(roster, me(pa))["hand"] <= _entry(roster, me(cl))["hand"]  # pa first
    assert await pa.call("hand", {"raised": False}) == {"ok": True}
    await cw.wait("roster", lambda r: _entry(r, me(pa)).get("hand", 0) is None)

    assert await cw.call("screen.share", {"sharing": True}) == {"ok": True}
    await cl.wait("roster", lambda r: _entry(r, me(cw)).get("sharing") is True)
    # Without the `screen` right there is nothing to share; payloads are checked.
    assert (await pa.call("screen.share", {"sharing": True}))["error"] == "forbidden"
    assert (await cl.call("hand", {"raised": "yes"}))["error"] == "invalid_payload"
    assert (await cl.call("screen.share", {}))["error"] == "invalid_payload"
