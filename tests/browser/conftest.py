"""Browser harness: the real server in a subprocess and Debian Chromium driven by Playwright.

Everything runs inside the loopback-only namespace of ``make test``. Chromium keeps its
mDNS obfuscation of host candidates (``xxxx.local``): the server drops those and learns
the browser's address from its connectivity checks (peer-reflexive), as in production.
Helpers the tests call live in ``harness.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from tests.browser.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Browser,
    Launch,
    Server,
    bin_path,
    free_port,
    log_line,
)
from tests.certs import Certificate
from tests.ports import free_udp_port


@contextlib.contextmanager
def run_server(
    tmp_path: Path,
    extra_env: dict[str, str] | None = None,
    *,
    tls: Certificate | None = None,
    host: str = "127.0.0.1",
) -> Iterator[Server]:
    """``roundtable serve`` in a subprocess with its own port, secrets and state dir;
    with ``tls`` over HTTPS with that certificate (and HTTP clients that trust it);
    listening on ``host`` (``0.0.0.0``: also for browsers in other namespaces)."""
    port = free_port()
    state = tmp_path / "state"
    state.mkdir()
    scheme = "https" if tls else "http"
    env = dict(os.environ)
    env.update(
        ROUNDTABLE_SECRET=secrets.token_urlsafe(32),
        ROUNDTABLE_API_KEY=secrets.token_urlsafe(24),
        ROUNDTABLE_MEDIA_HOST="127.0.0.1",
        ROUNDTABLE_MEDIA_PORT=str(free_udp_port()),
        ROUNDTABLE_STATE_DIR=str(state),
        ROUNDTABLE_PUBLIC_URL=f"{scheme}://127.0.0.1:{port}",
        PYTHONUNBUFFERED="1",
    )
    if tls:
        env.update(ROUNDTABLE_TLS_CERT=str(tls.cert), ROUNDTABLE_TLS_KEY=str(tls.key))
    env.update(extra_env or {})
    log_path = tmp_path / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [str(bin_path("roundtable")), "serve", "--host", host, "--port", str(port)],
        env=env,
        cwd=state,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    srv = Server(
        f"{scheme}://127.0.0.1:{port}",
        env["ROUNDTABLE_API_KEY"],
        env["ROUNDTABLE_SECRET"],
        env,
        log_path,
        proc,
        ssl.create_default_context(cafile=str(tls.cert)) if tls else None,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{srv.log_tail()}")
            try:
                with srv.urlopen("/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not become healthy:\n{srv.log_tail()}")
            time.sleep(0.1)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        print(f"\n--- server log tail ({log_path}) ---\n{srv.log_tail(30)}")


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """The real server; ``parametrize("server", [{"ENV": "value"}], indirect=True)`` adds env."""
    with run_server(tmp_path, getattr(request, "param", None)) as srv:
        yield srv


# --- the browsers ----------------------------------------------------------------------


@pytest.fixture
def chromium() -> str:
    # Missing browser is a failure, not a skip: CI must not pass without the page tested.
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} missing: the browser tests need Debian's chromium")
    return CHROMIUM


@pytest.fixture
async def launch(tmp_path: Path, chromium: str) -> AsyncIterator[Launch]:
    """``await launch("caseworker")`` → a fresh Chromium with fake camera and microphone."""
    browsers: list[Browser] = []
    async with async_playwright() as pw:

        async def _launch(
            name: str = "user",
            *,
            width: int = 1280,
            height: int = 720,
            locale: str = "de-DE",
            args: Sequence[str] = (),
            executable: str | None = None,
        ) -> Browser:
            """``executable``: e.g. a ``tests.netns`` wrapper that starts Chromium in
            another network namespace; ``args`` go after the usual flags."""
            profile = tmp_path / f"profile-{len(browsers)}-{name}"
            context = await pw.chromium.launch_persistent_context(
                str(profile),
                executable_path=executable or chromium,
                headless=True,
                args=[*CHROMIUM_ARGS, *args],
                permissions=["camera", "microphone"],
                viewport={"width": width, "height": height},
                locale=locale,
            )
            page = context.pages[0] if context.pages else await context.new_page()
            browser = Browser(name, context, page)
            page.on("console", lambda msg: log_line(browser, f"console.{msg.type}: {msg.text}"))
            page.on("pageerror", lambda exc: log_line(browser, f"pageerror: {exc}"))
            browsers.append(browser)
            return browser

        try:
            yield _launch
        finally:
            for b in browsers:
                try:
                    await asyncio.wait_for(b.context.close(), 10)
                except Exception:
                    pass


@pytest.fixture
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``$ROUNDTABLE_SCREENSHOTS`` or a fresh temp dir (printed)."""
    wanted = os.environ.get("ROUNDTABLE_SCREENSHOTS")
    path = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\n[screenshots] {path}")
    return path
