"""The page in a cluster: a link opened on a node that does not serve the room still joins
(``wrong_node`` followed without the person noticing), and when the room's node is killed
the pages — one of them loaded from that very node — reconnect to the live node on their
own, without a reload."""

from __future__ import annotations

import contextlib
import secrets
import signal
import time
from pathlib import Path

import pytest

from tests.browser.conftest import run_server
from tests.browser.harness import Launch, join, my_id, wait_js, wait_remote_playing

pytestmark = [pytest.mark.browser, pytest.mark.redis]


async def test_the_page_follows_the_room_to_its_node_and_survives_its_death(
    tmp_path: Path, launch: Launch, redis_url: str
) -> None:
    shared = {
        "ROUNDTABLE_SECRET": secrets.token_urlsafe(32),
        "ROUNDTABLE_API_KEY": secrets.token_urlsafe(24),
        "ROUNDTABLE_REDIS_URL": redis_url,
        "ROUNDTABLE_DRAIN_TIMEOUT": "0",  # the fixture's SIGTERM stops without waiting
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(
            run_server(tmp_path / "a", {**shared, "ROUNDTABLE_NODE_ID": "page-a"})
        )
        b = stack.enter_context(
            run_server(tmp_path / "b", {**shared, "ROUNDTABLE_NODE_ID": "page-b"})
        )
        room = a.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
        caseworker, client = await launch("caseworker"), await launch("client")
        # The caseworker's page comes from node A, whose first join pins the room there.
        await join(caseworker, room["caseworker_url"])
        # The client's link is opened on node B: its page connects to node A instead.
        await join(client, b.local_url(room["client_url"]))
        ids = {"caseworker": await my_id(caseworker), "client": await my_id(client)}
        await wait_remote_playing(caseworker, {ids["client"]}, within=45)
        await wait_remote_playing(client, {ids["caseworker"]}, within=45)
        for browser in (caseworker, client):
            refused = [line for line in browser.console if "Refused to" in line]
            assert refused == [], f"{browser.name}: {refused}"

        # Node A dies: both pages (the caseworker's loaded from A) move to node B.
        killed = time.monotonic()
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=10)
        await wait_js(
            client,
            "window.roundtable.call && window.roundtable.call.nodeUrl === null",
            within=60,
        )
        await wait_remote_playing(caseworker, {ids["client"]}, within=60)
        await wait_remote_playing(client, {ids["caseworker"]}, within=60)
        took = time.monotonic() - killed
        print(f"[timing] browsers: kill -9 of the room's node -> both playing again {took:.1f} s")
        assert await my_id(caseworker) == ids["caseworker"]
        assert await caseworker.page.evaluate("window.roundtable.call.nodeUrl") == b.base_url
        for browser in (caseworker, client):
            errors = [line for line in browser.console if line.startswith("pageerror")]
            assert errors == [], f"{browser.name}: {errors}"
