"""The counselling room as people use it (issue 14), at the window sizes people have.

Every click here is a real pointer click (Playwright ``click()`` without ``force``): an
element lying over a button makes the test fail, as it makes the click fail for a person.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.harness import Browser, Launch, Server, my_id, open_join, wait_js

pytestmark = pytest.mark.browser

SIZES = [(1280, 720), (1366, 650), (360, 640)]


async def click_join(browser: Browser) -> str:
    """On the pre-join page: tick the consent box if there is one, press the join button."""
    page = browser.page
    consent = page.get_by_test_id("consent")
    if await consent.is_visible():
        await consent.click()
        assert await consent.is_checked()
    await page.get_by_test_id("join-button").click()
    await wait_js(browser, "Boolean(window.roundtable && window.roundtable.you)", within=15)
    return await my_id(browser)


async def in_call(browser: Browser) -> None:
    await browser.page.wait_for_selector("#view-call:not([hidden])", timeout=15000)


async def open_panel(browser: Browser) -> None:
    if await browser.page.get_by_test_id("panel").is_hidden():
        await browser.page.get_by_test_id("panel-toggle").click()


async def admit_from_panel(caseworker: Browser, pid: str) -> None:
    await open_panel(caseworker)
    entry = caseworker.page.locator(f'[data-testid="lobby-entry"][data-participant="{pid}"]')
    await entry.get_by_test_id("admit").click()


async def invite_partner(caseworker: Browser, organisation: str, name: str) -> str:
    """Fill the dial-in form by pointer and keyboard; returns the link, dialog left open."""
    page = caseworker.page
    await page.get_by_test_id("dial-in-button").click()
    await page.get_by_test_id("invite-organisation").click()
    await page.keyboard.type(organisation)
    await page.get_by_test_id("invite-name").click()
    await page.keyboard.type(name)
    await page.get_by_test_id("invite-submit").click()
    link = page.get_by_test_id("invite-link")
    await link.wait_for(timeout=10000)
    return await link.input_value()


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
async def test_join_by_pointer_and_admit_while_inviting(
    server: Server, launch: Launch, shots: Path, size: tuple[int, int]
) -> None:
    """Pre-join → join by pointer for all three roles; the partner who arrives while the
    invite dialog is still open is let in from the dialog."""
    width, height = size
    room = server.create_room(caseworker_name="Andrea Berger", client_name="Jürgen Yılmaz")
    caseworker, client, partner = [
        await launch(n, width=width, height=height) for n in ("caseworker", "client", "partner")
    ]
    await open_join(caseworker, room["caseworker_url"])
    await click_join(caseworker)
    await in_call(caseworker)

    await open_join(client, room["client_url"])
    cl_id = await click_join(client)
    if await client.page.get_by_test_id("waiting-room").is_visible():
        await admit_from_panel(caseworker, cl_id)
    await in_call(client)

    invite_url = server.local_url(
        await invite_partner(caseworker, "Deutsche Rentenversicherung", "Dr. Petra Sommer")
    )
    await open_join(partner, invite_url)
    await partner.page.screenshot(path=shots / f"room-prejoin-partner-{width}x{height}.png")
    pa_id = await click_join(partner)
    await partner.page.get_by_test_id("waiting-room").wait_for()

    # The dialog with the link is still open; the waiting partner is let in from it.
    dialog = caseworker.page.get_by_test_id("invite-dialog")
    assert await dialog.is_visible()
    entry = dialog.locator(f'[data-testid="invite-lobby-entry"][data-participant="{pa_id}"]')
    await entry.wait_for(timeout=10000)
    await caseworker.page.screenshot(path=shots / f"room-admit-in-dialog-{width}x{height}.png")
    await entry.get_by_test_id("admit").click()
    await in_call(partner)
    await dialog.get_by_role("button", name="Schließen").click()
    await dialog.wait_for(state="hidden")
    await wait_js(
        caseworker,
        f"[...document.querySelectorAll('video[data-testid=remote-video]')].map(v => v.dataset.participant).sort().join() === {','.join(sorted([cl_id, pa_id]))!r}",
        within=15,
    )


EVIL = '<script>window.pwned = 1</script><b>fett</b> & "Az. 4711-XY"'


async def test_chat_escaped_unread_announced_and_switchable(
    server: Server, launch: Launch, shots: Path
) -> None:
    """Client (phone) and caseworker chat; an interpreter with only the chat right types
    along without camera or microphone; the caseworker switches the chat off."""
    room = server.create_room(caseworker_name="Andrea Berger", client_name="Jürgen Yılmaz")
    caseworker = await launch("caseworker")
    client = await launch("client", width=360, height=640)
    interpreter = await launch("interpreter", width=1366, height=650)
    for b, key in ((caseworker, "caseworker_url"), (client, "client_url")):
        await open_join(b, room[key])
        await click_join(b)
        await in_call(b)
    cw_token = room["caseworker_url"].split("#token=", 1)[1]
    status, invite = server.request(
        "POST",
        f"/api/rooms/{room['room']}/invites",
        {
            "organisation_type": "interpreter",
            "organisation": "Dolmetschdienst Köln",
            "name": "Elif Aydın",
            "rights": ["chat"],
            "waiting_room": False,
        },
        token=cw_token,
    )
    assert status == 201, invite
    await open_join(interpreter, server.local_url(invite["invite_url"]))
    ip_id = await click_join(interpreter)
    await in_call(interpreter)
    assert await interpreter.page.evaluate("window.roundtable.pcs.publish") is None

    # The client writes from the phone; what they typed is shown as text, never run.
    cl = client.page
    await cl.get_by_test_id("chat-toggle").click()
    await cl.get_by_test_id("chat-input").click()
    await cl.keyboard.type(EVIL)
    await cl.get_by_test_id("chat-send").click()
    await cl.get_by_test_id("chat-message").first.wait_for()
    assert await cl.get_by_test_id("chat-input").input_value() == ""
    await cl.screenshot(path=shots / "room-chat-phone-de.png")

    cw = caseworker.page
    badge = cw.get_by_test_id("chat-unread")
    await badge.wait_for(timeout=10000)
    assert await badge.inner_text() == "1"
    # A screen reader hears it although the chat is closed.
    await wait_js(
        caseworker,
        "document.querySelector('[data-testid=status]').textContent.includes('Nachricht von Jürgen Yılmaz')",
    )
    await cw.get_by_test_id("chat-toggle").click()
    assert await badge.is_hidden()
    message = cw.get_by_test_id("chat-message").first
    assert await message.locator(".chat-text").inner_text() == EVIL
    assert await cw.evaluate(
        "window.pwned === undefined && !document.querySelector('#chat-log b, #chat-log script')"
    )
    assert "nicht gespeichert" in await cw.get_by_test_id("chat-panel").inner_text()

    # The interpreter, without camera or microphone, answers by chat.
    ip = interpreter.page
    await ip.get_by_test_id("chat-toggle").click()
    await ip.get_by_test_id("chat-input").click()
    await ip.keyboard.type("Ich übersetze ins Türkische.")
    await ip.keyboard.press("Enter")
    line = cw.locator(f'[data-testid="chat-message"][data-from="{ip_id}"]')
    await line.wait_for(timeout=10000)
    assert "Elif Aydın" in await line.inner_text()
    await cw.screenshot(path=shots / "room-chat-desktop-de.png")

    # The caseworker switches the chat off: the others can no longer write.
    await open_panel(caseworker)
    await cw.get_by_test_id("chat-allow").click()
    await wait_js(client, "document.querySelector('[data-testid=chat-input]').disabled")
    assert await cl.get_by_test_id("chat-send").is_disabled()
    assert await cl.locator("#chat-off").is_visible()

    # Nothing of what was written is in the server's log.
    log = server.log_path.read_text(errors="replace")
    assert "4711" not in log and "Türkische" not in log
