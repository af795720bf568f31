"""Invitations delivered (issue 14): the invite API sends the link by e-mail through a
real SMTP server (aiosmtpd, started here), with an ``.ics`` for its validity window; the
answer says whether it went out. And the client link as a QR code for the desk."""

from __future__ import annotations

import email
import logging
import socket
import xml.etree.ElementTree as ET
from email.message import Message
from pathlib import Path

import aiohttp
import pytest
from aiosmtpd.controller import Controller

from signaling.mailer import SmtpSettings, valid_email
from tests.controlplane import Clients, RunningServer, link_token, running_server

PARTNER_MAIL = "petra.sommer@drv.example"


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd API)
        self.messages.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                email.message_from_bytes(envelope.content),
            )
        )
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def inbox():
    handler = _Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield controller, handler
    finally:
        controller.stop()


async def _invite(server: RunningServer, room: dict, **body) -> tuple[int, dict]:
    body = {"organisation": "Deutsche Rentenversicherung", "name": "Dr. Petra Sommer", **body}
    return await server.invite(room["room"], link_token(room["caseworker_url"]), body)


def _unfold(ics: str) -> dict[str, str]:
    text = ics.replace("\r\n ", "")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


async def test_invite_is_mailed_with_link_and_calendar(
    tmp_path: Path, inbox, caplog: pytest.LogCaptureFixture
) -> None:
    controller, handler = inbox
    caplog.set_level(logging.DEBUG)
    async with running_server(
        tmp_path,
        smtp_url=f"smtp://127.0.0.1:{controller.port}",
        smtp_from="beratung@agentur.example",
    ) as server:
        room = await server.create_room()
        status, body = await _invite(server, room, email=f"  {PARTNER_MAIL} ")
        assert status == 201, body
        assert body["email"] == "sent"
        assert len(handler.messages) == 1
        sender, rcpts, msg = handler.messages[0]
        assert sender == "beratung@agentur.example" and rcpts == [PARTNER_MAIL]
        assert msg["To"] == PARTNER_MAIL
        parts = {p.get_content_type(): p for p in msg.walk() if not p.is_multipart()}
        text = parts["text/plain"].get_payload(decode=True).decode()
        assert "Guten Tag Dr. Petra Sommer" in text and "Hello Dr. Petra Sommer" in text
        assert text.count(body["invite_url"]) == 2  # German and English part
        ics_part = parts["text/calendar"]
        assert ics_part.get_filename() == "einladung.ics"
        ics = ics_part.get_payload(decode=True).decode()
        assert all(len(line.encode()) <= 75 for line in ics.split("\r\n"))
        fields = _unfold(ics)
        assert fields["URL"] == body["invite_url"]
        assert fields["DTEND"] == body["expires_at"].replace("-", "").replace(":", "")
        assert fields["UID"] == f"{body['id']}@roundtable"

        # The link in the mail works: the partner gets into the session with it.
        clients = Clients(server)
        try:
            partner = await clients.join(link_token(fields["URL"]))
            assert partner.events["welcome"][0]["you"]["role"] == "partner"
        finally:
            await clients.close()

        # Bad addresses are refused before anything is sent (no header injection).
        for bad in ("nobody", "a@b", "x@y.de\r\nBcc: evil@z.de", "a b@c.de", 5):
            status, answer = await _invite(server, room, email=bad)
            assert (status, answer["error"]) == (400, "bad_request"), bad
        assert len(handler.messages) == 1
    # Our own log (not the test SMTP server's) names neither the address nor the link.
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail."))
    assert "e-mail handed to the SMTP server" in ours
    assert PARTNER_MAIL not in ours
    assert body["invite_url"].split("#token=")[1] not in ours


async def test_mail_failure_and_no_smtp_are_reported(tmp_path: Path) -> None:
    dead = _free_port()  # nothing listens here
    async with running_server(
        tmp_path / "a", smtp_url=f"smtp://127.0.0.1:{dead}", smtp_from="b@agentur.example"
    ) as server:
        room = await server.create_room()
        status, body = await _invite(server, room, email=PARTNER_MAIL)
        assert status == 201 and body["email"] == "failed"
        assert body["invite_url"]  # the caseworker still has the link to pass on
    async with running_server(tmp_path / "b") as server:
        room = await server.create_room()
        assert (await _invite(server, room, email=PARTNER_MAIL))[1]["email"] == "disabled"
        assert (await _invite(server, room))[1]["email"] is None


def test_smtp_url_and_calendar_folding() -> None:
    s = SmtpSettings.from_url("smtps://us%40er:p%3Ass@mail.example:2465", "a@b.example")
    assert (s.host, s.port, s.username, s.password, s.implicit_tls) == (
        "mail.example",
        2465,
        "us@er",
        "p:ss",
        True,
    )
    assert SmtpSettings.from_url("smtp://mail.example", "a@b.example").port == 25
    for bad in ("http://x", "smtp://"):
        with pytest.raises(ValueError):
            SmtpSettings.from_url(bad, "a@b.example")
    assert valid_email("a.b@c.example") and not valid_email("a@b")


async def test_client_qr_code_for_the_desk(tmp_path: Path) -> None:
    async with running_server(tmp_path, joins_per_ip_per_minute=1000) as server:
        room = await server.create_room()
        url = f"{server.url}/api/rooms/{room['room']}/qr"
        async with aiohttp.ClientSession() as http:
            cw = {"Authorization": f"Bearer {link_token(room['caseworker_url'])}"}
            async with http.get(url, headers=cw) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("image/svg+xml")
                svg = await resp.text()
            for token, status in ((link_token(room["client_url"]), 403), ("x", 401)):
                async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                    assert resp.status == status
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg")
        assert root.find("{http://www.w3.org/2000/svg}path") is not None
