"""Invitations by e-mail (``ROUNDTABLE_SMTP_URL``, ``ROUNDTABLE_SMTP_FROM``).

The invite API sends the link itself when the caseworker gives an address: German first,
an English part below, and an ``.ics`` for the link's validity window so that the
appointment lands in the partner's calendar. The caseworker's answer says whether it went
out (``"sent"``), did not (``"failed"``: they pass the link on themselves) or cannot
(``"disabled"``: no SMTP configured); a failure is never dropped silently. The log names
the invite id, never the address or the link.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import unquote, urlsplit

import aiosmtplib

log = logging.getLogger(__name__)

# Deliberately plain: one @, no spaces or control characters (no header injection), a
# dot in the domain. The mail server is the judge of the rest.
_EMAIL_RE = re.compile(
    r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]{1,252}\.[^@\s.\x00-\x1f\x7f]{2,63}$"
)
MAX_EMAIL_CHARS = 254


def valid_email(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_EMAIL_CHARS and bool(_EMAIL_RE.match(value))


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    implicit_tls: bool = False  # smtps://; plain smtp:// upgrades with STARTTLS if offered
    timeout_seconds: float = 15.0

    @classmethod
    def from_url(cls, url: str, sender: str) -> SmtpSettings:
        """``smtp://user:pass@host:port`` or ``smtps://…``; raises ValueError if malformed."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("ROUNDTABLE_SMTP_URL must look like smtp://user:pass@host:port")
        if not valid_email(sender):
            raise ValueError("ROUNDTABLE_SMTP_FROM must be an e-mail address")
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit else 25),
            sender=sender,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit,
        )


@dataclass(frozen=True, slots=True)
class InviteMail:
    to: str
    name: str
    organisation: str
    url: str
    invite_id: str
    starts_at: int
    expires_at: int


def _stamp(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%dT%H%M%SZ")


def _local(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%d.%m.%Y %H:%M UTC")


def _ics_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\n", "\\n")


def calendar(mail: InviteMail) -> str:
    """An iCalendar event for the link's validity window (RFC 5545, CRLF lines)."""
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//roundtable//invite//DE",
        "METHOD:PUBLISH",
        "BEGIN:VEVENT",
        f"UID:{mail.invite_id}@roundtable",
        f"DTSTAMP:{_stamp(mail.starts_at)}",
        f"DTSTART:{_stamp(mail.starts_at)}",
        f"DTEND:{_stamp(mail.expires_at)}",
        "SUMMARY:Videoberatung (roundtable)",
        f"DESCRIPTION:{_ics_text('Link zum Gespräch / link to the conversation: ' + mail.url)}",
        f"URL:{mail.url}",
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    # Lines over 75 octets are folded with CRLF + space; a JWT link always is.
    out: list[str] = []
    for line in lines:
        raw = line.encode()
        while len(raw) > 75:
            cut = 75
            while cut > 0 and (raw[cut] & 0xC0) == 0x80:  # never inside a UTF-8 sequence
                cut -= 1
            out.append(raw[:cut].decode())
            raw = b" " + raw[cut:]
        out.append(raw.decode())
    return "\r\n".join(out) + "\r\n"


def compose(mail: InviteMail, sender: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = mail.to
    msg["Subject"] = "Einladung zur Videoberatung / Invitation to a video consultation"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="roundtable")
    msg.set_content(
        f"Guten Tag {mail.name},\n\n"
        f"Sie sind als {mail.organisation} zu einer Videoberatung eingeladen.\n"
        f"Öffnen Sie diesen Link im Browser (er gilt nur einmal):\n\n{mail.url}\n\n"
        f"Der Link gilt bis {_local(mail.expires_at)}. Sie brauchen kein Programm und kein "
        "Konto. Das Gespräch wird nicht aufgezeichnet.\n\n"
        "----- English -----\n\n"
        f"Hello {mail.name},\n\n"
        f"You are invited to a video consultation as {mail.organisation}.\n"
        f"Open this link in your browser (it works once):\n\n{mail.url}\n\n"
        f"The link is valid until {_local(mail.expires_at)}. You need no program and no "
        "account. The conversation is not recorded.\n"
    )
    msg.add_attachment(
        calendar(mail).encode(),
        maintype="text",
        subtype="calendar",
        filename="einladung.ics",
        params={"method": "PUBLISH"},
    )
    return msg


class InviteMailer:
    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings

    async def send(self, mail: InviteMail) -> bool:
        """Hand the invitation to the SMTP server; False (logged by id) if that fails."""
        s = self._settings
        try:
            await aiosmtplib.send(
                compose(mail, s.sender),
                hostname=s.host,
                port=s.port,
                username=s.username,
                password=s.password,
                use_tls=s.implicit_tls,
                start_tls=None if not s.implicit_tls else False,
                timeout=s.timeout_seconds,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            log.warning("invite %s: e-mail not sent: %s", mail.invite_id, type(exc).__name__)
            return False
        log.info("invite %s: e-mail handed to the SMTP server", mail.invite_id)
        return True
