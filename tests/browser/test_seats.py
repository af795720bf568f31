"""Own seats in real browsers: a reload behind a lock, someone new kept out and the
caseworker told, and self-mute shown to the others (docs/protocol.md, "Reconnecting")."""

from __future__ import annotations

import pytest

from tests.browser.harness import (
    Launch,
    Server,
    join,
    my_id,
    open_join,
    wait_js,
    wait_remote_playing,
)

pytestmark = pytest.mark.browser


async def test_locked_room_reload_gets_back_in_and_someone_new_is_kept_out(
    server: Server, launch: Launch
) -> None:
    room = server.create_room(caseworker_name="Andrea Berger", client_name="Jürgen Yılmaz")
    caseworker, client, stranger = [await launch(n) for n in ("caseworker", "client", "new")]
    await join(caseworker, room["caseworker_url"])
    await join(client, room["client_url"])
    cl_id = await my_id(client)
    await wait_remote_playing(caseworker, {cl_id})

    # The client mutes the microphone: the caseworker's tile for them shows it.
    tile = f"document.querySelector('li.tile[data-participant=\"{cl_id}\"]')"
    await client.page.get_by_test_id("mic-toggle").click()
    await wait_js(caseworker, f"{tile} && {tile}.classList.contains('mic-muted')")
    await client.page.get_by_test_id("mic-toggle").click()
    await wait_js(caseworker, f"{tile} && !{tile}.classList.contains('mic-muted')")

    await caseworker.page.get_by_test_id("panel-toggle").click()
    await caseworker.page.get_by_test_id("lock-toggle").click()
    await wait_js(
        client, "document.querySelector('[data-testid=status]').textContent.includes('gesperrt')"
    )

    # The client reloads: the lock does not keep them out of their own seat.
    await client.page.reload()
    await client.page.wait_for_selector("body[data-ready=true]", timeout=15000)
    await client.page.get_by_test_id("join-button").click()
    await client.page.wait_for_selector("#view-call:not([hidden])", timeout=20000)
    assert await my_id(client) == cl_id
    await wait_remote_playing(caseworker, {cl_id}, within=30)

    # Someone new with a client link of the room: refused, in plain words; the
    # caseworker sees who tried.
    newcomer = server.join_url(server.token(room["room"], "client", "Frau Neu"))
    await open_join(stranger, newcomer)
    await stranger.page.get_by_test_id("join-button").click()
    message = stranger.page.get_by_test_id("error-message")
    await message.wait_for(timeout=15000)
    assert await message.get_attribute("data-error") == "room_locked"
    assert "gesperrt" in await message.inner_text()
    await wait_js(
        caseworker,
        "document.getElementById('messages').textContent.includes('Frau Neu wollte beitreten')",
        within=10,
    )
    assert server.participants() == 2
