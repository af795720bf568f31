"""Real Chromium pages in a real call through the real server and SFU.

Each page joins through its link, and each must show every other participant's video
playing (size known, clock running, frames decoded rising). The join → first remote
frame time is printed for the benchmark notes; it is not asserted (timing goals live in
bench/).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.browser.harness import (
    Browser,
    Launch,
    Server,
    eventually,
    join,
    join_to_first_frame_ms,
    my_id,
    open_join,
    remote_videos,
    selected_remote_ports,
    wait_js,
    wait_remote_playing,
    wait_remote_set,
)

pytestmark = pytest.mark.browser


def _partner_token(server: Server, room: str, name: str) -> str:
    """A partner token from the operator CLI, with the rights an invite would give."""
    return server.token(
        room,
        "partner",
        name,
        "--org",
        "Deutsche Rentenversicherung",
        "--grants",
        "publish,subscribe,audio,video,see_client",
    )


async def _join_all(browsers: list[Browser], urls: list[str]) -> dict[str, str]:
    await asyncio.gather(*(join(b, url) for b, url in zip(browsers, urls, strict=True)))
    return {b.name: await my_id(b) for b in browsers}


async def _all_see_each_other(browsers: list[Browser], ids: dict[str, str]) -> None:
    everyone = set(ids.values())
    samples = await asyncio.gather(
        *(wait_remote_playing(b, everyone - {ids[b.name]}, within=45) for b in browsers)
    )
    for b, sample in zip(browsers, samples, strict=True):
        for pid, video in sample.items():
            assert video["audio"] >= 1, f"{b.name}: no audio track from {pid}"
    for b in browsers:
        # No script errors, and nothing the Content-Security-Policy had to refuse.
        errors = [
            line for line in b.console if line.startswith("pageerror") or "Refused to" in line
        ]
        assert errors == [], f"{b.name}: {errors}"
        ms = await join_to_first_frame_ms(b)
        print(f"[timing] {b.name}: join click → first remote frame {ms} ms")


async def test_two_pages_see_each_other(server: Server, launch: Launch) -> None:
    room = server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
    caseworker, client = await launch("caseworker"), await launch("client")
    ids = await _join_all([caseworker, client], [room["caseworker_url"], room["client_url"]])

    await _all_see_each_other([caseworker, client], ids)

    on_caseworker = await remote_videos(caseworker)
    assert on_caseworker[ids["client"]]["role"] == "client"
    on_client = await remote_videos(client)
    assert on_client[ids["caseworker"]]["role"] == "caseworker"
    # The tile shows the name and the German role label.
    label = caseworker.page.locator(f'li.tile[data-participant="{ids["client"]}"] .tile-label')
    assert "Herr Yılmaz" in await label.inner_text()
    assert "Kundin/Kunde" in await label.inner_text()
    # Sound arrives too: the fake microphone's beeps light the speaker ring.
    await wait_js(
        caseworker,
        f"document.querySelector('li.tile[data-participant=\"{ids['client']}\"]').classList.contains('speaking')",
        within=15,
    )
    # The token is taken out of the address bar.
    assert "token" not in caseworker.page.url


async def test_three_pages_see_each_other(server: Server, launch: Launch) -> None:
    room = server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
    partner_url = server.join_url(_partner_token(server, room["room"], "Frau Sommer"))
    browsers = [await launch("caseworker"), await launch("client"), await launch("partner")]
    ids = await _join_all(browsers, [room["caseworker_url"], room["client_url"], partner_url])

    await _all_see_each_other(browsers, ids)

    roles = {v["role"] for v in (await remote_videos(browsers[0])).values()}
    assert roles == {"client", "partner"}
    # Every connection of every page reached the server on its one media port.
    media_port = int(server.env["ROUNDTABLE_MEDIA_PORT"])
    for browser in browsers:
        assert await selected_remote_ports(browser) == [media_port, media_port]
    print(
        f"[cpu] server during the three-browser call: {await server.cpu_percent(5.0):.0f}% of one core"
    )


async def test_leaving_removes_tiles(server: Server, launch: Launch) -> None:
    room = server.create_room()
    partner_url = server.join_url(_partner_token(server, room["room"], "Herr Adler"))
    caseworker, client, partner = [await launch(n) for n in ("caseworker", "client", "partner")]
    ids = await _join_all(
        [caseworker, client, partner], [room["caseworker_url"], room["client_url"], partner_url]
    )
    await _all_see_each_other([caseworker, client, partner], ids)
    assert server.participants() == 3

    # The partner leaves with the button: its page says so, the others drop its tile.
    await partner.page.get_by_test_id("leave-button").click()
    await partner.page.wait_for_selector("#view-ended:not([hidden])", timeout=5000)
    took = await asyncio.gather(
        wait_remote_set(caseworker, {ids["client"]}, within=5),
        wait_remote_set(client, {ids["caseworker"]}, within=5),
    )
    print(f"[timing] tiles gone after leave button: {max(took):.2f} s")

    # The client just closes its browser: the caseworker is alone within a few seconds.
    start = time.monotonic()
    await client.close()
    await wait_remote_set(caseworker, set(), within=10)
    print(f"[timing] tile gone after closing the browser: {time.monotonic() - start:.2f} s")
    assert await caseworker.page.get_by_test_id("status").inner_text()

    # The server forgot both (participants and their peer connections).
    await eventually(lambda: server.participants() == 1, 10, "server still holds the others")
    assert server.peer_connections() in (None, 2)  # the caseworker's publish + subscribe


async def test_refused_link_shows_reason(server: Server, launch: Launch) -> None:
    browser = await launch("stranger")
    await open_join(browser, server.join_url("not.a.token"))
    page = browser.page
    assert await page.get_by_test_id("link-hint").is_visible()
    await page.get_by_test_id("join-button").click()
    message = page.get_by_test_id("error-message")
    await message.wait_for(timeout=10000)
    assert await message.get_attribute("data-error") == "token_malformed"
    assert "ungültig" in await message.inner_text()
    await page.get_by_test_id("lang-toggle").click()
    assert "invalid" in await message.inner_text()
    assert await page.evaluate("document.documentElement.lang") == "en"

    # A page opened without any link (a new tab: no token kept for reload) cannot join.
    page = await browser.context.new_page()
    await page.goto(server.base_url + "/join")
    await page.wait_for_selector("body[data-ready=true]")
    assert await page.get_by_test_id("join-button").is_disabled()
    # The language choice was remembered.
    assert await page.evaluate("document.documentElement.lang") == "en"


async def test_keyboard_join(server: Server, launch: Launch) -> None:
    room = server.create_room()
    browser = await launch("client")
    await open_join(browser, room["client_url"])
    page = browser.page
    for _ in range(10):
        await page.keyboard.press("Tab")
        focused = await page.evaluate("document.activeElement.dataset.testid || ''")
        if focused == "join-button":
            break
    else:
        pytest.fail("the join button is not reachable with Tab")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#view-call:not([hidden])", timeout=10000)
    for testid in ("mic-toggle", "cam-toggle", "leave-button"):
        assert await page.get_by_test_id(testid).get_attribute("aria-label")
    await page.get_by_test_id("mic-toggle").press("Enter")
    assert await page.get_by_test_id("mic-toggle").get_attribute("aria-pressed") == "true"


async def test_reload_rejoins_without_anyone_else_reloading(server: Server, launch: Launch) -> None:
    """A reload keeps the link (per tab) and the others get the new tracks by re-offer."""
    room = server.create_room()
    caseworker, client = await launch("caseworker"), await launch("client")
    ids = await _join_all([caseworker, client], [room["caseworker_url"], room["client_url"]])
    await _all_see_each_other([caseworker, client], ids)

    await client.page.reload()
    await client.page.wait_for_selector("body[data-ready=true]")
    await join(client)
    assert await my_id(client) == ids["client"]
    await wait_remote_playing(caseworker, {ids["client"]}, within=30)
    await wait_remote_playing(client, {ids["caseworker"]}, within=30)


async def test_waiting_room_sends_and_receives_nothing(server: Server, launch: Launch) -> None:
    """A lobby token: consent first, then the waiting room, with no media either way."""
    room = server.create_room()
    caseworker, waiting = await launch("caseworker"), await launch("waiting")
    await join(caseworker, room["caseworker_url"])
    lobby_url = server.join_url(
        server.token(room["room"], "client", "Frau Öztürk", "--lobby", "--consent")
    )

    await open_join(waiting, lobby_url)
    page = waiting.page
    join_button = page.get_by_test_id("join-button")
    assert await join_button.is_disabled()
    await page.get_by_test_id("consent").click()
    assert await join_button.is_enabled()
    await join(waiting)
    await page.get_by_test_id("waiting-room").wait_for(timeout=10000)
    assert "Warteraum" in await page.get_by_test_id("status").inner_text()

    await asyncio.sleep(2)
    assert await remote_videos(waiting) == {}
    assert await page.evaluate(
        "window.roundtable.pcs.publish === null && window.roundtable.pcs.subscribe === null"
    )
    assert await remote_videos(caseworker) == {}


async def test_same_link_on_a_second_device_is_refused_with_a_clear_message(
    server: Server, launch: Launch
) -> None:
    """Opening a link elsewhere while its person is in the call: the second device is
    refused in plain German, the caseworker is told, and the call goes on."""
    room = server.create_room()
    caseworker, first, second = [await launch(n) for n in ("caseworker", "first", "second")]
    await join(caseworker, room["caseworker_url"])
    await join(first, room["client_url"])
    await first.page.wait_for_selector("#view-call:not([hidden])")
    await open_join(second, room["client_url"])
    await second.page.get_by_test_id("join-button").click()
    message = second.page.get_by_test_id("error-message")
    await message.wait_for(timeout=15000)
    assert await message.get_attribute("data-error") == "seat_taken"
    assert "anderen Gerät" in await message.inner_text()
    # The page's own German words, never the server's English ones.
    assert await second.page.get_by_test_id("error-detail").is_hidden()
    # The caseworker hears of it; the person in the call stays.
    await wait_js(
        caseworker,
        "document.getElementById('messages').textContent.includes('zweiten Gerät')",
        within=10,
    )
    assert await first.page.locator("#view-call").is_visible()


async def test_reconnects_after_the_connection_drops(server: Server, launch: Launch) -> None:
    """A dropped signalling connection: socket.io reconnects, the page renegotiates both legs."""
    room = server.create_room()
    caseworker, client = await launch("caseworker"), await launch("client")
    ids = await _join_all([caseworker, client], [room["caseworker_url"], room["client_url"]])
    await _all_see_each_other([caseworker, client], ids)

    # Cut the transport under the page, as a network blip would.
    await client.page.evaluate("window.roundtable.call.socket.io.engine.close()")
    await wait_js(client, "window.roundtable.pcs.publish === null", within=5)
    await wait_remote_playing(client, {ids["caseworker"]}, within=30)
    await wait_remote_playing(caseworker, {ids["client"]}, within=30)
    assert await client.page.get_by_test_id("status").inner_text() == "Sie sind im Gespräch."


async def test_camera_off_shows_the_avatar_to_the_others(server: Server, launch: Launch) -> None:
    room = server.create_room()
    caseworker, client = await launch("caseworker"), await launch("client")
    ids = await _join_all([caseworker, client], [room["caseworker_url"], room["client_url"]])
    await _all_see_each_other([caseworker, client], ids)
    tile = f"document.querySelector('li.tile[data-participant=\"{ids['caseworker']}\"]')"

    # The page looks at the frames every 0.4 s (a getStats each time): the picture, not
    # the avatar, once they flow (asserted at once after the test saw frames, the page's
    # next look had not come yet in CI at b50925f).
    await wait_js(client, f"!{tile}.classList.contains('video-stalled')", within=5)
    await caseworker.page.get_by_test_id("cam-toggle").click()
    await wait_js(client, f"{tile}.classList.contains('video-stalled')", within=10)
    await caseworker.page.get_by_test_id("cam-toggle").click()
    await wait_js(client, f"!{tile}.classList.contains('video-stalled')", within=10)
    await wait_remote_playing(client, {ids["caseworker"]})


async def test_screen_share_replaces_the_camera(server: Server, launch: Launch) -> None:
    room = server.create_room()
    caseworker, client = await launch("caseworker"), await launch("client")
    ids = await _join_all([caseworker, client], [room["caseworker_url"], room["client_url"]])
    await _all_see_each_other([caseworker, client], ids)
    # Aspect ratio, not size: under CPU load Chrome scales the camera down, keeping its shape.
    video = f"document.querySelector('video[data-participant=\"{ids['caseworker']}\"]')"
    ratio = f"({video}.videoWidth / {video}.videoHeight)"
    camera = await client.page.evaluate(ratio)
    sending = "window.roundtable.call.senders.video.sender.track"

    button = caseworker.page.get_by_test_id("screen-toggle")
    await button.click()
    await wait_js(caseworker, f"{sending} === window.roundtable.call.screenTrack")
    assert await button.get_attribute("aria-pressed") == "true"
    # The client now receives the (fake) screen: another shape, still playing.
    await wait_js(client, f"Math.abs({ratio} - {camera}) > 0.1", within=20)
    await wait_remote_playing(client, {ids["caseworker"]})

    await button.click()
    await wait_js(caseworker, f"{sending} === window.roundtable.call.senders.video.track")
    await wait_js(client, f"Math.abs({ratio} - {camera}) < 0.05", within=20)
    await wait_remote_playing(client, {ids["caseworker"]})


async def test_listen_only_participant(server: Server, launch: Launch) -> None:
    """A token without `publish`: no camera asked for, sees and hears the others, shows as an avatar."""
    room = server.create_room()
    caseworker, listener = await launch("caseworker"), await launch("listener")
    token = server.token(room["room"], "partner", "Frau Kaya", "--grants", "subscribe,see_client")
    await open_join(listener, server.join_url(token))
    assert (
        "ohne Kamera und Mikrofon" in await listener.page.get_by_test_id("device-hint").inner_text()
    )
    ids = await _join_all([caseworker, listener], [room["caseworker_url"], ""])
    await wait_remote_playing(listener, {ids["caseworker"]})
    assert await listener.page.evaluate("window.roundtable.pcs.publish") is None
    tile = f'li.tile[data-participant="{ids["listener"]}"]'
    await caseworker.page.locator(tile).wait_for()
    await wait_js(
        caseworker, f"document.querySelector('{tile}').classList.contains('video-stalled')"
    )
