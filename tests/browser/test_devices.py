"""Camera, microphone and speaker on the join page and in the call (issue 14).

What headless Chromium with ``--use-fake-device-for-media-stream`` really lists (checked
on Chromium 156): three ``audioinput`` ("Fake Default Audio Input", "Fake Audio Input
1", "Fake Audio Input 2"), one ``videoinput`` ("fake_device_0") and three
``audiooutput``: "Fake Default Audio Output" (deviceId ``default``), "Fake Audio Output
1" and "Fake Audio Output 2"; ``setSinkId`` accepts each of them and refuses an unknown
id (``NotFoundError``). So the choice of speaker is real here: the test reads the
``sinkId`` of the media elements, which is what decides where the browser plays them.

Every click is a real pointer click (Playwright ``click()`` without ``force``), at the
window sizes people have.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser.harness import Browser, Launch, Server, my_id, open_join
from tests.browser.harness import wait_js as _wait_js

pytestmark = pytest.mark.browser

SIZES = [(1280, 720), (1366, 650), (360, 640)]


async def wait_js(browser: Browser, expression: str, within: float = 30.0) -> object:
    """Generous: the machine is shared and often loaded far above its cores."""
    return await _wait_js(browser, expression, within=max(within, 30.0))


_REMOTE_SINKS = """
() => [...document.querySelectorAll('video[data-testid="remote-video"]')].map((v) => v.sinkId)
"""


async def _output_id(browser: Browser, label: str) -> str:
    """The deviceId of the speaker called ``label``, as the page's list offers it."""
    return await browser.page.evaluate(
        """(label) => {
          const opt = [...document.querySelectorAll('#speaker-select option')]
            .find((o) => o.textContent === label);
          return opt ? opt.value : null;
        }""",
        label,
    )


async def _choose_speaker(browser: Browser, label: str) -> str:
    select = browser.page.get_by_test_id("speaker-select")
    # A native <select> opens a list the browser draws itself: check it can be reached
    # by the pointer (nothing lies over it), then pick as the keyboard would.
    await select.click(trial=True)
    device = await _output_id(browser, label)
    assert device, label
    await select.select_option(device)
    await wait_js(browser, f"window.roundtable.output === {device!r}")
    return device


async def _preview_works(browser: Browser) -> None:
    """The camera preview shows moving pictures and the microphone bar moves."""
    await wait_js(
        browser,
        "(() => { const v = document.getElementById('preview'); return v.videoWidth > 0 && v.currentTime > 0.5; })()",
        within=30,
    )
    await wait_js(
        browser,
        "parseFloat(document.getElementById('mic-level').style.getPropertyValue('--level') || '0') > 0",
        within=30,
    )


async def _click_toggle_twice(browser: Browser, testid: str) -> None:
    button = browser.page.get_by_test_id(testid)
    for pressed in ("true", "false"):
        await button.click()
        assert await button.get_attribute("aria-pressed") == pressed


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
async def test_speaker_choice_reaches_every_remote_sound(
    server: Server, launch: Launch, shots: Path, size: tuple[int, int]
) -> None:
    """The client picks a speaker on the join page (the tallest one: consent and "same
    room"), hears the test sound through it, finds the choice again after a reload, and
    every remote tile plays through it; changed in the call, every tile follows."""
    width, height = size
    room = server.create_room(
        caseworker_name="Andrea Berger", client_name="Jürgen Yılmaz", client_consent=True
    )
    client = await launch("client", width=width, height=height)
    page = client.page
    await open_join(client, room["client_url"])
    await _preview_works(client)
    await _click_toggle_twice(client, "mic-toggle-preview")
    await _click_toggle_twice(client, "cam-toggle-preview")
    # Every other control of the pre-join page takes a pointer click too.
    same = page.get_by_test_id("same-room")
    for checked in (True, False):
        await same.click()
        assert await same.is_checked() is checked
    for lang in ("en", "de"):
        await page.get_by_test_id("lang-toggle").click()
        assert await page.evaluate("document.documentElement.lang") == lang

    labels = await page.evaluate(
        "[...document.querySelectorAll('#speaker-select option')].map((o) => o.textContent)"
    )
    assert {"Fake Audio Output 1", "Fake Audio Output 2"} <= set(labels), labels
    assert await page.get_by_test_id("speaker-note").is_hidden()
    first = await _choose_speaker(client, "Fake Audio Output 1")

    await page.get_by_test_id("speaker-test").click()
    await wait_js(
        client,
        f"(() => {{ const a = window.roundtable.testSound; return a && a.sinkId === {first!r}"
        " && a.currentSrc.endsWith('/static/sounds/test.wav') && (a.currentTime > 0 || a.ended); })()",
    )
    assert "kurzen Ton" in await page.get_by_test_id("messages").inner_text()
    await page.screenshot(path=shots / f"prejoin-devices-{width}x{height}.png", full_page=True)

    # Remembered for this tab: a reload finds the same speaker chosen.
    await page.reload()
    await page.wait_for_selector("body[data-ready=true]", timeout=45000)
    assert await page.get_by_test_id("speaker-select").input_value() == first
    assert await page.evaluate("window.roundtable.output") == first

    await page.get_by_test_id("consent").click()
    await page.get_by_test_id("join-button").click()
    await page.wait_for_selector("#view-call:not([hidden])", timeout=45000)

    # Someone arriving after the choice: their tile plays through it from the start.
    caseworker = await launch("caseworker")
    await open_join(caseworker, room["caseworker_url"])
    await caseworker.page.get_by_test_id("join-button").click()
    await wait_js(caseworker, "Boolean(window.roundtable && window.roundtable.you)", within=45)
    cw_id = await my_id(caseworker)
    await wait_js(
        client,
        f"document.querySelector('video[data-participant=\"{cw_id}\"]')?.srcObject instanceof MediaStream",
        within=30,
    )
    assert await page.evaluate(_REMOTE_SINKS) == [first]

    # Changed mid-call from the panel's device menu: every remote tile follows.
    await page.get_by_test_id("panel-toggle").click()
    assert await page.locator("#panel #speaker-select").count() == 1
    second = await _choose_speaker(client, "Fake Audio Output 2")
    assert second != first
    wanted = json.dumps([second])
    await wait_js(client, f"JSON.stringify(({_REMOTE_SINKS})()) === {wanted!r}")
    # Said once every element has the speaker (chooseOutput awaits them all): the remote
    # tiles can have it a moment before the rest, on a loaded machine (a CI run saw the
    # message missing right after the tiles switched).
    await wait_js(
        client,
        "document.getElementById('messages').innerText.includes('Fake Audio Output 2')",
    )
    await page.get_by_test_id("speaker-test").click()
    await wait_js(client, f"window.roundtable.testSound.sinkId === {second!r}")
    await page.locator("#panel #speaker-row").scroll_into_view_if_needed()
    await page.screenshot(path=shots / f"call-devices-{width}x{height}.png")


_NO_SINK_ID = "delete HTMLMediaElement.prototype.setSinkId;"


async def test_speaker_choice_explained_where_the_browser_has_none(
    server: Server, launch: Launch
) -> None:
    """A browser without ``setSinkId`` (Safari, Firefox before 116): no list that would do
    nothing, a note saying why, and the test sound still plays (through the default)."""
    room = server.create_room(client_name="Jürgen Yılmaz")
    client = await launch("client", width=360, height=640)
    await client.context.add_init_script(_NO_SINK_ID)
    await open_join(client, room["client_url"])
    page = client.page
    assert await page.evaluate("'setSinkId' in HTMLMediaElement.prototype") is False
    assert await page.get_by_test_id("speaker-select").is_hidden()
    note = page.get_by_test_id("speaker-note")
    assert await note.is_visible()
    assert "Lautsprecher" in await note.inner_text()
    await page.get_by_test_id("speaker-test").click()
    await wait_js(
        client,
        "(() => { const a = window.roundtable.testSound; return a && (a.currentTime > 0 || a.ended); })()",
    )
    await page.get_by_test_id("join-button").click()
    await page.wait_for_selector("#view-call:not([hidden])", timeout=45000)
