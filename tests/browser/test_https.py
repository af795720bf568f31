"""The page over built-in HTTPS: Chromium opens https://127.0.0.1, two people join and
see each other; a SIGHUP after the certificate files changed makes new TLS connections
present the new certificate while the call in progress keeps its connections."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import time
from pathlib import Path

import pytest

from tests.browser.conftest import run_server
from tests.browser.harness import Launch, join, my_id, wait_js, wait_remote_playing
from tests.certs import Certificate, make_cert
from tests.certs import served_certificate as certificate_of

pytestmark = pytest.mark.browser


def served_certificate(base_url: str) -> str:
    host, port = base_url.removeprefix("https://").rsplit(":", 1)
    return certificate_of(host, int(port))


def _install(source: Certificate, live: Certificate) -> None:
    """Put ``source``'s files where the server reads its certificate (as a renewal does)."""
    shutil.copyfile(source.cert, live.cert)
    shutil.copyfile(source.key, live.key)


_MARK = """(mark) => {
  const pcs = window.roundtable.pcs;
  if (mark) { pcs.publish.__mark = mark; pcs.subscribe.__mark = mark; }
  return [pcs.publish.__mark, pcs.subscribe.__mark,
          pcs.publish.connectionState, pcs.subscribe.connectionState];
}"""


async def test_call_over_https_survives_a_certificate_reload(
    tmp_path: Path, launch: Launch
) -> None:
    first = make_cert(tmp_path / "certs", "first")
    second = make_cert(tmp_path / "certs", "second")
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    live = Certificate(live_dir / "server.crt", live_dir / "server.key", "", "")
    _install(first, live)

    with run_server(tmp_path, tls=live) as server:
        assert server.base_url.startswith("https://127.0.0.1:")
        assert await asyncio.to_thread(served_certificate, server.base_url) == first.der_sha256
        room = server.create_room(caseworker_name="Frau Berger", client_name="Herr Yılmaz")
        assert room["client_url"].startswith("https://")

        # Chromium trusts exactly our two test keys, nothing else it would otherwise refuse.
        trust = [f"--ignore-certificate-errors-spki-list={first.spki_sha256},{second.spki_sha256}"]
        caseworker = await launch("caseworker", args=trust)
        client = await launch("client", args=trust)
        await asyncio.gather(
            join(caseworker, room["caseworker_url"]), join(client, room["client_url"])
        )
        ids = {b.name: await my_id(b) for b in (caseworker, client)}
        for b in (caseworker, client):
            assert await b.page.evaluate("location.protocol") == "https:"
            assert await b.page.evaluate("window.isSecureContext")
        await asyncio.gather(
            wait_remote_playing(caseworker, {ids["client"]}, within=45),
            wait_remote_playing(client, {ids["caseworker"]}, within=45),
        )
        for b in (caseworker, client):
            await b.page.evaluate(_MARK, "before-reload")

        # Renewal: new files, then SIGHUP (what `systemctl reload` sends).
        _install(second, live)
        os.kill(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 15
        while await asyncio.to_thread(served_certificate, server.base_url) != second.der_sha256:
            assert time.monotonic() < deadline, f"still the old certificate\n{server.log_tail()}"
            await asyncio.sleep(0.2)
        assert server.proc.poll() is None
        # A client that trusts only the new certificate gets through.
        trusts_second = ssl.create_default_context(cafile=str(second.cert))
        server.tls = trusts_second
        assert server.participants() == 2

        # The call goes on over the connections it had before the reload: same peer
        # connections (a reconnect would have built new ones), still connected, frames rising.
        await asyncio.gather(
            wait_remote_playing(caseworker, {ids["client"]}, within=20),
            wait_remote_playing(client, {ids["caseworker"]}, within=20),
        )
        for b in (caseworker, client):
            state = await b.page.evaluate(_MARK, None)
            assert state == ["before-reload", "before-reload", "connected", "connected"], (
                b.name,
                state,
            )
            await wait_js(b, "window.roundtable.you && window.roundtable.you.id")
            errors = [line for line in b.console if line.startswith("pageerror")]
            assert errors == [], (b.name, errors)
        assert "TLS certificate reloaded" in server.log_path.read_text()
