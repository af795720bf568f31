"""The counselling room as people use it (issue 14), at the window sizes people have.

Every click here is a real pointer click (Playwright ``click()`` without ``force``): an
element lying over a button makes the test fail, as it makes the click fail for a person.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from tests.browser.harness import (
    Browser,
    Launch,
    Server,
    axe_findings,
    click_join,
    free_port,
    in_call,
    my_id,
    open_join,
    wait_js,
)

pytestmark = pytest.mark.browser

SIZES = [(1280, 720), (1366, 650), (360, 640)]


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


# Records what the page plays, notifies and asks of the camera (before any page script).
_SPY = """
window.__played = []; window.__notified = []; window.__gum = 0;
const play = HTMLMediaElement.prototype.play;
HTMLMediaElement.prototype.play = function () {
  window.__played.push(this.currentSrc || this.src || '');
  return play.call(this);
};
if (window.Notification) {
  const N = window.Notification;
  const Spy = class extends N {
    constructor(title, options) {
      window.__notified.push({ title, body: options && options.body });
      super(title, options);
    }
  };
  Object.defineProperty(Spy, 'permission', { get: () => N.permission });
  Spy.requestPermission = (...a) => N.requestPermission(...a);
  window.Notification = Spy;
}
if (navigator.mediaDevices) {
  const gum = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = (c) => { window.__gum += 1; return gum(c); };
}
"""


async def test_lobby_alert_and_wording_for_the_client(
    server: Server, launch: Launch, shots: Path
) -> None:
    """Someone in the waiting room: a sound, the count in the tab title and a desktop
    notification for the caseworker; the client reads who will let them in."""
    room = server.create_room(
        caseworker_name="Andrea Berger",
        client_name="Jürgen Yılmaz",
        client_lobby=True,
        client_consent=True,
    )
    caseworker = await launch("caseworker")
    await caseworker.context.grant_permissions(["notifications"])
    await caseworker.context.add_init_script(_SPY)
    client = await launch("client", width=360, height=640)
    await open_join(caseworker, room["caseworker_url"])
    await click_join(caseworker)
    await in_call(caseworker)
    cw = caseworker.page
    title = await cw.title()

    await open_join(client, room["client_url"])
    await client.page.screenshot(path=shots / "room-prejoin-consent-phone-de.png")
    cl_id = await click_join(client)
    waiting = client.page.get_by_test_id("waiting-room")
    await waiting.wait_for()
    text = await waiting.inner_text()
    assert "Ihre Beratungsperson lässt Sie herein" in text
    assert "gleich hereingelassen" not in text
    await client.page.screenshot(path=shots / "room-waiting-phone-de.png")

    await wait_js(caseworker, "document.title.startsWith('(1) ')")
    assert await cw.evaluate("window.__played.some((s) => s.endsWith('/static/sounds/lobby.wav'))")
    notified = await cw.evaluate("window.__notified")
    assert len(notified) == 1 and "Jürgen Yılmaz" in notified[0]["body"], notified
    assert await cw.get_by_test_id("notify-toggle").is_disabled()  # already allowed

    # Let in by pointer: the title is quiet again and focus stays in the panel.
    await admit_from_panel(caseworker, cl_id)
    await in_call(client)
    await wait_js(caseworker, f"document.title === {title!r}")
    assert await cw.evaluate(
        "document.activeElement !== document.body && document.getElementById('panel').contains(document.activeElement)"
    )


async def test_ended_session_says_so_before_the_camera(server: Server, launch: Launch) -> None:
    room = server.create_room()
    caseworker = await launch("caseworker")
    await open_join(caseworker, room["caseworker_url"])
    await click_join(caseworker)
    await in_call(caseworker)
    await caseworker.page.get_by_test_id("end-session").click()
    await caseworker.page.get_by_test_id("end-session-confirm").click()
    await caseworker.page.get_by_test_id("error-message").wait_for(timeout=10000)

    late = await launch("late-client", width=360, height=640)
    await late.context.add_init_script(_SPY)
    await open_join(late, room["client_url"])
    message = late.page.get_by_test_id("error-message")
    await message.wait_for(timeout=10000)
    assert await message.get_attribute("data-error") in ("room_closed", "room_ended")
    assert "beendet" in await message.inner_text()
    assert await late.page.get_by_test_id("error-detail").is_hidden()  # no English
    assert await late.page.evaluate("window.__gum") == 0  # the camera never started
    assert await late.page.get_by_test_id("join-button").is_hidden()


SMTP_PORT = free_port()


@pytest.mark.parametrize(
    "server",
    [
        {
            "ROUNDTABLE_SMTP_URL": f"smtp://127.0.0.1:{SMTP_PORT}",
            "ROUNDTABLE_SMTP_FROM": "beratung@agentur.example",
        }
    ],
    indirect=True,
)
async def test_invite_by_email_and_client_qr_code(
    server: Server, launch: Launch, shots: Path
) -> None:
    """The caseworker types the partner's address: the mail goes out through a real SMTP
    server and the dialog says so. The client's link as a QR code for the desk."""
    received: list[bytes] = []

    class Inbox:
        async def handle_DATA(self, srv, session, envelope) -> str:  # noqa: N802
            received.append(envelope.content)
            return "250 OK"

    smtp = Controller(Inbox(), hostname="127.0.0.1", port=SMTP_PORT)
    smtp.start()
    try:
        room = server.create_room(caseworker_name="Andrea Berger")
        caseworker = await launch("caseworker")
        await open_join(caseworker, room["caseworker_url"])
        await click_join(caseworker)
        await in_call(caseworker)
        cw = caseworker.page
        await cw.get_by_test_id("dial-in-button").click()
        await cw.get_by_test_id("invite-organisation").click()
        await cw.keyboard.type("Handwerkskammer Köln")
        await cw.get_by_test_id("invite-name").click()
        await cw.keyboard.type("Herr Adler")
        await cw.get_by_test_id("invite-email").click()
        await cw.keyboard.type("adler@hwk.example")
        await cw.get_by_test_id("invite-submit").click()
        status = cw.get_by_test_id("invite-email-status")
        await wait_js(
            caseworker,
            "document.querySelector('[data-testid=invite-email-status]').textContent.includes('adler@hwk.example')",
        )
        assert "per E-Mail" in await status.inner_text()
        link = await cw.get_by_test_id("invite-link").input_value()
        assert len(received) == 1
        assert link.split("#token=")[1][:40] in received[0].decode().replace("=\r\n", "")
        await cw.screenshot(path=shots / "room-invite-mailed-de.png")
        await cw.get_by_role("button", name="Schließen").click()

        await open_panel(caseworker)
        await cw.get_by_test_id("qr-button").click()
        image = cw.get_by_test_id("qr-image")
        await image.wait_for(timeout=10000)
        assert (await image.get_attribute("src") or "").startswith("data:image/svg+xml;base64,")
        assert (
            await cw.evaluate("document.querySelector('[data-testid=qr-image]').naturalWidth") > 50
        )
        await cw.screenshot(path=shots / "room-qr-de.png")
    finally:
        smtp.stop()


async def _axe(browser: Browser, state: str, found: dict[str, list[str]]) -> None:
    findings = await axe_findings(browser)
    if findings:
        found[f"{browser.name} {state}"] = findings


async def test_axe_has_no_serious_findings_desktop_and_phone(
    server: Server, launch: Launch, shots: Path
) -> None:
    """axe-core over the main states of the page, at 1280x720 and 360x640."""
    found: dict[str, list[str]] = {}
    room = server.create_room(
        caseworker_name="Andrea Berger",
        client_name="Jürgen Yılmaz",
        client_lobby=True,
        client_consent=True,
    )
    caseworker = await launch("caseworker")
    client = await launch("client-phone", width=360, height=640)
    await open_join(caseworker, room["caseworker_url"])
    await _axe(caseworker, "prejoin", found)
    await click_join(caseworker)
    await in_call(caseworker)
    await _axe(caseworker, "call alone", found)

    await open_join(client, room["client_url"])
    await _axe(client, "prejoin with consent", found)
    cl_id = await click_join(client)
    await client.page.get_by_test_id("waiting-room").wait_for()
    await _axe(client, "waiting room", found)
    await _axe(caseworker, "someone waiting", found)
    await admit_from_panel(caseworker, cl_id)
    await in_call(client)
    await _axe(client, "call", found)
    await _axe(caseworker, "call with panel", found)

    await client.page.get_by_test_id("chat-toggle").click()
    await client.page.get_by_test_id("chat-input").click()
    await client.page.keyboard.type("Guten Tag!")
    await client.page.keyboard.press("Enter")
    await client.page.get_by_test_id("chat-message").first.wait_for()
    await _axe(client, "chat open", found)
    await caseworker.page.get_by_test_id("chat-toggle").click()
    await _axe(caseworker, "chat open", found)

    await caseworker.page.get_by_test_id("dial-in-button").click()
    await _axe(caseworker, "invite dialog", found)
    await caseworker.page.keyboard.press("Escape")

    # Each message stays in the log (one after the other for a screen reader).
    log = await client.page.evaluate(
        "[...document.querySelectorAll('[data-testid=messages] li')].map((li) => li.textContent)"
    )
    assert len(log) >= 3 and any("Warteraum" in m for m in log), log

    await client.page.get_by_test_id("leave-button").click()
    await client.page.get_by_test_id("rejoin-button").wait_for()
    await _axe(client, "left", found)
    assert found == {}, "\n".join(f"{k}: {v}" for k, v in found.items())


_TILE_BOXES = """
() => {
  const list = document.querySelector('[data-testid=tiles]').getBoundingClientRect();
  return {
    layout: document.querySelector('[data-testid=tiles]').dataset.layout,
    list: [list.left, list.top, list.right, list.bottom],
    tiles: [...document.querySelectorAll('li.tile')].map((t) => {
      const r = t.getBoundingClientRect();
      return { role: t.dataset.role, pid: t.dataset.participant, featured: t.classList.contains('featured'),
               box: [r.left, r.top, r.right, r.bottom] };
    }),
  };
}
"""


def _all_visible(info: dict, width: int, height: int) -> None:
    left, top, right, bottom = info["list"]
    for tile in info["tiles"]:
        x0, y0, x1, y1 = tile["box"]
        assert x1 - x0 > 40 and y1 - y0 > 30, tile  # not squashed to nothing
        assert x0 >= left - 1 and x1 <= right + 1 and y0 >= top - 1 and y1 <= bottom + 1, (
            tile,
            info["list"],
        )
        assert x1 <= width and y1 <= height, tile  # inside the window, no scrolling


async def test_five_people_phone_layout_and_screen_share(
    server: Server, launch: Launch, shots: Path
) -> None:
    """Five people: the phone keeps all five visible with the caseworker large; a shared
    screen is enlarged on every page."""
    room = server.create_room(caseworker_name="Andrea Berger", client_name="Jürgen Yılmaz")
    caseworker = await launch("caseworker")
    client = await launch("client", width=360, height=640)
    cw_token = room["caseworker_url"].split("#token=", 1)[1]
    partners = []
    for org, name, rights in (
        ("Deutsche Rentenversicherung", "Dr. Petra Sommer", ["audio", "video", "screen"]),
        ("Handwerkskammer Köln", "Herr Adler", ["audio", "video"]),
        ("Dolmetschdienst", "Elif Aydın", ["audio", "video", "chat"]),
    ):
        status, invite = server.request(
            "POST",
            f"/api/rooms/{room['room']}/invites",
            {"organisation": org, "name": name, "rights": rights, "waiting_room": False},
            token=cw_token,
        )
        assert status == 201, invite
        partners.append((await launch(name, width=640, height=480), invite["invite_url"]))
    for b, url in (
        (caseworker, room["caseworker_url"]),
        (client, room["client_url"]),
        *((p, server.local_url(u)) for p, u in partners),
    ):
        await open_join(b, url)
        await click_join(b)
        await in_call(b)
    await wait_js(client, "document.querySelectorAll('li.tile').length === 5", within=30)
    await wait_js(caseworker, "document.querySelectorAll('li.tile').length === 5", within=30)

    # The phone: everyone visible, the caseworker large.
    info = await client.page.evaluate(_TILE_BOXES)
    assert info["layout"] == "focus", info
    _all_visible(info, 360, 640)
    # The caseworker large (beside whoever spoke last), the others in a strip below.
    featured = [t for t in info["tiles"] if t["featured"]]
    assert "caseworker" in {t["role"] for t in featured} and len(featured) <= 2, info
    strip = [t for t in info["tiles"] if not t["featured"]]
    for big in featured:
        width = big["box"][2] - big["box"][0]
        assert width >= 150 and all(width > s["box"][2] - s["box"][0] for s in strip), info
    await client.page.screenshot(path=shots / "phone-five-de.png")
    desktop = await caseworker.page.evaluate(_TILE_BOXES)
    _all_visible(desktop, 1280, 720)

    await caseworker.page.screenshot(path=shots / "desktop-five-de.png")

    # The pension insurer shares a screen: it becomes the big tile for everyone.
    sharer = partners[0][0]
    sharer_id = await my_id(sharer)
    await sharer.page.get_by_test_id("screen-toggle").click()
    for b, w, h in ((client, 360, 640), (caseworker, 1280, 720)):
        await wait_js(
            b,
            f"document.querySelector('li.tile.featured')?.dataset.participant === {sharer_id!r}",
            within=20,
        )
        # (That the shared screen's frames play is test_call.py's screen-share test.)
        info = await b.page.evaluate(_TILE_BOXES)
        assert info["layout"] == "focus"
        _all_visible(info, w, h)
    await client.page.screenshot(path=shots / "phone-five-screen-share-de.png")
    await caseworker.page.screenshot(path=shots / "desktop-five-screen-share-de.png")


async def test_hybrid_appointment_labels_the_caseworker(server: Server, launch: Launch) -> None:
    """client_present: no client link; the partner sees that the client is at the desk."""
    room = server.create_room(caseworker_name="Andrea Berger", client_present=True)
    assert room["client_url"] is None
    caseworker = await launch("caseworker")
    partner = await launch("partner", width=360, height=640)
    await open_join(caseworker, room["caseworker_url"])
    cw_id = await click_join(caseworker)
    await in_call(caseworker)
    status, invite = server.request(
        "POST",
        f"/api/rooms/{room['room']}/invites",
        {"organisation": "Jobcenter Köln", "name": "Frau Lange", "waiting_room": False},
        token=room["caseworker_url"].split("#token=", 1)[1],
    )
    assert status == 201, invite
    await open_join(partner, server.local_url(invite["invite_url"]))
    await click_join(partner)
    await in_call(partner)
    label = partner.page.locator(f'li.tile[data-participant="{cw_id}"] .tile-role')
    await wait_js(
        partner,
        f"(document.querySelector('li.tile[data-participant=\"{cw_id}\"] .tile-role') || {{}}).textContent === 'Beratung mit Kundin/Kunde vor Ort'",
        within=15,
    )
    assert await label.is_visible()


async def test_raised_hands_reach_the_caseworker_in_order(
    server: Server, launch: Launch, shots: Path
) -> None:
    room = server.create_room(caseworker_name="Andrea Berger", client_name="Jürgen Yılmaz")
    caseworker = await launch("caseworker")
    client = await launch("client", width=360, height=640)
    status, invite = server.request(
        "POST",
        f"/api/rooms/{room['room']}/invites",
        {"organisation": "Dolmetschdienst", "name": "Elif Aydın", "waiting_room": False},
        token=room["caseworker_url"].split("#token=", 1)[1],
    )
    assert status == 201, invite
    interpreter = await launch("interpreter", width=640, height=480)
    for b, url in (
        (caseworker, room["caseworker_url"]),
        (client, room["client_url"]),
        (interpreter, server.local_url(invite["invite_url"])),
    ):
        await open_join(b, url)
        await click_join(b)
        await in_call(b)
    assert await caseworker.page.get_by_test_id("hand-toggle").is_hidden()
    # The interpreter first, then the client; the caseworker sees that order.
    for b in (interpreter, client):
        await b.page.get_by_test_id("hand-toggle").click()
        await wait_js(
            b,
            "document.querySelector('[data-testid=hand-toggle]').getAttribute('aria-pressed') === 'true'",
        )
    await open_panel(caseworker)
    hands = caseworker.page.get_by_test_id("person-hand")
    await wait_js(
        caseworker, "document.querySelectorAll('[data-testid=person-hand]').length === 2", within=20
    )
    rows = caseworker.page.locator("li.person", has=hands)
    assert "Elif Aydın" in await rows.nth(0).inner_text()
    assert "Jürgen Yılmaz" in await rows.nth(1).inner_text()
    assert (await hands.nth(0).inner_text()).startswith("1.")
    assert (await hands.nth(1).inner_text()).startswith("2.")
    await caseworker.page.screenshot(path=shots / "desktop-hands-de.png")
    # Lowered again: gone from the list.
    await interpreter.page.get_by_test_id("hand-toggle").click()
    await wait_js(
        caseworker, "document.querySelectorAll('[data-testid=person-hand]').length === 1", within=20
    )


async def test_same_room_starts_with_microphone_and_speaker_off(
    server: Server, launch: Launch
) -> None:
    """The client's own phone at the desk (the QR link carries same=1): no echo."""
    room = server.create_room()
    caseworker = await launch("caseworker")
    phone = await launch("client-phone", width=360, height=640)
    await open_join(caseworker, room["caseworker_url"])
    cw_id = await click_join(caseworker)
    await in_call(caseworker)
    await open_join(phone, room["client_url"] + "&same=1")
    same = phone.page.get_by_test_id("same-room")
    assert await same.is_visible() and await same.is_checked()
    await click_join(phone)
    await in_call(phone)
    assert await phone.page.get_by_test_id("mic-toggle").get_attribute("aria-pressed") == "true"
    video = f"document.querySelector('video[data-participant=\"{cw_id}\"]')"
    await wait_js(phone, f"{video} && {video}.srcObject && {video}.muted === true", within=20)
    # Sound on again with one click.
    await phone.page.get_by_test_id("sound-button").click()
    await wait_js(phone, f"{video}.muted === false")
