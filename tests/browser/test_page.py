"""The page itself: every server error has words in both languages, and how it looks.

The screenshots land in ``$ROUNDTABLE_SCREENSHOTS`` (or a temp dir, printed) so a person
can judge the look; the test asserts only that they were taken of the expected views.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser.harness import (
    ROOT,
    Launch,
    Server,
    join,
    my_id,
    open_join,
    unnamed_controls,
    wait_js,
    wait_remote_playing,
)

pytestmark = pytest.mark.browser


def _protocol_error_codes() -> list[str]:
    """The codes listed in docs/protocol.md: the Errors list and the "Extra error codes"."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    listing = section.split("Token codes:", 1)[1].split("\n\n", 1)[0]
    codes = re.findall(r"`([a-z_]+)`", listing)
    assert len(codes) > 20, codes
    for extra in re.findall(r"Extra error codes:(.*?)(?:\n\n|$)", text, re.S):
        codes += re.findall(r"`([a-z_]+)`", extra)
    return sorted(set(codes))


async def test_every_error_code_has_a_message(server: Server, launch: Launch) -> None:
    browser = await launch("reader")
    await open_join(browser, server.base_url + "/join")
    missing = await browser.page.evaluate(
        """async (codes) => {
          const i18n = await import('/static/i18n.js');
          const missing = [];
          for (const lang of ['de', 'en']) {
            i18n.setLang(lang);
            for (const code of codes) {
              if (i18n.errorMessage(code, '\\u0000') === '\\u0000') missing.push(`${lang}:${code}`);
            }
          }
          i18n.setLang('de');
          return missing;
        }""",
        _protocol_error_codes(),
    )
    assert missing == []


def _pngs(path: Path) -> list[str]:
    # This test's own (numbered) screenshots; others may share the folder.
    return sorted(p.name for p in path.glob("[0-9]*.png"))


async def test_screenshots(server: Server, launch: Launch, shots: Path) -> None:
    room = server.create_room(caseworker_name="Andrea Berger", client_name="Jürgen Yılmaz")
    caseworker = await launch("caseworker")
    client = await launch("client", width=390, height=844)

    await open_join(caseworker, room["caseworker_url"])
    await caseworker.page.screenshot(path=shots / "1-prejoin-de.png")
    assert await unnamed_controls(caseworker) == []
    await caseworker.page.get_by_test_id("join-button").focus()
    await caseworker.page.keyboard.press("Shift+Tab")
    await caseworker.page.screenshot(path=shots / "2-prejoin-focus.png")
    await open_join(client, room["client_url"])
    await client.page.screenshot(path=shots / "3-prejoin-mobile-de.png", full_page=True)

    await join(caseworker)
    await wait_js(caseworker, "document.querySelector('[data-testid=local-video]')?.videoWidth > 0")
    await caseworker.page.screenshot(path=shots / "4-call-alone-de.png")
    await join(client)
    cw_id, cl_id = await my_id(caseworker), await my_id(client)
    await wait_remote_playing(caseworker, {cl_id})
    await wait_remote_playing(client, {cw_id})
    await caseworker.page.screenshot(path=shots / "5-call-two-de.png")
    await client.page.screenshot(path=shots / "6-call-two-mobile-de.png")
    cw = caseworker.page
    await cw.get_by_test_id("panel-toggle").click()
    await cw.get_by_test_id("panel").wait_for()
    await cw.screenshot(path=shots / "5b-panel-de.png")
    assert await unnamed_controls(caseworker) == []
    await cw.get_by_test_id("panel-toggle").click()
    await cw.get_by_test_id("dial-in-button").click()
    await cw.get_by_test_id("invite-organisation").fill("Deutsche Rentenversicherung")
    await cw.screenshot(path=shots / "5c-dial-in-form-de.png")
    assert await unnamed_controls(caseworker) == []
    await cw.keyboard.press("Escape")
    partner = await launch("partner")
    partner_token = server.token(
        room["room"],
        "partner",
        "Dr. Petra Sommer",
        "--org",
        "Deutsche Rentenversicherung",
        "--grants",
        "publish,subscribe,audio,video,see_client",
    )
    await join(partner, server.join_url(partner_token))
    await wait_remote_playing(caseworker, {cl_id, await my_id(partner)})
    await caseworker.page.screenshot(path=shots / "6b-call-three-de.png")
    await partner.close()
    await caseworker.page.get_by_test_id("mic-toggle").click()
    await caseworker.page.get_by_test_id("lang-toggle").click()
    await caseworker.page.screenshot(path=shots / "7-call-two-en-muted.png")

    await caseworker.page.get_by_test_id("cam-toggle").click()
    await wait_js(client, "document.querySelector('li.tile.video-stalled') !== null")
    await client.page.screenshot(path=shots / "7b-camera-off-mobile-de.png")
    await caseworker.page.screenshot(path=shots / "7c-own-camera-off-en.png")

    await client.page.get_by_test_id("leave-button").click()
    await client.page.wait_for_selector("#view-ended:not([hidden])")
    await client.page.screenshot(path=shots / "8-left-mobile-de.png")

    stranger = await launch("stranger")
    await open_join(stranger, server.join_url("eyJhbGciOiJub25lIn0.e30.x"))
    await stranger.page.screenshot(path=shots / "9-bad-link-de.png")
    await stranger.page.get_by_test_id("join-button").click()
    await stranger.page.get_by_test_id("error-message").wait_for()
    await stranger.page.screenshot(path=shots / "10-refused-de.png")

    lobby = await launch("lobby", width=1024, height=720)
    await open_join(
        lobby,
        server.join_url(
            server.token(room["room"], "client", "Sevgi Öztürk", "--lobby", "--consent")
        ),
    )
    await lobby.page.screenshot(path=shots / "11-prejoin-consent-de.png")
    await lobby.page.get_by_test_id("consent").click()
    await join(lobby)
    await lobby.page.get_by_test_id("waiting-room").wait_for()
    await lobby.page.screenshot(path=shots / "12-waiting-room-de.png")
    assert await unnamed_controls(lobby) == []

    await caseworker.page.set_viewport_size({"width": 390, "height": 844})
    if await caseworker.page.get_by_test_id("panel").is_hidden():
        await caseworker.page.get_by_test_id("panel-toggle").click()
    await caseworker.page.screenshot(path=shots / "13-caseworker-phone-en.png")

    taken = _pngs(shots)
    assert len(taken) == 18, taken


async def test_device_choice_swaps_the_preview_track(server: Server, launch: Launch) -> None:
    room = server.create_room()
    browser = await launch("client")
    await open_join(browser, room["client_url"])
    page = browser.page
    counts = await page.evaluate(
        """async () => {
          const d = await navigator.mediaDevices.enumerateDevices();
          return {video: d.filter(x => x.kind === 'videoinput').length,
                  audio: d.filter(x => x.kind === 'audioinput').length};
        }"""
    )
    print(f"[devices] fake devices: {counts}")
    # The level bar moves with the (fake, beeping) microphone before anyone joins.
    await page.get_by_test_id("local-preview").click()
    await wait_js(
        browser,
        "parseFloat(document.getElementById('mic-level').style.getPropertyValue('--level') || 0) > 0.05",
        within=10,
    )
    select = page.get_by_test_id("mic-select")
    if counts["audio"] < 2:
        assert await select.is_hidden()
        return
    await select.wait_for()
    before = await page.evaluate(
        "document.getElementById('preview').srcObject.getAudioTracks()[0].getSettings().deviceId"
    )
    options = await select.locator("option").evaluate_all("os => os.map(o => o.value)")
    other = next(o for o in options if o != before)
    await select.select_option(other)
    await wait_js(
        browser,
        f"document.getElementById('preview').srcObject.getAudioTracks()[0].getSettings().deviceId === {other!r}",
    )
    await join(browser)
    await page.wait_for_selector("#view-call:not([hidden])")

    # Mid-call, from the side panel: the publish leg sends the new microphone.
    await page.get_by_test_id("panel-toggle").click()
    sender = "window.roundtable.call.senders.audio.sender.track"
    await wait_js(browser, f"{sender} !== null")
    third = next((o for o in options if o not in (before, other)), before)
    await page.get_by_test_id("mic-select").select_option(third)
    await wait_js(browser, f"{sender}.getSettings().deviceId === {third!r}")
