"""The counselling flows of DESIGN.md in three real browsers (issue 4).

Caseworker and client are in a call; the client came through the waiting room if its
link says so; the caseworker dials in a partner, admits them, removes them again (the
invite cannot be reused) and finally ends the session for everyone.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import web

from tests.browser.harness import (
    Browser,
    Launch,
    Server,
    free_port,
    join,
    join_to_first_frame_ms,
    my_id,
    open_join,
    remote_videos,
    wait_js,
    wait_remote_playing,
    wait_remote_set,
)

pytestmark = pytest.mark.browser


async def _join_through_lobby(
    guest: Browser, caseworker: Browser, url: str, shots: Path | None = None
) -> str:
    """Open ``url``; if the link leads through the waiting room, consent and get admitted."""
    await open_join(guest, url)
    consent = guest.page.get_by_test_id("consent")
    if await consent.is_visible():
        await consent.click()
        assert await consent.is_checked()
    await join(guest)
    pid = await my_id(guest)
    if await guest.page.get_by_test_id("waiting-room").is_visible():
        entry = caseworker.page.locator(f'[data-testid="lobby-entry"][data-participant="{pid}"]')
        await entry.wait_for(timeout=10000)
        assert await entry.get_by_test_id("admit").is_visible()
        if shots:
            await caseworker.page.screenshot(path=shots / f"c-lobby-{guest.name}.png")
        await entry.get_by_test_id("admit").click()
    await guest.page.wait_for_selector("#view-call:not([hidden])", timeout=15000)
    return pid


async def _refused(browser: Browser, url: str) -> str:
    """Open a link in a fresh tab, join, and return the error code the page shows."""
    page = await browser.context.new_page()
    await page.goto(url)
    await page.wait_for_selector("body[data-ready=true]")
    message = page.get_by_test_id("error-message")
    # A link that cannot work any more is refused by the page's check before the camera
    # starts; otherwise the refusal comes at the join.
    if not await message.is_visible():
        consent = page.get_by_test_id("consent")
        if await consent.is_visible():
            await consent.click()
            assert await consent.is_checked()
        await page.get_by_test_id("join-button").click()
    await message.wait_for(timeout=10000)
    code = await message.get_attribute("data-error")
    assert await message.inner_text()
    await page.close()
    return code or ""


async def test_dial_in_remove_and_end(server: Server, launch: Launch, shots: Path) -> None:
    room = server.create_room(caseworker_name="Andrea Berger", client_name="Jürgen Yılmaz")
    caseworker, client, partner = [await launch(n) for n in ("caseworker", "client", "partner")]

    await join(caseworker, room["caseworker_url"])
    cw_id = await my_id(caseworker)
    cl_id = await _join_through_lobby(client, caseworker, room["client_url"])
    await asyncio.gather(
        wait_remote_playing(caseworker, {cl_id}), wait_remote_playing(client, {cw_id})
    )

    # Dial in: only organisation and name filled, everything else by default.
    cw = caseworker.page
    await cw.get_by_test_id("dial-in-button").click()
    await cw.get_by_test_id("invite-organisation").fill("Deutsche Rentenversicherung")
    await cw.get_by_test_id("invite-name").fill("Dr. Petra Sommer")
    submitted = time.monotonic()
    await cw.get_by_test_id("invite-submit").click()
    link = cw.get_by_test_id("invite-link")
    await link.wait_for(timeout=10000)
    invite_url = server.local_url(await link.input_value())
    assert "#token=" in invite_url
    await cw.screenshot(path=shots / "c-invite-link.png")
    await cw.keyboard.press("Escape")

    pa_id = await _join_through_lobby(partner, caseworker, invite_url, shots)
    await asyncio.gather(
        wait_remote_playing(caseworker, {cl_id, pa_id}, within=45),
        wait_remote_playing(client, {cw_id, pa_id}, within=45),
        wait_remote_playing(partner, {cw_id, cl_id}, within=45),
    )
    print(
        f"[timing] dial-in submit → partner playing on the caseworker's page: "
        f"{time.monotonic() - submitted:.1f} s (incl. the test's typing and admit clicks)"
    )
    print(
        f"[timing] partner: join click → first remote frame {await join_to_first_frame_ms(partner)} ms"
    )
    label = cw.locator(f'li.tile[data-participant="{pa_id}"] .tile-label')
    assert "Deutsche Rentenversicherung" in await label.inner_text()
    await cw.screenshot(path=shots / "c-three.png")

    # Remove the partner: gone from both other pages, told why, invite dead.
    if await cw.get_by_test_id("panel").is_hidden():
        await cw.get_by_test_id("panel-toggle").click()
    await cw.locator(f'[data-testid="remove-participant"][data-participant="{pa_id}"]').click()
    await asyncio.gather(
        wait_remote_set(caseworker, {cl_id}, within=5), wait_remote_set(client, {cw_id}, within=5)
    )
    removed = partner.page.get_by_test_id("error-message")
    await removed.wait_for(timeout=10000)
    assert await removed.get_attribute("data-error") == "removed"
    await partner.page.screenshot(path=shots / "c-partner-removed.png")
    assert await _refused(partner, invite_url) in ("invite_used", "token_revoked")

    # End for all: both pages say so, and their links stop working.
    await cw.get_by_test_id("end-session").click()
    await cw.get_by_test_id("end-session-confirm").click()
    for b in (client, caseworker):
        message = b.page.get_by_test_id("error-message")
        await message.wait_for(timeout=10000)
        assert await message.get_attribute("data-error") in ("room_ended", "room_closed")
        await b.page.screenshot(path=shots / f"c-ended-{b.name}.png")
    assert await _refused(client, room["client_url"]) in (
        "room_closed",
        "room_ended",
        "token_revoked",
    )
    assert await _refused(caseworker, room["caseworker_url"]) in (
        "room_closed",
        "room_ended",
        "token_revoked",
    )


async def test_host_away_banner(server: Server, launch: Launch) -> None:
    """The caseworker's connection drops: the others see that it is only for a moment."""
    room = server.create_room()
    caseworker, client = await launch("caseworker"), await launch("client")
    await join(caseworker, room["caseworker_url"])
    await _join_through_lobby(client, caseworker, room["client_url"])
    await caseworker.close()
    banner = client.page.get_by_test_id("host-banner")
    await banner.wait_for(timeout=15000)
    assert "Ihre Beratungsperson ist kurz nicht verbunden" in await banner.inner_text()
    await wait_js(client, "!document.getElementById('view-call').hidden")

    # Back with the same link: host rights resume, the banner goes, the call goes on.
    returned = await launch("caseworker-again")
    await join(returned, room["caseworker_url"])
    await banner.wait_for(state="hidden", timeout=15000)
    await wait_remote_playing(client, {await my_id(returned)})
    assert await returned.page.get_by_test_id("end-session").is_visible()


async def test_mute_lock_and_deny(server: Server, launch: Launch) -> None:
    room = server.create_room(caseworker_name="Andrea Berger", client_name="Jürgen Yılmaz")
    caseworker, client, guest = [await launch(n) for n in ("caseworker", "client", "guest")]
    await join(caseworker, room["caseworker_url"])
    cw_id = await my_id(caseworker)
    cl_id = await _join_through_lobby(client, caseworker, room["client_url"])
    await wait_remote_playing(caseworker, {cl_id})
    cw = caseworker.page
    client_tile = f"document.querySelector('li.tile[data-participant=\"{cl_id}\"]')"

    # Mute: the client is told and its toggle shows it; unmuting is the client's choice.
    await cw.get_by_test_id("panel-toggle").click()
    await cw.locator(
        f'li.person[data-participant="{cl_id}"] [data-testid="mute-participant"]'
    ).click()
    await wait_js(
        client,
        "document.querySelector('[data-testid=mic-toggle]').getAttribute('aria-pressed') === 'true'",
    )
    assert "stummgeschaltet" in await client.page.get_by_test_id("status").inner_text()
    await wait_js(caseworker, f"{client_tile}.classList.contains('mic-muted')")
    await client.page.get_by_test_id("mic-toggle").click()
    await wait_js(caseworker, f"!{client_tile}.classList.contains('mic-muted')")

    # Lock: everyone is told; a waiting guest cannot be admitted, then is declined.
    await cw.get_by_test_id("lock-toggle").click()
    await wait_js(
        client, "document.querySelector('[data-testid=status]').textContent.includes('gesperrt')"
    )
    lobby_url = server.join_url(
        server.token(room["room"], "client", "Frau Öztürk", "--lobby", "--consent")
    )
    await open_join(guest, lobby_url)
    await guest.page.get_by_test_id("consent").click()
    await join(guest)
    guest_id = await my_id(guest)
    await guest.page.get_by_test_id("waiting-room").wait_for()
    entry = cw.locator(f'[data-testid="lobby-entry"][data-participant="{guest_id}"]')
    await entry.get_by_test_id("admit").click()
    # The refusal (room_locked) reaches the caseworker in words, not just a silent no.
    await wait_js(
        caseworker,
        "document.querySelector('[data-testid=status]').textContent.includes('gerade gesperrt')",
    )
    assert await guest.page.get_by_test_id("waiting-room").is_visible()
    await entry.get_by_test_id("deny").click()
    message = guest.page.get_by_test_id("error-message")
    await message.wait_for(timeout=10000)
    assert await message.get_attribute("data-error") == "lobby_denied"
    assert set(await remote_videos(caseworker)) == {cl_id}
    assert set(await remote_videos(client)) == {cw_id}


async def test_dial_in_by_keyboard_alone(server: Server, launch: Launch) -> None:
    """Tab to "Partner hinzuschalten", Enter, type, Enter: the invite link appears."""
    room = server.create_room()
    caseworker = await launch("caseworker")
    await join(caseworker, room["caseworker_url"])
    page = caseworker.page
    await page.wait_for_selector("#view-call:not([hidden])")
    for _ in range(20):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.dataset.testid || ''") == "dial-in-button":
            break
    else:
        pytest.fail("the dial-in button is not reachable with Tab")
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.activeElement.dataset.testid") == "invite-organisation"
    await page.keyboard.type("Handwerkskammer")
    await page.keyboard.press("Tab")
    await page.keyboard.type("Herr Adler")
    await page.keyboard.press("Enter")
    link = page.get_by_test_id("invite-link")
    await link.wait_for(timeout=10000)
    assert "#token=" in await link.input_value()
    await page.keyboard.press("Escape")
    await page.get_by_test_id("invite-dialog").wait_for(state="hidden")


WEBHOOK_PORT = free_port()


@pytest.mark.parametrize(
    "server",
    [{"ROUNDTABLE_INVITE_WEBHOOK": f"http://127.0.0.1:{WEBHOOK_PORT}/invites"}],
    indirect=True,
)
async def test_invite_delivery_reaches_the_caseworker(server: Server, launch: Launch) -> None:
    """With a webhook configured, the dialog tells whether the agency's service got the invite."""
    received: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/invites", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", WEBHOOK_PORT).start()
    try:
        room = server.create_room()
        caseworker = await launch("caseworker")
        await join(caseworker, room["caseworker_url"])
        page = caseworker.page
        await page.get_by_test_id("dial-in-button").click()
        await page.get_by_test_id("invite-organisation").fill("IHK Köln")
        await page.get_by_test_id("invite-name").fill("Frau Lange")
        await page.get_by_test_id("invite-submit").click()
        delivery = page.get_by_test_id("invite-delivery")
        await wait_js(
            caseworker,
            "document.querySelector('[data-testid=invite-delivery]').textContent.includes('zugestellt.')",
            within=15,
        )
        assert "automatisch zugestellt" in await delivery.inner_text()
        assert [r["organisation"] for r in received] == ["IHK Köln"]
    finally:
        await runner.cleanup()
