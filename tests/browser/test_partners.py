"""The partner directory in the dial-in form (issue 14): a caseworker types the first
letters of a partner organisation, picks it with the pointer or the keyboard, the form
fills in, and one more click makes the invite (mailed through a real SMTP server) whose
link lets the partner join. axe-core over the open suggestion list, desktop and phone."""

from __future__ import annotations

import email
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.browser.harness import (
    Browser,
    Launch,
    Server,
    axe_findings,
    claims_of,
    free_port,
    join,
    my_id,
    open_join,
    unnamed_controls,
    wait_remote_playing,
)

pytestmark = pytest.mark.browser

SMTP_PORT = free_port()
WITH_SMTP = {
    "ROUNDTABLE_SMTP_URL": f"smtp://127.0.0.1:{SMTP_PORT}",
    "ROUNDTABLE_SMTP_FROM": "beratung@agentur.example",
}

DRV_BUND = {
    "name": "Deutsche Rentenversicherung Bund",
    "type": "pension_insurance",
    "contact": "Dr. Petra Sommer",
    "email": "reha@drv-bund.example",
    "rights": ["audio", "video", "chat"],
    "valid_minutes": 45,
}
DIRECTORY = [
    DRV_BUND,
    {"name": "Deutsche Rentenversicherung Nord", "type": "pension_insurance"},
    {
        "name": "IHK Köln",
        "type": "chamber",
        "contact": "Herr Adler",
        "rights": ["audio", "screen", "chat"],
        "valid_minutes": 20,
    },
    {"name": "Sprachmittlung Rhein", "type": "interpreter", "rights": ["audio", "chat"]},
]


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd API)
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"


def _fill_directory(server: Server) -> dict[str, str]:
    ids = {}
    for entry in DIRECTORY:
        status, made = server.request("POST", "/api/partners", entry)
        assert status == 201, made
        ids[entry["name"]] = made["id"]
    return ids


async def _open_dial_in(server: Server, launch: Launch, **size: Any) -> tuple[Browser, dict]:
    room = server.create_room(caseworker_name="Andrea Berger")
    caseworker = await launch("caseworker", **size)
    await join(caseworker, room["caseworker_url"])
    await caseworker.page.get_by_test_id("dial-in-button").click()
    await caseworker.page.get_by_test_id("invite-dialog").wait_for()
    return caseworker, room


async def _form(page: Any) -> dict[str, Any]:
    return await page.evaluate(
        """() => ({
          organisation: document.getElementById('invite-organisation').value,
          type: document.getElementById('invite-type').value,
          name: document.getElementById('invite-name').value,
          email: document.getElementById('invite-email').value,
          minutes: document.getElementById('invite-minutes').value,
          rights: [...document.querySelectorAll('#invite-form input[name=rights]:checked')]
            .map((i) => i.value),
        })"""
    )


async def _options(page: Any) -> list[str]:
    return await page.locator('[data-testid="partner-option"] .partner-name').all_inner_texts()


async def _combobox(page: Any) -> dict[str, Any]:
    return await page.evaluate(
        """() => {
          const input = document.getElementById('invite-organisation');
          const active = input.getAttribute('aria-activedescendant');
          const el = active && document.getElementById(active);
          return {
            expanded: input.getAttribute('aria-expanded'),
            active: el ? el.querySelector('.partner-name').textContent : null,
            selected: el ? el.getAttribute('aria-selected') : null,
            focus: document.activeElement.id,
          };
        }"""
    )


@pytest.mark.parametrize("server", [WITH_SMTP], indirect=True)
async def test_pick_a_partner_with_the_pointer_and_the_partner_joins(
    server: Server, launch: Launch, shots: Path
) -> None:
    inbox = _Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=SMTP_PORT)
    smtp.start()
    try:
        ids = _fill_directory(server)
        caseworker, room = await _open_dial_in(server, launch)
        cw = caseworker.page
        field = cw.get_by_test_id("invite-organisation")
        await cw.locator("#invite-partner-hint").wait_for()  # the directory has arrived
        # First letters: both pension insurers, nothing else; the list is announced.
        await field.press_sequentially("deu", delay=40)
        await cw.get_by_test_id("partner-list").wait_for()
        assert await _options(cw) == [
            "Deutsche Rentenversicherung Bund",
            "Deutsche Rentenversicherung Nord",
        ]
        assert (await _combobox(cw))["expanded"] == "true"
        assert "2 Vorschläge" in await cw.get_by_test_id("partner-status").inner_text()
        assert await axe_findings(caseworker) == []
        assert await unnamed_controls(caseworker) == []
        await cw.screenshot(path=shots / "partners-suggest-desktop-de.png")
        # "koln" without the umlaut finds "IHK Köln"; back to "Deutsche R".
        await field.fill("")
        await field.press_sequentially("koln", delay=40)
        assert await _options(cw) == ["IHK Köln"]
        await field.fill("")
        await field.press_sequentially("Deutsche R", delay=40)
        option = cw.locator(
            f'[data-testid="partner-option"][data-partner="{ids[DRV_BUND["name"]]}"]'
        )
        await option.click()  # a person's click: nothing may lie over the option

        assert await cw.get_by_test_id("partner-list").is_hidden()
        assert await _form(cw) == {
            "organisation": "Deutsche Rentenversicherung Bund",
            "type": "pension_insurance",
            "name": "Dr. Petra Sommer",
            "email": "reha@drv-bund.example",
            "minutes": "45",
            "rights": ["audio", "video", "chat"],
        }
        status = await cw.get_by_test_id("partner-status").inner_text()
        assert "Deutsche Rentenversicherung Bund" in status and "eingetragen" in status
        assert (await _combobox(cw))["focus"] == "invite-organisation"

        # The second click: the invite, mailed to the partner's contact address.
        await cw.get_by_test_id("invite-submit").click()
        link = cw.get_by_test_id("invite-link")
        await link.wait_for(timeout=30000)
        invite_url = server.local_url(await link.input_value())
        claims = claims_of(invite_url)
        assert claims["org"] == "Deutsche Rentenversicherung Bund"
        assert claims["org_type"] == "pension_insurance" and claims["name"] == "Dr. Petra Sommer"
        assert {"audio", "video", "chat"} <= set(claims["grants"])
        assert not {"screen", "see_client"} & set(claims["grants"])
        assert claims["exp"] - claims["iat"] == 45 * 60
        mailed = cw.get_by_test_id("invite-email-status")
        assert "reha@drv-bund.example" in await mailed.inner_text()
        assert [to for to, _ in inbox.messages] == [["reha@drv-bund.example"]]

        # The link works: the partner waits, is admitted from the dialog, and is seen.
        partner = await launch("partner")
        await open_join(partner, invite_url)
        await join(partner)
        pa_id = await my_id(partner)
        await partner.page.get_by_test_id("waiting-room").wait_for(timeout=30000)
        entry = cw.locator(f'[data-testid="invite-lobby-entry"][data-participant="{pa_id}"]')
        await entry.get_by_test_id("admit").click()
        await wait_remote_playing(caseworker, {pa_id}, within=45)
        label = cw.locator(f'li.tile[data-participant="{pa_id}"] .tile-label')
        assert "Deutsche Rentenversicherung Bund" in await label.inner_text()
    finally:
        smtp.stop()


async def test_pick_a_partner_with_the_keyboard_on_a_phone(
    server: Server, launch: Launch, shots: Path
) -> None:
    _fill_directory(server)
    caseworker, room = await _open_dial_in(server, launch, width=360, height=640)
    cw = caseworker.page
    assert (await _combobox(cw))["focus"] == "invite-organisation"
    await cw.keyboard.type("Sprach", delay=40)
    await cw.get_by_test_id("partner-list").wait_for()
    assert await _options(cw) == ["Sprachmittlung Rhein"]
    # Nothing chosen until the arrow keys say so; Escape closes only the list.
    assert (await _combobox(cw))["active"] is None
    await cw.keyboard.press("Escape")
    assert await cw.get_by_test_id("partner-list").is_hidden()
    assert await cw.get_by_test_id("invite-dialog").is_visible()
    assert (await _combobox(cw))["expanded"] == "false"
    # Arrow down on an empty field offers the whole directory (four entries, no scrolling).
    await cw.keyboard.press("Control+A")
    await cw.keyboard.press("Backspace")
    await cw.keyboard.press("ArrowDown")
    assert len(await _options(cw)) == 4
    await cw.mouse.move(0, 0)  # no hover in the picture: only the keyboard's choice
    assert await axe_findings(caseworker) == []
    await cw.screenshot(path=shots / "partners-suggest-phone-de.png")
    state = await _combobox(cw)
    assert (state["active"], state["selected"]) == ("Deutsche Rentenversicherung Bund", "true")
    await cw.keyboard.press("ArrowUp")  # wraps round to the last
    assert (await _combobox(cw))["active"] == "Sprachmittlung Rhein"
    await cw.keyboard.press("ArrowUp")
    assert (await _combobox(cw))["active"] == "IHK Köln"
    await cw.keyboard.press("Enter")  # takes the suggestion; does not send the form
    assert await cw.get_by_test_id("invite-link").is_hidden()
    assert await _form(cw) == {
        "organisation": "IHK Köln",
        "type": "chamber",
        "name": "Herr Adler",
        "email": "",
        "minutes": "20",
        "rights": ["audio", "screen", "chat"],
    }
    assert (await _combobox(cw))["focus"] == "invite-organisation"
    await cw.screenshot(path=shots / "partners-filled-phone-de.png")
    # The next Enter sends it.
    await cw.keyboard.press("Enter")
    link = cw.get_by_test_id("invite-link")
    await link.wait_for(timeout=30000)
    assert claims_of(await link.input_value())["org"] == "IHK Köln"


@pytest.mark.parametrize("size", [(1366, 650), (360, 640)], ids=["1366x650", "360x640"])
async def test_pick_and_invite_with_two_clicks_at_small_windows(
    server: Server, launch: Launch, size: tuple[int, int]
) -> None:
    ids = _fill_directory(server)
    caseworker, room = await _open_dial_in(server, launch, width=size[0], height=size[1])
    cw = caseworker.page
    await cw.get_by_test_id("invite-organisation").press_sequentially("ihk", delay=40)
    await cw.locator(f'[data-testid="partner-option"][data-partner="{ids["IHK Köln"]}"]').click()
    assert (await _form(cw))["name"] == "Herr Adler"
    await cw.get_by_test_id("invite-submit").click()
    link = cw.get_by_test_id("invite-link")
    await link.wait_for(timeout=30000)
    claims = claims_of(await link.input_value())
    assert (claims["org"], claims["exp"] - claims["iat"]) == ("IHK Köln", 20 * 60)
    # Nothing of the directory leaks into the next form: a fresh one offers anew.
    await cw.keyboard.press("Escape")
    await cw.get_by_test_id("invite-dialog").wait_for(state="hidden")
    await cw.get_by_test_id("dial-in-button").click()
    assert await _form(cw) == {
        "organisation": "",
        "type": "other",
        "name": "",
        "email": "",
        "minutes": "30",
        "rights": ["audio", "video", "see_client", "chat"],
    }
    await cw.get_by_test_id("invite-organisation").press_sequentially("ih", delay=40)
    await cw.get_by_test_id("partner-list").wait_for()
    assert await _options(cw) == ["IHK Köln"]
