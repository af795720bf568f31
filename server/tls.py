"""Built-in HTTPS: the server's TLS context, re-read on SIGHUP, and the warning for a
plain-HTTP listener that browsers will not give a camera to.

Reloading calls ``load_cert_chain`` on the live ``SSLContext``: OpenSSL copies the
certificate into each connection when its handshake starts, so connections made after
the reload present the new certificate while open ones (the page's WSS, its long-polls)
go on untouched. A renewal that cannot be read is logged and the old certificate stays.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from server.config import Config, ConfigError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ServerCertificate:
    cert: Path
    key: Path
    context: ssl.SSLContext

    @classmethod
    def load(cls, cert: Path, key: Path) -> ServerCertificate:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # HTTP/1.1 only: aiohttp's server speaks nothing else, and Socket.IO's WebSocket
        # upgrade needs it.
        context.set_alpn_protocols(["http/1.1"])
        certificate = cls(cert, key, context)
        try:
            certificate._read()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"ROUNDTABLE_TLS_CERT/ROUNDTABLE_TLS_KEY: cannot use {cert} with {key}: "
                f"{exc.strerror or exc}"
            ) from None
        return certificate

    def _read(self) -> None:
        self.context.load_cert_chain(self.cert, self.key)

    def reload(self) -> bool:
        """Re-read both files (SIGHUP, after a renewal); keep the old pair if they fail."""
        try:
            self._read()
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS certificate reload failed, keeping the old one: %s", exc)
            return False
        log.info("TLS certificate reloaded from %s", self.cert)
        return True


def from_config(config: Config) -> ServerCertificate | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    return ServerCertificate.load(config.tls_cert, config.tls_key)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, or "" / 0.0.0.0 / :: (every interface)


def plain_http_warning(config: Config) -> str | None:
    """The one warning for a listener that browsers elsewhere will not trust with a camera:
    None on loopback, with built-in TLS, or when join links are https (a TLS proxy)."""
    if config.tls_cert is not None or is_loopback(config.host):
        return None
    if config.public_url and config.public_url.startswith("https://"):
        return None
    return (
        f"serving plain HTTP on {config.host or '*'}:{config.port}: browsers refuse camera and "
        "microphone on http:// anywhere but localhost, so participants cannot join. Either "
        "give the server a certificate (--tls-cert/--tls-key or ROUNDTABLE_TLS_CERT/"
        "ROUNDTABLE_TLS_KEY) or put it behind a TLS-terminating proxy and set "
        "ROUNDTABLE_PUBLIC_URL=https://your.host (see docs/deploy.md)."
    )
